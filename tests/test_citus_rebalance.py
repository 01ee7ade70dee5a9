"""Online growth on Citus: a worker is added and a shard group moves to it while writers append
(with retried clientMessageIds): nothing lost, nothing duplicated, seqs gap-free, and the longest
pause a writer saw is measured. Runs with `pytest --cluster citus`; skipped otherwise.

Scaled down from the issue's 8 × 500 with 50 live subscribers to 8 × REBALANCE_MESSAGES (default
100) without subscribers, to fit this 2-core machine's test budget (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid

import asyncpg
import pytest

from app.embedded.citus import add_worker
from app.models import Conversation, ConversationRef, NewMessage, Role
from app.services import conversations, messages
from db.session import Database, UnitOfWork
from tests import citus_cluster

WRITERS = 8
PER_WRITER = int(os.environ.get("REBALANCE_MESSAGES", "100"))


async def test_a_shard_group_moves_to_a_new_worker_while_writers_append(db: Database) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    cluster, root, started = current
    tenants = [f"rb-{uuid.uuid4().hex[:10]}" for _ in range(WRITERS)]
    convs: list[Conversation] = []
    for t in tenants:

        async def create(uow: UnitOfWork, t: str = t) -> Conversation:
            return await conversations.create(uow, t, session_id=f"s-{uuid.uuid4().hex}")

        convs.append(await db.run(create))
    new_node = add_worker(cluster, root / f"worker{len(cluster.workers) + 1}", fsync=False)
    started.append(new_node)
    pauses: list[float] = []
    progress = [0]
    fifth_written = asyncio.Event()

    async def writer(w: int) -> None:
        for i in range(PER_WRITER):
            client_id = f"w{w}-m{i}"
            tries = 2 if random.random() < 0.1 else 1  # 10 % are retried: the second must be a no-op
            for attempt in range(tries):
                msg = messages.new_message(role=Role.USER, content=f"{w}/{i}", client_message_id=client_id)

                async def work(uow: UnitOfWork, msg: NewMessage = msg, w: int = w) -> bool:
                    result = await messages.append(uow, tenants[w], ConversationRef(id=convs[w].id), msg)
                    return result.created

                started_at = time.monotonic()
                created = await db.run(work)
                pauses.append(time.monotonic() - started_at)
                assert created == (attempt == 0)
            progress[0] += 1
            if progress[0] >= WRITERS * PER_WRITER // 5:
                fifth_written.set()  # the move starts with the writers in full swing

    async def move() -> float:
        await fifth_written.wait()
        conn = await asyncpg.connect(cluster.url)
        try:
            shard = await conn.fetchval(
                "SELECT get_shard_id_for_distribution_column('conversations', $1::text)", tenants[0]
            )
            node = await conn.fetchrow("SELECT nodename, nodeport FROM citus_shards WHERE shardid = $1", shard)
            assert node is not None
            began = time.monotonic()
            # A new node needs the reference tables (tenants, api_keys) before it can take shards.
            await conn.execute("SELECT replicate_reference_tables('force_logical')")
            await conn.execute(
                "SELECT citus_move_shard_placement($1::bigint, $2::text, $3::int, '127.0.0.1', $4::int, shard_transfer_mode => 'force_logical')",
                shard,
                node["nodename"],
                node["nodeport"],
                new_node.port,
            )
            took = time.monotonic() - began
            where = await conn.fetchval("SELECT nodeport FROM citus_shards WHERE shardid = $1", shard)
            assert where == new_node.port
            return took
        finally:
            await conn.close()

    results = await asyncio.gather(move(), *(writer(w) for w in range(WRITERS)))
    move_s = results[0]
    for w, conv in enumerate(convs):
        async with db.read() as conn:
            rows = await conn.fetch(
                "SELECT seq, client_message_id FROM messages WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY seq",
                tenants[w],
                conv.id,
            )
        assert [r["seq"] for r in rows] == list(range(1, PER_WRITER + 1))  # gap-free, nothing lost
        assert sorted(r["client_message_id"] for r in rows) == sorted(f"w{w}-m{i}" for i in range(PER_WRITER))
    print(f"\nshard group moved in {move_s:.2f}s; longest write {max(pauses) * 1000:.0f} ms over {len(pauses)} writes")
