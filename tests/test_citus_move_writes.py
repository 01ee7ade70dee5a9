"""Appends racing shard moves, many times: every append the service answered is in Postgres, with
the seq it was answered with, and each conversation's seqs are gap-free (Citus only).

The rebalance test moves one group once, with subscribers and two API processes around it; this one
moves the same group back and forth between the workers while writers hammer it through the
service layer, to put as many appends as possible into the moves' switch windows."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import asyncpg
import pytest

from app.models import ConversationRef, Role
from app.services import conversations, messages
from db.session import Database, UnitOfWork
from tests import citus_cluster

MOVES = int(os.environ.get("MOVE_WRITES_MOVES", "4"))
WRITERS = 6


async def test_appends_racing_shard_moves_are_all_kept(db: Database) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    cluster, _, _ = current
    tenant = f"mv-{uuid.uuid4().hex[:10]}"

    convs: list[uuid.UUID] = []
    for n in range(WRITERS):

        async def create(uow: UnitOfWork, session: str = f"mv-{n}") -> uuid.UUID:
            created = await conversations.create(uow, tenant, session_id=session)
            return created.id

        convs.append(await db.run(create))
    answered: dict[uuid.UUID, list[tuple[int, str]]] = {c: [] for c in convs}
    stop = asyncio.Event()

    async def writer(cid: uuid.UUID) -> None:
        i = 0
        while not stop.is_set():
            key = f"{cid.hex[:6]}-{i}"

            async def work(uow: UnitOfWork, key: str = key) -> tuple[int, bool]:
                result = await messages.append(
                    uow,
                    tenant,
                    ConversationRef(id=cid),
                    messages.new_message(role=Role.USER, content=key, client_message_id=key),
                )
                return result.message.seq, result.created

            seq, created = await db.run(work)
            assert created
            answered[cid].append((seq, key))
            i += 1

    async def mover() -> list[float]:
        conn = await asyncpg.connect(cluster.url)
        took: list[float] = []
        try:
            shard = await conn.fetchval(
                "SELECT get_shard_id_for_distribution_column('conversations', $1::text)", tenant
            )
            for _ in range(MOVES):
                await asyncio.sleep(0.5)  # writers in full swing before each move
                here = await conn.fetchrow("SELECT nodename, nodeport FROM citus_shards WHERE shardid = $1", shard)
                assert here is not None
                there = await conn.fetchval(
                    "SELECT nodeport FROM pg_dist_node WHERE isactive AND shouldhaveshards AND noderole = 'primary' "
                    "AND nodeport <> $1 AND groupid <> 0 ORDER BY random() LIMIT 1",
                    here["nodeport"],
                )
                await conn.execute("CALL citus_cleanup_orphaned_resources()")  # the target may hold an old copy
                began = time.monotonic()
                await conn.execute(
                    "SELECT citus_move_shard_placement($1::bigint, $2::text, $3::int, '127.0.0.1', $4::int, "
                    "shard_transfer_mode => 'force_logical')",
                    shard,
                    here["nodename"],
                    here["nodeport"],
                    there,
                )
                took.append(time.monotonic() - began)
            await asyncio.sleep(0.5)
            return took
        finally:
            stop.set()
            await conn.close()

    moving = asyncio.create_task(mover())
    await asyncio.gather(moving, *(writer(c) for c in convs))
    took = moving.result()
    async with db.read() as conn:
        for cid in convs:
            rows = await conn.fetch(
                "SELECT seq, content FROM messages WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY seq",
                tenant,
                cid,
            )
            last_seq = await conn.fetchval(
                "SELECT last_seq FROM conversations WHERE tenant_id = $1 AND id = $2", tenant, cid
            )
            stored = [(r["seq"], r["content"]) for r in rows]
            assert stored == answered[cid], (
                f"{cid}: answered {len(answered[cid])}, stored {len(stored)}, last_seq {last_seq}; first difference "
                f"{next(((a, b) for a, b in zip(answered[cid], stored, strict=False) if a != b), None)}"
            )
            assert [s for s, _ in stored] == list(range(1, len(stored) + 1)) and last_seq == len(stored)
    print(
        f"\n{sum(len(v) for v in answered.values())} appends by {WRITERS} writers over {len(took)} moves "
        f"({', '.join(f'{t:.1f}' for t in took)} s): all kept"
    )
