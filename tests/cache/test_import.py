"""An import into a conversation the cache holds drops the cached copy (it can add messages
below the cached tail and change the header), so reads never serve the pre-import state."""

from __future__ import annotations

from app.models import ConversationRef
from app.services import transfer
from tests.cache.conftest import Node, check_header_and_state, check_history
from tests.factories import add_message


async def test_import_into_a_cached_conversation_invalidates_it(node: Node, tenant: str) -> None:
    db = node.db
    first = await add_message(db, tenant, session_id="imp", content="one")
    await add_message(db, tenant, session_id="imp", content="two")
    target = ConversationRef(session_id="imp")
    await check_history(db, node.cache, tenant, target, last=50)
    assert await check_history(db, node.cache, tenant, target, last=50)  # hot now
    async with db.read() as conn:
        conversation = await transfer.export_conversation(conn, first.conversation)
    conversation["messages"].append(
        {**conversation["messages"][-1], "seq": None, "id": None, "client_message_id": "imported-3", "content": "three"}
    )
    line = transfer.parse_line(conversation)
    result = await db.run(lambda uow: transfer.import_conversation(uow, tenant, line))
    assert result.messages_added == 1
    await check_history(db, node.cache, tenant, target, last=50)
    await check_header_and_state(db, node.cache, tenant, target)
