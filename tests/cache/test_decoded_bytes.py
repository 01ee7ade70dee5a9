"""The decoded-message memo of the hot cache is bounded by bytes (DECODED_CACHE_BYTES), not by a
count that large messages turn into gigabytes."""

from __future__ import annotations

import dataclasses

from app.decoded_messages import weight
from app.models import ConversationRef
from app.services import messages
from db.session import Database
from tests.cache.conftest import FAST, make_node
from tests.cache.test_cache import append, new_conversation
from tests.conftest import Servers

LIMIT = 96 * 1024


async def test_decoded_messages_never_exceed_their_byte_bound(db: Database, servers: Servers, tenant: str) -> None:
    node = await make_node(db, servers.redis_url, dataclasses.replace(FAST, recent_messages=50, decoded_bytes=LIMIT))
    try:
        memo = node.cache.decoded
        for size in (100, 20_000, 3_000, 60_000, 10):  # 60 KB messages: one decoded copy alone is over LIMIT
            conv = await new_conversation(node, tenant)
            await append(node.db, tenant, conv.id, *[{"content": f"{i} " + "x" * size} for i in range(12)])
            target = ConversationRef(id=conv.id)
            for last in (12, 5, 12):
                async with node.db.read() as conn:
                    page = await messages.history_by_ref(
                        conn, tenant, target, messages.HistoryArgs(last=last), cache=node.cache
                    )
                assert [m.content.split()[0] for m in page.items] == [str(i) for i in range(12 - last, 12)]
                held = sum(weight(raw) for raw, _ in memo._data.values())
                assert memo.bytes == held <= LIMIT, (size, memo.bytes)
        # Small messages are still kept and reused (a hot read decodes each message once).
        async with node.db.read() as conn:
            first = await messages.history_by_ref(conn, tenant, target, messages.HistoryArgs(last=3), cache=node.cache)
            again = await messages.history_by_ref(conn, tenant, target, messages.HistoryArgs(last=3), cache=node.cache)
        assert len(memo) > 0 and all(a is b for a, b in zip(first.items, again.items, strict=True))
    finally:
        await node.cache.close()


def test_the_bound_is_a_setting() -> None:
    from app.cache.options import CacheOptions
    from app.settings import Settings

    options = CacheOptions.from_settings(Settings(_env_file=None, decoded_cache_bytes=12345))
    assert options.decoded_bytes == 12345
