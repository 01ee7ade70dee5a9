"""Redis stopped, restarted (with its append-only file: old entries come back), partitioned from
one process: every read still equals Postgres, writes never fail, and the cache comes back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from redis.exceptions import ConnectionError as RedisConnectionError

from app.cache.keys import conversation_keys
from app.embedded.process import EmbeddedServer
from app.main import create_app
from app.models import ConversationRef
from app.services import conversations, messages, state
from app.settings import Settings
from db.session import Database
from tests.api.conftest import make_caller
from tests.cache.conftest import (
    Node,
    check_header_and_state,
    check_history,
    check_window,
    counter,
    make_node,
    restart,
)
from tests.cache.test_cache import append, new_conversation, texts
from tests.conftest import Servers


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def all_reads(node: Node, tenant: str, cid: uuid.UUID, session_id: str) -> int:
    hits = 0
    for target in (ConversationRef(id=cid), ConversationRef(session_id=session_id)):
        for params in ({"last": 3}, {"last": 50}, {"first": 2, "after_seq": 1}):
            hits += await check_history(node.db, node.cache, tenant, target, **params)
        await check_header_and_state(node.db, node.cache, tenant, target)
    for max_tokens in (30, 300):
        await check_window(node.db, node.cache, tenant, cid, max_tokens=max_tokens)
    return hits


async def test_stopped_then_restarted_with_old_entries(
    db: Database, tenant: str, private_redis: list[EmbeddedServer], redis_dir: Path
) -> None:
    node = await make_node(db, private_redis[0].url)
    try:
        conv = await new_conversation(node, tenant)
        await append(node.db, tenant, conv.id, *texts(5))
        await node.db.run(lambda uow: state.set_(uow, tenant, conv.id, "k0", "v1"))
        await all_reads(node, tenant, conv.id, conv.session_id)
        assert await all_reads(node, tenant, conv.id, conv.session_id) > 0  # hot

        private_redis[0].stop()
        errors = counter("cache_errors_total")
        await append(node.db, tenant, conv.id, *texts(3, 10))  # writes succeed without Redis
        await node.db.run(lambda uow: state.set_(uow, tenant, conv.id, "k0", "v2"))
        other = await new_conversation(node, tenant)
        assert await all_reads(node, tenant, conv.id, conv.session_id) == 0  # from Postgres
        assert counter("cache_errors_total") > errors
        assert node.cache.dirty >= {(tenant, conv.id), (tenant, other.id)}

        restart(private_redis, redis_dir)  # the AOF brings back the entry of 5 messages
        await all_reads(node, tenant, conv.id, conv.session_id)
        await eventually(lambda: _clean(node))
        await all_reads(node, tenant, conv.id, conv.session_id)
        assert await all_reads(node, tenant, conv.id, conv.session_id) > 0  # hot again, no restart
        await all_reads(node, tenant, other.id, other.session_id)
    finally:
        await node.cache.close()


async def _clean(node: Node) -> bool:
    return not node.cache.dirty


async def test_a_restart_fences_entries_redis_lost_writes_of(
    db: Database, tenant: str, private_redis: list[EmbeddedServer], redis_dir: Path
) -> None:
    """Redis acknowledged an append and lost it (appendfsync everysec and a crash): nobody knows
    the entry is stale. Entries carry the boot id they were written under, so after the restart
    it reads as a miss."""
    node = await make_node(db, private_redis[0].url)
    try:
        conv = await new_conversation(node, tenant)
        await append(node.db, tenant, conv.id, *texts(4))
        target = ConversationRef(id=conv.id)
        assert await check_history(node.db, node.cache, tenant, target, last=4)
        keys = conversation_keys(tenant, conv.id)
        dumps = [await node.cache.redis.dump(k) for k in keys]
        await append(node.db, tenant, conv.id, {"content": "acknowledged, then lost"})
        for key, value in zip(keys, dumps, strict=True):  # the entry as it was before that append
            await node.cache.redis.restore(key, 60_000, value, replace=True)
        async with node.db.read() as conn:
            stale = await messages.history_by_ref(conn, tenant, target, messages.HistoryArgs(last=5), cache=node.cache)
        assert stale.items[-1].seq == 4  # without a restart this is what a lost write looks like

        restart(private_redis, redis_dir)
        fills = counter("cache_fills_total")
        assert not await check_history(node.db, node.cache, tenant, target, last=5)  # a miss: new boot
        await check_history(node.db, node.cache, tenant, target, last=5)
        assert await check_history(node.db, node.cache, tenant, target, last=5)
        assert counter("cache_fills_total") == fills + 1  # refilled from Postgres, not served stale
    finally:
        await node.cache.close()


class Partition:
    """Cuts one process's cache off Redis (its connection pool refuses), and heals it."""

    def __init__(self, node: Node) -> None:
        self.pool = node.cache.redis.connection_pool
        self.original = self.pool.get_connection

    async def cut(self) -> None:
        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise RedisConnectionError("partitioned")

        self.pool.get_connection = refuse
        await self.pool.disconnect()

    def heal(self) -> None:
        self.pool.get_connection = self.original


async def test_a_partitioned_writer_repairs_what_it_could_not_write(
    db: Database, servers: Servers, tenant: str
) -> None:
    a = await make_node(db, servers.redis_url)
    b = await make_node(db, servers.redis_url)
    partition = Partition(a)
    try:
        conv = await new_conversation(a, tenant)
        await append(a.db, tenant, conv.id, *texts(3))
        target = ConversationRef(id=conv.id)
        assert await check_history(b.db, b.cache, tenant, target, last=3)

        await partition.cut()  # only `a` loses Redis
        await append(a.db, tenant, conv.id, {"content": "written while cut off"})
        assert a.cache.dirty == {(tenant, conv.id)}
        await check_history(a.db, a.cache, tenant, target, last=4)  # a: from Postgres, right

        partition.heal()
        assert a.cache._recovery is not None
        a.cache._recovery.cancel()  # freeze: Redis reachable again, the entry not invalidated yet
        await asyncio.sleep(a.cache.options.retry_s * 2)  # the breaker closes
        assert not await check_history(a.db, a.cache, tenant, target, last=4)  # dirty: from Postgres
        await a.cache._invalidate_dirty()  # what the recovery task does
        assert not a.cache.dirty
        await check_history(b.db, b.cache, tenant, target, last=4)
        assert await check_history(b.db, b.cache, tenant, target, last=4)

        # A write through a healthy process repairs too: its append does not follow the tail.
        await partition.cut()
        await append(a.db, tenant, conv.id, {"content": "cut off again"})
        await append(b.db, tenant, conv.id, {"content": "b writes"})
        await check_history(b.db, b.cache, tenant, target, last=6)
        partition.heal()
        await eventually(lambda: _clean(a))  # the recovery task, this time
    finally:
        partition.heal()
        await a.cache.close()
        await b.cache.close()


async def test_graphql_with_redis_down_is_degraded_but_right(
    db: Database, servers: Servers, tenant: str, private_redis: list[EmbeddedServer], redis_dir: Path
) -> None:
    # The ordinary path: it reads recent pages from the hot store. (The engine's SQL pushdown
    # answers this shape from Postgres alone, Redis up or down: tests/api/test_engine_pushdown.py.)
    settings = Settings(
        _env_file=None, readiness_timeout_s=0.5, cache_retry_s=0.05, cache_timeout_s=0.3, graphql_engine=False
    )
    app = create_app(settings, database_url=servers.database_url, redis_url=private_redis[0].url)
    history = """query($id: ID!) { history(conversationId: $id, last: 4) {
        totalCount edges { node { seq content tokenCount } } } }"""
    add = """mutation($id: ID!, $c: String!) { addMessage(input: {conversationId: $id, role: USER, content: $c}) {
        message { seq } } }"""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        api = await make_caller(db, http, tenant)
        conv = await conversations_create(api)

        async def read() -> dict[str, Any]:
            return await api.data(history, {"id": conv})

        async def truth() -> dict[str, Any]:
            async with db.read() as conn:
                page = await messages.history_by_ref(
                    conn, tenant, ConversationRef(id=uuid.UUID(conv)), messages.HistoryArgs(last=4)
                )
            return {
                "history": {
                    "totalCount": page.total_count,
                    "edges": [
                        {"node": {"seq": m.seq, "content": m.content, "tokenCount": m.token_count}} for m in page.items
                    ],
                }
            }

        for i in range(3):
            await api.data(add, {"id": conv, "c": f"m{i}"})
        assert await read() == await truth()
        hits = counter("cache_hits_total", "history")
        assert await read() == await truth()
        assert counter("cache_hits_total", "history") > hits

        private_redis[0].stop()
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        await api.data(add, {"id": conv, "c": "while Redis is down"})
        assert await read() == await truth()

        restart(private_redis, redis_dir)
        await api.data(add, {"id": conv, "c": "after"})
        assert await read() == await truth()

        async def hot_again() -> bool:
            before = counter("cache_hits_total", "history")
            assert await read() == await truth()
            return counter("cache_hits_total", "history") > before

        await eventually(hot_again)
        assert (await http.get("/readyz")).json()["status"] == "ok"


async def conversations_create(api: Any) -> str:
    data = await api.data("mutation { createConversation(input: {}) { id } }")
    conv: str = data["createConversation"]["id"]
    return conv


async def test_services_default_to_postgres_without_a_cache(db: Database, tenant: str) -> None:
    conv = await db.run(lambda uow: conversations.create(uow, tenant))
    async with db.read() as conn:
        page = await messages.history_by_ref(conn, tenant, ConversationRef(id=conv.id))
    assert page.items == [] and page.total_count == 0
