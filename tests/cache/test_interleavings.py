"""Cache equals Postgres under random interleavings.

Two "processes" (two caches, each hearing its own Database) share one real Redis. Each round
runs 1-5 random writes concurrently — appends, batches past the cached suffix, new sessions,
system prompts, tool calls, state writes and deletes, closes, reopens, title changes — together
with cache reads that race them (fills against listeners). Listeners are delayed at random, so
events of concurrent units of work reach Redis out of commit order. Redis is stopped in the
middle (writes go on; reads come from Postgres) and restarted from its append-only file (the
entries from before come back). After every round, every read — history pages by id and by
sessionId, headers, state, context windows — through either cache equals the Postgres answer."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.embedded.process import EmbeddedServer
from app.errors import DomainError
from app.models import Conversation, ConversationRef, DomainEvent, NewMessage, Role, Status
from app.services import conversations, cursors, hot_fill, messages, state
from db.session import Database, UnitOfWork
from tests.cache.conftest import (
    Node,
    check_header_and_state,
    check_history,
    check_window,
    counter,
    make_node,
    restart,
)

ROUNDS = 45


def jitter(node: Node, rng: random.Random) -> None:
    """Delay the node's listener at random: concurrent commits reach Redis in any order."""
    (listener,) = node.db.listeners

    async def delayed(events: list[DomainEvent]) -> None:
        await asyncio.sleep(rng.random() * 0.004)
        await listener(events)

    node.db.listeners[0] = delayed


def random_page(rng: random.Random, last_seq: int) -> dict[str, Any]:
    pick = rng.randrange(6)
    size = rng.choice([1, 3, 8, 20, 50])
    if pick == 0:
        return {}
    if pick == 1:
        return {"last": size}
    if pick == 2:
        return {"first": size}
    if pick == 3:
        return {"last": size, "before": cursors.seq_cursor(rng.randint(1, last_seq + 2))}
    if pick == 4:
        return {"first": size, "after": cursors.seq_cursor(rng.randint(0, last_seq + 1))}
    return {"after_seq": rng.randint(0, last_seq + 1), "first": size}


class World:
    def __init__(self, rng: random.Random, nodes: list[Node], tenant: str) -> None:
        self.rng = rng
        self.nodes = nodes
        self.tenant = tenant
        self.conversations: list[Conversation] = []
        self.calls = 0

    def node(self) -> Node:
        return self.rng.choice(self.nodes)

    def pick(self) -> Conversation:
        return self.rng.choice(self.conversations)

    def message(self) -> NewMessage:
        r = self.rng.random()
        if r < 0.1:
            return messages.new_message(role=Role.SYSTEM, content=f"system {self.rng.random():.3f}")
        if r < 0.2:
            self.calls += 1
            call = {"id": f"c{self.calls}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            return messages.new_message(role=Role.ASSISTANT, content="", tool_calls=[call])
        return messages.new_message(
            role=self.rng.choice([Role.USER, Role.ASSISTANT]), content="word " * self.rng.randint(1, 30)
        )

    def write(self) -> Callable[[UnitOfWork], Awaitable[Any]]:
        rng, tenant = self.rng, self.tenant
        conv = self.pick()
        target = ConversationRef(id=conv.id)
        r = rng.random()
        if r < 0.35:
            msg = self.message()
            return lambda uow: messages.append(uow, tenant, target, msg)
        if r < 0.5:
            batch = [self.message() for _ in range(rng.randint(1, 12))]
            return lambda uow: messages.append_batch(uow, tenant, target, batch)
        if r < 0.55:
            session = ConversationRef(session_id=f"s-{uuid.uuid4().hex[:8]}")
            msg = self.message()
            return lambda uow: messages.append(uow, tenant, session, msg)
        if r < 0.75:
            key = rng.choice(["k0", "k1", "summary", "system_prompt"])
            value: Any = {
                "summary": {"text": "so far", "upToSeq": rng.randint(0, conv.last_seq + 3)},
                "system_prompt": rng.choice(["Be brief.", "", "Answer in Spanish."]),
            }.get(key, rng.randint(0, 1000))
            return lambda uow: state.set_(uow, tenant, conv.id, key, value)
        if r < 0.82:
            key = rng.choice(["k0", "summary", "system_prompt"])
            return lambda uow: state.delete(uow, tenant, conv.id, key)
        if r < 0.9:
            return lambda uow: conversations.close(uow, tenant, target, "done")
        if r < 0.95:
            return lambda uow: conversations.update(uow, tenant, conv.id, status=Status.ACTIVE)
        return lambda uow: conversations.update(uow, tenant, conv.id, title=f"t{rng.randint(0, 9)}")

    async def run_write(self) -> None:
        node, work = self.node(), self.write()
        with contextlib.suppress(DomainError):  # appending to a closed conversation, say
            await node.db.run(work)

    async def race_read(self) -> None:
        """A read through a cache while writes commit: its fill races their listeners."""
        node, conv = self.node(), self.pick()
        async with node.db.read() as conn:
            if self.rng.random() < 0.5:
                await messages.history_by_ref(conn, self.tenant, ConversationRef(id=conv.id), cache=node.cache)
            else:
                source = hot_fill.window_source(node.cache, conn, self.tenant, conv, max_tokens=200)
                await source.newest(conv.last_seq + 1, 8)

    async def refresh(self) -> None:
        async with self.nodes[0].db.read() as conn:
            rows = await conn.fetch("SELECT id FROM conversations WHERE tenant_id = $1", self.tenant)
            self.conversations = [await conversations.get(conn, self.tenant, ConversationRef(id=r["id"])) for r in rows]

    async def check(self) -> None:
        for conv in self.rng.sample(self.conversations, min(3, len(self.conversations))):
            node = self.node()
            for target in (ConversationRef(id=conv.id), ConversationRef(session_id=conv.session_id)):
                await check_history(node.db, node.cache, self.tenant, target, **random_page(self.rng, conv.last_seq))
            await check_header_and_state(node.db, node.cache, self.tenant, ConversationRef(id=conv.id))
            await check_window(
                node.db,
                node.cache,
                self.tenant,
                conv.id,
                max_tokens=self.rng.choice([40, 150, 600, 4000]),
                include_system=self.rng.random() < 0.8,
                include_summary=self.rng.random() < 0.8,
            )


@pytest.mark.parametrize("seed", [11, 22, 33, 44])
async def test_cache_equals_postgres_under_random_interleavings_and_a_redis_restart(
    seed: int, db: Database, tenant: str, private_redis: list[EmbeddedServer], redis_dir: Path
) -> None:
    rng = random.Random(seed)
    nodes = [await make_node(db, private_redis[0].url) for _ in range(2)]
    for node in nodes:
        jitter(node, rng)
    world = World(rng, nodes, tenant)
    hits, fills, invalidations = (
        counter("cache_hits_total", "history"),
        counter("cache_fills_total"),
        counter("cache_invalidations_total"),
    )
    stop_at, start_at = rng.randint(12, 18), rng.randint(25, 32)
    try:
        for _ in range(3):
            await nodes[0].db.run(lambda uow: conversations.create(uow, tenant))
        await world.refresh()
        for round_ in range(ROUNDS):
            if round_ == stop_at:
                private_redis[0].stop()
            if round_ == start_at:
                restart(private_redis, redis_dir)
            jobs = [world.run_write() for _ in range(rng.randint(1, 5))]
            jobs += [world.race_read() for _ in range(rng.randint(0, 2))]
            rng.shuffle(jobs)
            await asyncio.gather(*jobs)
            await world.refresh()
            await world.check()
        assert counter("cache_hits_total", "history") > hits
        assert counter("cache_fills_total") > fills
        assert counter("cache_invalidations_total") > invalidations
    finally:
        for node in nodes:
            await node.cache.close()
