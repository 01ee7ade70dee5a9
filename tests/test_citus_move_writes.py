"""Appends racing shard moves, many times: every append the service answered is in Postgres, with
the seq it was answered with, and each conversation's seqs are gap-free (Citus only).

The rebalance test moves one group once, with subscribers and two API processes around it; this one
moves the same group back and forth between the workers while writers hammer it through the
service layer, to put as many appends as possible into the moves' switch windows, in both transfer
modes. With logical replication (`force_logical`, what Citus' default `auto` picks) it found lost
appends, about 1 run in 3: found on the moved-away placement, made before the move blocked writes.
The cause was the test cluster's `synchronous_commit=off`: the move's catch-up waits for the source's
`pg_current_wal_lsn()` (the WAL *write* position), and an asynchronous commit can still be in the
WAL buffers past it, so the move switches without it. The Citus nodes now keep synchronous_commit on
(app/embedded/citus.NODE_OPTIONS) and the service warns at start when a node has it off
(tests/test_citus_async_commit.py; docs/scaling.md, "Moves need synchronous_commit")"""

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


@pytest.mark.parametrize("mode", ["block_writes", "force_logical"])
async def test_appends_racing_shard_moves_are_all_kept(db: Database, mode: str) -> None:
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
    when: dict[str, tuple[float, float]] = {}  # key -> the append's start and answer (wall clock)

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

            began = time.time()
            seq, created = await db.run(work)
            assert created
            answered[cid].append((seq, key))
            when[key] = (began, time.time())
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
                began = time.monotonic()
                for attempt in range(20):
                    # The target may still hold the group's copy from the move before; Citus drops it
                    # only when no transaction is using it, else it refuses the move: try again.
                    await conn.execute("CALL citus_cleanup_orphaned_resources()")
                    try:
                        await conn.execute(
                            "SELECT citus_move_shard_placement($1::bigint, $2::text, $3::int, '127.0.0.1', $4::int, "
                            f"shard_transfer_mode => '{mode}')",
                            shard,
                            here["nodename"],
                            here["nodeport"],
                            there,
                        )
                        break
                    except asyncpg.InternalServerError as exc:
                        if "could not be cleaned up" not in str(exc) or attempt == 19:
                            raise
                        await asyncio.sleep(0.25)
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
            if stored != answered[cid]:
                lost = sorted(set(answered[cid]) - set(stored))
                times = [
                    f"{k}: {time.strftime('%H:%M:%S', time.gmtime(when[k][0]))}.{int(when[k][0] % 1 * 1000):03d}"
                    f"+{(when[k][1] - when[k][0]) * 1000:.0f}ms"
                    for _, k in lost[:5]
                ]
                print("LOST", lost[:5], times, "FOUND AT", await _find(cluster, [k for _, k in lost[:5]]))
            assert stored == answered[cid], (
                f"{cid}: answered {len(answered[cid])}, stored {len(stored)}, last_seq {last_seq}; first difference "
                f"{next(((a, b) for a, b in zip(answered[cid], stored, strict=False) if a != b), None)}"
            )
            assert [s for s, _ in stored] == list(range(1, len(stored) + 1)) and last_seq == len(stored)
    print(
        f"\n{sum(len(v) for v in answered.values())} appends by {WRITERS} writers over {len(took)} moves "
        f"({', '.join(f'{t:.1f}' for t in took)} s): all kept"
    )


async def _find(cluster: object, contents: list[str]) -> list[str]:
    """Where messages with these contents are, shard table by node (read directly, old copies too)."""
    out: list[str] = []
    ports = [cluster.coordinator.port, *(w.port for w in cluster.workers)]  # type: ignore[attr-defined]
    for port in sorted(set(ports)):
        async with citus_cluster.shards_on(port, "messages") as (conn, shards):
            for name in shards:
                for row in await conn.fetch(
                    f"SELECT seq, content, created_at FROM {name} WHERE content = ANY($1)", contents
                ):
                    out.append(f"{port} {name} seq {row['seq']} {row['content']} at {row['created_at']}")
            cleanup = await conn.fetch("SELECT * FROM pg_dist_cleanup") if port == ports[0] else []
        nodes = [cluster.coordinator, *cluster.workers]  # type: ignore[attr-defined]
        log = next((n.data_dir / "postgres.log" for n in nodes if n.port == port), None)
        if log is not None and log.exists():
            for line in log.read_text(errors="replace").splitlines():
                if contents[0] in line:
                    out.append(f"log {port}: {line[:120]} … {line[-160:]}")
                elif "caught up with the source LSN" in line or "citus_move_shard_placement" in line[:300]:
                    out.append(f"log {port}: {line[:200]}")
                elif any(w in line for w in ("logical replication", "ERROR", "FATAL")):
                    out.append(f"log {port}: {line[:300]}")
        out.extend(f"cleanup {dict(r)}" for r in cleanup)
    return out
