"""save_message's action_id is the message's clientMessageId: reused for another message it is
IDEMPOTENCY_KEY_REUSED, through a real worker and queue."""

from __future__ import annotations

import uuid

from db.session import Database
from jobs.client import ActionClient
from tests.factories import add_message, count_rows
from tests.jobs.conftest import WorkerProcess


async def test_save_message_with_an_action_id_bound_to_another_message_is_refused(
    worker: WorkerProcess, client: ActionClient, db: Database, tenant: str
) -> None:
    action_id = f"act-{uuid.uuid4().hex}"
    await add_message(db, tenant, session_id="bound", content="written through GraphQL", client_message_id=action_id)
    data = {"role": "user", "content": "something else"}
    answer = await client.call(
        "conversation.save_message", tenant_id=tenant, session_id="bound", data=data, action_id=action_id
    )
    assert answer["success"] is False and answer["error"]["code"] == "IDEMPOTENCY_KEY_REUSED", answer
    assert "written through" not in str(answer)
    assert await count_rows(db, "messages", tenant) == 1
