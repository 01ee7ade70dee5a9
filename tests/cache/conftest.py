"""Hot-cache fixtures: a HotCache on the session Redis attached to its own Database (sharing the
session pool), private Redis servers for stop/restart tests, and "what Postgres says" helpers."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app import metrics
from app.cache.client import HotCache
from app.cache.options import CacheOptions
from app.embedded.process import EmbeddedServer
from app.embedded.redis import start_redis
from app.models import ConversationRef, Message
from app.services import context, conversations, hot_fill, messages, state
from app.services.context import ContextWindow
from db.session import Database
from tests.conftest import Servers

#: Small suffixes and fast retries: every path (suffix, older-than-suffix, recovery) gets exercised.
FAST = CacheOptions(recent_messages=8, ttl_s=60, closed_grace_s=30, timeout_s=0.3, retry_s=0.05)


@dataclass
class Node:
    """One "process": its own cache and a Database whose commits it hears."""

    cache: HotCache
    db: Database


async def make_node(db: Database, redis_url: str, options: CacheOptions = FAST) -> Node:
    cache = HotCache(redis_url, options)
    node_db = Database(db.pool)
    cache.attach(node_db)
    await cache.start()
    return Node(cache, node_db)


@pytest.fixture
async def node(db: Database, servers: Servers) -> AsyncIterator[Node]:
    n = await make_node(db, servers.redis_url)
    yield n
    await n.cache.close()


@pytest.fixture
def redis_dir(tmp_path: Path) -> Path:
    return tmp_path / "redis"


@pytest.fixture
def private_redis(redis_dir: Path) -> Iterator[list[EmbeddedServer]]:
    """A Redis of the test's own (persisted: a restart brings old entries back). The list holds
    the running server; tests replace it when they restart it."""
    servers = [start_redis(redis_dir, persist=True)]
    yield servers
    for server in servers:
        server.stop()


def restart(servers: list[EmbeddedServer], redis_dir: Path) -> None:
    old = servers.pop()
    old.stop()
    servers.append(start_redis(redis_dir, persist=True, port=old.port))


# ---------------------------------------------------------------------------- Postgres, the truth


def _plain(m: Message) -> dict[str, Any]:
    d = dataclasses.asdict(m)
    d.pop("sources")
    return d


async def assert_messages(db: Database, tenant: str, got: list[Message], want: list[Message]) -> None:
    """Same messages; where the cache brought sources, they are Postgres' sources."""
    assert [_plain(m) for m in got] == [_plain(m) for m in want]
    with_sources = [m for m in got if m.sources is not None]
    if with_sources:
        async with db.read() as conn:
            truth = await messages.sources_for(conn, tenant, [(m.conversation_id, m.seq) for m in with_sources])
        assert [m.sources for m in with_sources] == [truth[(m.conversation_id, m.seq)] for m in with_sources]


async def check_history(db: Database, cache: HotCache, tenant: str, target: ConversationRef, **params: Any) -> bool:
    """The page through the cache equals the page from Postgres; True when the cache answered."""
    async with db.read() as conn:
        want = await messages.history_by_ref(conn, tenant, target, messages.HistoryArgs(**params))
        hits = _hits("history")
        got = await messages.history_by_ref(conn, tenant, target, messages.HistoryArgs(**params), cache=cache)
    await assert_messages(db, tenant, got.items, want.items)
    assert (got.has_next_page, got.has_previous_page, got.total_count, got.cursors) == (
        want.has_next_page,
        want.has_previous_page,
        want.total_count,
        want.cursors,
    )
    return _hits("history") > hits


async def check_header_and_state(db: Database, cache: HotCache, tenant: str, target: ConversationRef) -> None:
    async with db.read() as conn:
        want = await conversations.find(conn, tenant, target)
        got = await conversations.find(conn, tenant, target, cache=cache)
        assert got == want
        if want is None:
            return
        assert await state.list_(conn, tenant, want.id, cache=cache) == await state.list_(conn, tenant, want.id)
        for key in ("system_prompt", "summary", "k0", "k1"):
            assert await state.get(conn, tenant, want.id, key, cache=cache) == await state.get(
                conn, tenant, want.id, key
            )


async def check_window(db: Database, cache: HotCache, tenant: str, conversation_id: uuid.UUID, **params: Any) -> None:
    """A window built over the cache equals the one built over Postgres (same header)."""
    async with db.read() as conn:
        header = await conversations.get(conn, tenant, ConversationRef(id=conversation_id))
        want = await context.build_window(conn, tenant, header, **params)
        source = hot_fill.window_source(
            cache, conn, tenant, header, max_tokens=params["max_tokens"], reserve_tokens=params.get("reserve_tokens", 0)
        )
        got = await context.build_window(conn, tenant, header, source=source, **params)
    await assert_windows(db, tenant, got, want)


async def assert_windows(db: Database, tenant: str, got: ContextWindow, want: ContextWindow) -> None:
    await assert_messages(db, tenant, got.messages, want.messages)
    plain = [dataclasses.replace(w, messages=[]) for w in (got, want)]
    assert plain[0] == plain[1]


def _hits(kind: str) -> float:
    return counter("cache_hits_total", kind)


def counter(name: str, kind: str | None = None) -> float:
    """A cache metric's value in this process's registry (0 before its first increment)."""
    value = metrics.REGISTRY.get_sample_value(name, {"kind": kind} if kind else {})
    return float(value or 0.0)
