"""Hot-store entries of another codec format (a rolling deploy, or entries from before versions)
read as misses: Postgres answers, correctly, nothing crashes, and the entry is replaced."""

from __future__ import annotations

import asyncio

import orjson

from app import codec
from app.cache.keys import LOADED, conversation_keys
from app.models import ConversationRef
from app.services import conversations, state
from tests.cache.conftest import Node, check_header_and_state, check_history, check_window, counter
from tests.cache.test_cache import append, new_conversation, texts


def _future(raw: bytes) -> bytes:
    """The same entry as a later version would write it: another stamp, and a field changed so
    that serving it would be visibly wrong."""
    return raw.replace(codec.STAMP.encode(), b"99.0").replace(b"message", b"MESSAGE").replace(b'"t-', b'"X-')


async def _rewrite(node: Node, tenant: str, cid: object, change: object) -> None:
    hdr, msgs, state_key = conversation_keys(tenant, cid)  # type: ignore[arg-type]
    r = node.cache.redis
    items = await r.lrange(msgs, 0, -1)
    assert items and all(codec.STAMP.encode() in i for i in items)
    pipe = r.pipeline(transaction=True)
    for i, item in enumerate(items):
        pipe.lset(msgs, i, change(item))  # type: ignore[operator]
    pipe.hset(hdr, "c", change(await r.hget(hdr, "c")))  # type: ignore[operator]
    for field, value in (await r.hgetall(state_key)).items():
        if field != LOADED:
            pipe.hset(state_key, field, change(value))  # type: ignore[operator]
    await pipe.execute()


async def test_a_future_version_entry_reads_as_a_miss_and_postgres_answers(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant, title="t-title")
    await append(node.db, tenant, conv.id, *texts(6))
    await node.db.run(lambda uow: state.set_(uow, tenant, conv.id, "summary", {"text": "t-sum"}))
    target = ConversationRef(id=conv.id)
    await check_history(node.db, node.cache, tenant, target, last=4)  # fills (a new state key invalidated)
    assert await check_history(node.db, node.cache, tenant, target, last=4)  # the entry is hot
    await check_header_and_state(node.db, node.cache, tenant, target)
    await _rewrite(node, tenant, conv.id, _future)

    unknown = counter("cache_unknown_format_total")
    errors = counter("cache_errors_total")
    # Every read equals Postgres (the helpers compare with and without the cache) and none is a hit.
    assert not await check_history(node.db, node.cache, tenant, target, last=4)
    await check_header_and_state(node.db, node.cache, tenant, target)
    await check_window(node.db, node.cache, tenant, conv.id, max_tokens=500)
    assert counter("cache_unknown_format_total") > unknown
    assert counter("cache_errors_total") == errors  # a miss, not a Redis failure: no breaker
    async with node.db.read() as conn:
        header = await conversations.find(conn, tenant, target, cache=node.cache)
    assert header is not None and header.title == "t-title"

    # The entry is invalidated in the background and refilled in this version's format.
    for _ in range(50):
        if not node.cache._dirty:
            break
        await asyncio.sleep(0.05)
    assert not await check_history(node.db, node.cache, tenant, target, last=4)  # the refill
    assert await check_history(node.db, node.cache, tenant, target, last=4)  # hot again
    _, msgs, _ = conversation_keys(tenant, conv.id)
    assert all(codec.STAMP.encode() in i for i in await node.cache.redis.lrange(msgs, 0, -1))


async def test_entries_from_before_versions_are_a_miss(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant, title="t-old")
    await append(node.db, tenant, conv.id, *texts(3))
    target = ConversationRef(id=conv.id)
    await check_history(node.db, node.cache, tenant, target, last=2)
    assert await check_history(node.db, node.cache, tenant, target, last=2)

    def legacy(raw: bytes) -> bytes:
        if raw.startswith(b"["):  # a message: the array without its stamp
            return orjson.dumps(orjson.loads(raw)[1:])
        if raw.startswith(b"{"):  # a header: the object without "fv"
            d = orjson.loads(raw)
            d.pop("fv")
            return orjson.dumps(d)
        version, micros, _, value = raw.split(b":", 3)  # a state entry: version:micros:value
        return b":".join((version, micros, value))

    await _rewrite(node, tenant, conv.id, legacy)
    assert not await check_history(node.db, node.cache, tenant, target, last=2)
    await check_header_and_state(node.db, node.cache, tenant, target)
