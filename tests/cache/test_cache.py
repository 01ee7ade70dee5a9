"""The hot cache piece by piece: keys, round trips, the guards that keep it a suffix of Postgres,
fills that cannot overwrite newer data, state, closes, windows, sessions and tenants."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from prometheus_client import generate_latest
from redis.asyncio import Redis
from redis.crc import key_slot

from app import metrics
from app.cache import keys as cache_keys
from app.cache.client import HotCache
from app.cache.keys import FILL_DEADLINE_S, conversation_keys, session_key
from app.cache.options import CacheOptions
from app.cache.scripts import READ_PAGE, evict
from app.cache.snapshot import _Ticket
from app.errors import NotFound
from app.models import Conversation, ConversationRef, NewMessage, Role, Source, Status
from app.services import conversations, cursors, messages, state
from app.services.hot_fill import PostgresEntries
from db.session import STATEMENTS, Database, UnitOfWork
from tests.cache.conftest import (
    Node,
    assert_messages,
    check_header_and_state,
    check_history,
    check_window,
    counter,
)

PAGES: list[dict[str, Any]] = [
    {},
    {"last": 5},
    {"last": 3, "before": None},
    {"first": 4},
    {"first": 3, "after_seq": 6},
    {"last": 8},
    {"last": 100},
    {"first": 0},
]


async def new_conversation(node: Node, tenant: str, **fields: Any) -> Conversation:
    fields.setdefault("session_id", f"s-{uuid.uuid4().hex}")
    return await node.db.run(lambda uow: conversations.create(uow, tenant, **fields))


async def append(db: Database, tenant: str, conversation_id: uuid.UUID, *specs: dict[str, Any]) -> Conversation:
    batch = [messages.new_message(**({"role": Role.USER, "content": "hi"} | s)) for s in specs]

    async def work(uow: UnitOfWork) -> Conversation:
        return (await messages.append_batch(uow, tenant, ConversationRef(id=conversation_id), batch)).conversation

    return await db.run(work)


def texts(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"content": f"message {i} " + "word " * (i % 7)} for i in range(start, start + n)]


async def all_pages(node: Node, tenant: str, target: ConversationRef) -> int:
    hits = 0
    for page in PAGES:
        params = dict(page)
        if "before" in params:
            async with node.db.read() as conn:
                last = await conversations.get(conn, tenant, target)
            params["before"] = cursors.seq_cursor(max(last.last_seq - 2, 1))
        hits += await check_history(node.db, node.cache, tenant, target, **params)
    return hits


class Counting:
    """Counts the Redis commands a cache sends (pipelines count once)."""

    def __init__(self, cache: HotCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        client = cache.redis
        original = client.execute_command

        async def execute_command(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await original(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", execute_command)


def test_keys_share_one_cluster_slot_and_carry_the_tenant() -> None:
    cid = uuid.uuid4()
    keys = conversation_keys("acme:eu", cid)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert all(k.startswith(f"cs:{{acme:eu:{cid}}}:") for k in keys)
    assert session_key("acme:eu", "s{1}").startswith("cs:{acme:eu}:sess:")
    assert key_slot(session_key("acme:eu", "a").encode()) == key_slot(b"{acme:eu}")


async def test_hot_history_is_one_round_trip_and_no_sql(
    node: Node, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await new_conversation(node, tenant)
    await append(node.db, tenant, conv.id, *texts(30))
    by_id, by_session = ConversationRef(id=conv.id), ConversationRef(session_id=conv.session_id)
    assert not await check_history(node.db, node.cache, tenant, by_id, last=50)  # filled (8 cached: older → Postgres)
    assert await check_history(node.db, node.cache, tenant, by_id, last=5)
    counting = Counting(node.cache, monkeypatch)
    await asyncio.sleep(0.01)  # asyncpg logs queries from a callback: let the earlier ones land
    statements = STATEMENTS.count
    async with node.db.read() as conn:
        for target in (by_id, by_session, by_id):
            page = await messages.history_by_ref(conn, tenant, target, messages.HistoryArgs(last=8), cache=node.cache)
            assert [m.seq for m in page.items] == list(range(23, 31))
    await asyncio.sleep(0.01)
    assert counting.calls == 3
    assert STATEMENTS.count == statements


async def test_pages_equal_postgres_as_the_conversation_grows(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    target = ConversationRef(id=conv.id)
    hits = await all_pages(node, tenant, target)  # empty conversation: hot from the CREATED event
    for n in (1, 3, 9):
        await append(node.db, tenant, conv.id, *texts(n))
        hits += await all_pages(node, tenant, target)
        await check_header_and_state(node.db, node.cache, tenant, target)
    assert hits > 10


async def test_an_append_that_skips_a_seq_invalidates(node: Node, db: Database, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    target = ConversationRef(id=conv.id)
    await append(node.db, tenant, conv.id, *texts(3))
    assert await check_history(node.db, node.cache, tenant, target, last=3)
    await append(db, tenant, conv.id, {"content": "unheard"})  # a writer without the listener: seq 4
    invalidations = counter("cache_invalidations_total")
    await append(node.db, tenant, conv.id, {"content": "heard"})  # seq 5 does not follow the cached 3
    assert counter("cache_invalidations_total") == invalidations + 1
    assert not await check_history(node.db, node.cache, tenant, target, last=5)  # refilled, complete
    assert await check_history(node.db, node.cache, tenant, target, last=2)


async def ticket(node: Node, tenant: str, cid: uuid.UUID) -> _Ticket:
    reply = await node.cache._eval(READ_PAGE, conversation_keys(tenant, cid), (node.cache._boot, "", 0, 0, -1, 5))
    assert reply[0] == 0, "expected a miss"
    return _Ticket(int(reply[1]), int(reply[2]))


async def test_a_fill_cannot_overwrite_newer_data(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    await append(node.db, tenant, conv.id, *texts(4))
    await node.cache.evict(tenant, conv.id)
    stale = await ticket(node, tenant, conv.id)
    # A slow reader read Postgres before this append; its fill arrives after it.
    await append(node.db, tenant, conv.id, {"content": "newer"})
    fills = counter("cache_fills_total")
    async with node.db.read() as conn:
        snapshot = await node.cache._fill(PostgresEntries(conn), tenant, conv.id, stale, node.cache._boot)
    assert snapshot is not None and snapshot.last_seq == 5
    assert counter("cache_fills_total") == fills  # refused: the version moved
    assert await node.cache.conversation(tenant, ConversationRef(id=conv.id)) is None
    assert not await check_history(node.db, node.cache, tenant, ConversationRef(id=conv.id), last=3)
    assert counter("cache_fills_total") == fills + 1


async def test_a_fill_older_than_the_deadline_is_dropped(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    await node.cache.evict(tenant, conv.id)
    old = await ticket(node, tenant, conv.id)
    old.ms -= int(FILL_DEADLINE_S * 1000) + 1
    fills = counter("cache_fills_total")
    async with node.db.read() as conn:
        await node.cache._fill(PostgresEntries(conn), tenant, conv.id, old, node.cache._boot)
    assert counter("cache_fills_total") == fills
    assert await node.cache.conversation(tenant, ConversationRef(id=conv.id)) is None


async def test_evict_fences_fills_in_flight(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    await node.cache.evict(tenant, conv.id)
    before = await ticket(node, tenant, conv.id)
    assert await evict(node.cache.redis, [(tenant, conv.id)]) == 1
    fills = counter("cache_fills_total")
    async with node.db.read() as conn:
        await node.cache._fill(PostgresEntries(conn), tenant, conv.id, before, node.cache._boot)
    assert counter("cache_fills_total") == fills


async def test_state_writes_apply_in_order_and_everything_else_invalidates(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    target = ConversationRef(id=conv.id)

    async def put(key: str, value: Any) -> None:
        await node.db.run(lambda uow: state.set_(uow, tenant, conv.id, key, value))

    await put("k0", {"a": 1})  # a new key: invalidates (its order is not provable)
    await check_history(node.db, node.cache, tenant, target)  # refill
    fills = counter("cache_fills_total")
    for i in range(3):
        await put("k0", {"a": i})  # version 2, 3, 4: applied
        await check_header_and_state(node.db, node.cache, tenant, target)
    assert await node.cache.state_entries(tenant, conv.id) is not None
    assert counter("cache_fills_total") == fills
    await node.db.run(lambda uow: state.delete(uow, tenant, conv.id, "k0"))
    assert await node.cache.state_entries(tenant, conv.id) is None
    await check_header_and_state(node.db, node.cache, tenant, target)


async def test_an_out_of_order_state_event_invalidates(node: Node, db: Database, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    await node.db.run(lambda uow: state.set_(uow, tenant, conv.id, "k1", 1))
    second = await db.run(lambda uow: state.set_(uow, tenant, conv.id, "k1", 2))  # not heard
    await check_history(node.db, node.cache, tenant, ConversationRef(id=conv.id))  # fill: version 2
    await node.db.run(lambda uow: state.set_(uow, tenant, conv.id, "k1", 3))  # version 3: applied
    assert await node.cache.state_entries(tenant, conv.id)
    # The late listener of version 2 (its process stalled) must not go back.
    from app.models import DomainEvent, EventType

    await node.cache.on_events(
        [DomainEvent(EventType.STATE_CHANGED, tenant, conv.id, second.updated_at, state_key="k1", state=second)]
    )
    assert await node.cache.state_entries(tenant, conv.id) is None
    await check_header_and_state(node.db, node.cache, tenant, ConversationRef(id=conv.id))


async def test_close_invalidates_and_closed_entries_keep_only_the_grace_period(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    target = ConversationRef(id=conv.id)
    await append(node.db, tenant, conv.id, *texts(3))
    assert await check_history(node.db, node.cache, tenant, target, last=3)
    await node.db.run(lambda uow: conversations.close(uow, tenant, target, "done"))
    assert await node.cache.conversation(tenant, target) is None
    assert not await check_history(node.db, node.cache, tenant, target, last=3)  # refilled as closed
    header = await node.cache.conversation(tenant, target)
    assert header is not None and header.status is Status.CLOSED
    hdr, _, _ = conversation_keys(tenant, conv.id)
    assert 0 < await node.cache.redis.pttl(hdr) <= node.cache.options.closed_grace_s * 1000
    await node.db.run(lambda uow: conversations.update(uow, tenant, conv.id, status=Status.ACTIVE))
    await check_header_and_state(node.db, node.cache, tenant, target)
    assert await check_history(node.db, node.cache, tenant, target, last=3) is False


async def test_context_windows_equal_postgres_and_are_one_round_trip_when_hot(
    node: Node, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await new_conversation(node, tenant)
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in range(2)]
    await append(
        node.db,
        tenant,
        conv.id,
        {"role": Role.SYSTEM, "content": "You are terse."},
        *texts(12),
        {"role": Role.ASSISTANT, "content": "", "tool_calls": calls},
        {"role": Role.TOOL, "content": "r0", "tool_call_id": "c0"},
        {"role": Role.TOOL, "content": "r1", "tool_call_id": "c1"},
        {"role": Role.SYSTEM, "content": "a later system message"},
        *texts(5, 20),
    )
    budgets = [10, 40, 80, 150, 400, 5000]
    for max_tokens in budgets:
        await check_window(node.db, node.cache, tenant, conv.id, max_tokens=max_tokens)
        await check_window(node.db, node.cache, tenant, conv.id, max_tokens=max_tokens, model="gpt-3.5-turbo")
    await node.db.run(lambda uow: state.set_(uow, tenant, conv.id, "summary", {"text": "earlier", "upToSeq": 6}))
    await node.db.run(lambda uow: state.set_(uow, tenant, conv.id, "system_prompt", "Be kind."))
    for max_tokens in budgets[1:]:
        for flags in ({}, {"include_system": False}, {"include_summary": False}, {"reserve_tokens": 20}):
            await check_window(node.db, node.cache, tenant, conv.id, max_tokens=max_tokens, **flags)
    counting = Counting(node.cache, monkeypatch)
    hits = counter("cache_hits_total", "window")
    await check_window(node.db, node.cache, tenant, conv.id, max_tokens=60)
    assert counter("cache_hits_total", "window") == hits + 1
    assert counting.calls == 1


async def test_reads_by_session_follow_the_mapping_and_survive_a_wrong_one(node: Node, tenant: str) -> None:
    a = await new_conversation(node, tenant)
    b = await new_conversation(node, tenant)
    await append(node.db, tenant, a.id, *texts(2))
    await append(node.db, tenant, b.id, *texts(3))
    by_session = ConversationRef(session_id=a.session_id)
    assert await check_history(node.db, node.cache, tenant, by_session, last=2)  # mapping from CREATED
    node.cache.sessions[(tenant, a.session_id)] = b.id  # wrong in process…
    await node.cache.redis.set(session_key(tenant, a.session_id), str(b.id))  # …and in Redis
    await check_history(node.db, node.cache, tenant, by_session, last=2)
    await check_header_and_state(node.db, node.cache, tenant, by_session)
    assert await check_history(node.db, node.cache, tenant, by_session, last=2)  # relearned


async def test_another_tenants_conversation_is_not_found_through_the_cache(
    node: Node, tenant: str, other_tenant: str
) -> None:
    conv = await new_conversation(node, tenant)
    await append(node.db, tenant, conv.id, *texts(2))
    assert await check_history(node.db, node.cache, tenant, ConversationRef(id=conv.id))
    async with node.db.read() as conn:
        with pytest.raises(NotFound):
            await messages.history_by_ref(conn, other_tenant, ConversationRef(id=conv.id), cache=node.cache)
        assert await conversations.find(conn, other_tenant, ConversationRef(id=conv.id), cache=node.cache) is None
        assert await state.list_(conn, other_tenant, conv.id, cache=node.cache) == []


async def test_an_entry_missing_a_part_reads_as_a_miss(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    await append(node.db, tenant, conv.id, *texts(5))
    target = ConversationRef(id=conv.id)
    assert await check_history(node.db, node.cache, tenant, target, last=3)
    _, msgs, state_key = conversation_keys(tenant, conv.id)
    await node.cache.redis.delete(msgs, state_key)  # what an allkeys-lru eviction could do
    assert not await check_history(node.db, node.cache, tenant, target, last=3)
    await check_header_and_state(node.db, node.cache, tenant, target)
    assert await check_history(node.db, node.cache, tenant, target, last=3)


async def test_nested_ranges_and_states_batch_through_the_cache(node: Node, tenant: str) -> None:
    convs = [await new_conversation(node, tenant) for _ in range(3)]
    for c in convs:
        await append(node.db, tenant, c.id, *texts(4))

        async def put(uow: UnitOfWork, c: Conversation = c) -> None:
            await state.set_(uow, tenant, c.id, "k0", str(c.id))

        await node.db.run(put)
        await check_history(node.db, node.cache, tenant, ConversationRef(id=c.id))
    wanted = [(c.id, 2, 4) for c in convs] + [(convs[0].id, 1, 1)]
    async with node.db.read() as conn:
        got = await messages.ranges(conn, tenant, wanted, cache=node.cache)
        want = await messages.ranges(conn, tenant, wanted)
        for key in wanted:
            await assert_messages(node.db, tenant, got[key], want[key])
        ids = [c.id for c in convs] + [uuid.uuid4()]
        assert await state.list_many(conn, tenant, ids, cache=node.cache) == await state.list_many(conn, tenant, ids)
    assert counter("cache_hits_total", "range") > 0


async def test_metrics_are_exported(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    await check_history(node.db, node.cache, tenant, ConversationRef(id=conv.id))
    text = generate_latest(metrics.REGISTRY).decode()
    for name in (
        'cache_hits_total{kind="history"}',
        "cache_misses_total",
        "cache_fills_total",
        "cache_invalidations_total",
        "cache_errors_total",
    ):
        assert name in text


async def test_a_cache_that_cannot_reach_redis_never_fails_a_read_or_a_write(db: Database, tenant: str) -> None:
    cache = HotCache("redis://127.0.0.1:9/0", CacheOptions(timeout_s=0.2, retry_s=30))
    node = Node(cache, Database(db.pool))
    cache.attach(node.db)
    try:
        started = time.monotonic()
        conv = await new_conversation(node, tenant)
        await append(node.db, tenant, conv.id, *texts(3))
        await all_pages(node, tenant, ConversationRef(id=conv.id))
        await check_header_and_state(node.db, cache, tenant, ConversationRef(id=conv.id))
        await check_window(node.db, cache, tenant, conv.id, max_tokens=100)
        assert time.monotonic() - started < 5  # the breaker: one timeout, not one per call
        assert cache.dirty == {(tenant, conv.id)}
    finally:
        await cache.close()


async def test_a_message_with_sources_is_served_with_them(node: Node, tenant: str) -> None:
    conv = await new_conversation(node, tenant)
    source = Source(document_id="d1", chunk_id="c", title="T", uri="u://x", score=0.5, snippet="s")
    msg: NewMessage = messages.new_message(role=Role.ASSISTANT, content="cited", sources=[source])
    await node.db.run(lambda uow: messages.append(uow, tenant, ConversationRef(id=conv.id), msg))
    async with node.db.read() as conn:
        page = await messages.history_by_ref(conn, tenant, ConversationRef(id=conv.id), cache=node.cache)
    assert page.items[0].sources == [source]


async def test_redis_client_used_by_others_can_evict(node: Node, tenant: str, servers: Any) -> None:
    conv = await new_conversation(node, tenant)
    client = Redis.from_url(servers.redis_url)
    try:
        assert await evict(client, [(tenant, conv.id)]) == 1
    finally:
        await client.aclose()
    assert await node.cache.conversation(tenant, ConversationRef(id=conv.id)) is None


async def test_a_late_created_event_never_overwrites_an_entry(node: Node, db: Database, tenant: str) -> None:
    from app.models import DomainEvent, EventType

    conv = await db.run(lambda uow: conversations.create(uow, tenant))  # its listener has not run…
    await append(node.db, tenant, conv.id, *texts(3))  # …when later events have
    await check_history(node.db, node.cache, tenant, ConversationRef(id=conv.id))
    assert await check_history(node.db, node.cache, tenant, ConversationRef(id=conv.id))
    await node.cache.on_events([DomainEvent(EventType.CREATED, tenant, conv.id, conv.created_at, conversation=conv)])
    assert await check_history(node.db, node.cache, tenant, ConversationRef(id=conv.id))
    await check_header_and_state(node.db, node.cache, tenant, ConversationRef(id=conv.id))


async def test_entries_keep_under_their_byte_limit(node: Node, tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # One limit, read where events are applied and where fills are written.
    monkeypatch.setattr(cache_keys, "MAX_ENTRY_BYTES", 3000)
    conv = await new_conversation(node, tenant)
    target = ConversationRef(id=conv.id)
    big = [{"content": f"{i} " + "x" * 800} for i in range(4)]  # ~950 bytes each
    await append(node.db, tenant, conv.id, *big)  # applied one by one: the oldest drop out
    _, msgs, _ = conversation_keys(tenant, conv.id)
    assert await node.cache.redis.llen(msgs) == 3
    assert await check_history(node.db, node.cache, tenant, target, last=3)
    assert not await check_history(node.db, node.cache, tenant, target, last=4)  # the 4th: Postgres
    await node.cache.evict(tenant, conv.id)
    await check_history(node.db, node.cache, tenant, target, last=4)  # a fill keeps the same limit
    assert await node.cache.redis.llen(msgs) == 3
    await check_window(node.db, node.cache, tenant, conv.id, max_tokens=5000)
