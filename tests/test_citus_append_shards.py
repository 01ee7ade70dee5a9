"""The Citus append's shard path (db/citus_append.py): taken where it is safe, the routed body elsewhere.

Run with `pytest --cluster citus`. Which body ran is read from the function-call counters of the
transaction (`pg_stat_get_xact_function_calls`), so each case sees the path it took, not only its
result; the rollup test (tests/services/test_stats_rollups.py) and the rebalance test prove the
numbers and the shard move.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Literal

import pytest

from db.citus_append import PREFIX
from db.repositories.messages import CITUS_APPEND_BY_ID
from db.session import Connection, Database, create_pool
from tests import citus_cluster
from tests.factories import create_conversation

_SHARD = "SELECT get_shard_id_for_distribution_column('conversations', $1::text)"
_PORT = "SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = $1"
_CALLS = "SELECT coalesce(pg_stat_get_xact_function_calls(to_regproc($1)), 0)"
_STATS = "SELECT coalesce(sum(messages), 0) FROM stats_daily WHERE tenant_id = $1"


def _args(tenant: str, conversation: uuid.UUID, content: str) -> list[object]:
    return [tenant, conversation, None, None, "user", content, None, 2, None, None, {}, None, None, None]


async def _append_counting(
    conn: Connection, args: list[object], shard: int, isolation: Literal["read_committed", "repeatable_read"]
) -> tuple[int, int, int]:
    """(seq, shard-path calls, routed calls) of one append in its own transaction."""
    async with conn.transaction(isolation=isolation):
        await conn.execute("SET LOCAL track_functions = 'pl'")
        # The counters hold the backend's calls not yet flushed to the stats system: a difference.
        names = (f"public.{PREFIX}{shard}", "public.append_message_routed")
        before = [await conn.fetchval(_CALLS, name) for name in names]
        row = await conn.fetchrow(CITUS_APPEND_BY_ID, *args)
        after = [await conn.fetchval(_CALLS, name) for name in names]
    assert row is not None
    return row["seq"], after[0] - before[0], after[1] - before[1]


async def test_the_shard_path_runs_where_the_group_lives_and_the_routed_body_elsewhere(
    db: Database, tenant: str
) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    workers = current[0].workers
    async with db.read() as conn:
        shard = await conn.fetchval(_SHARD, tenant)
        port = await conn.fetchval(_PORT, shard)
        # Every node has every group's function (a move needs it on the target), none missing.
        per_node = await conn.fetch(
            "SELECT result FROM run_command_on_all_nodes($$SELECT count(*) FROM pg_proc "
            f"WHERE proname LIKE '{PREFIX}%'$$)"
        )
        groups = await conn.fetchval(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'conversations'::regclass"
        )
    assert [int(r["result"]) for r in per_node] == [groups] * (len(workers) + 1)
    conv = await create_conversation(db, tenant, session_id="shard-path")
    home = next(w for w in workers if w.port == port)
    other = next(w for w in workers if w.port != port)
    pools = {w.port: await create_pool(w.url, min_size=1, max_size=1) for w in (home, other)}
    try:
        async with pools[home.port].acquire() as conn:
            # On the node holding the group, READ COMMITTED: the static per-group function.
            assert await _append_counting(conn, _args(tenant, conv.id, "a"), shard, "read_committed") == (1, 1, 0)
            # A transaction snapshot could show a placement a move has switched since: routed.
            assert await _append_counting(conn, _args(tenant, conv.id, "b"), shard, "repeatable_read") == (2, 0, 1)
        async with pools[other.port].acquire() as conn:
            # In a transaction block the call is not delegated: it runs on the node without the group,
            # whose copy of the shard function must not be used (its shard tables are elsewhere).
            assert await _append_counting(conn, _args(tenant, conv.id, "c"), shard, "read_committed") == (3, 0, 1)
        async with db.read() as conn:
            # One rollup per message whichever path wrote it (the shard path's inline upsert skips the trigger).
            assert await conn.fetchval(_STATS, tenant) == 3
    finally:
        for pool in pools.values():
            await pool.close()


async def test_the_shard_path_waits_for_a_shard_moves_write_block(db: Database, tenant: str) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    async with db.read() as conn:
        shard = await conn.fetchval(_SHARD, tenant)
        port = await conn.fetchval(_PORT, shard)
    conv = await create_conversation(db, tenant, session_id="blocked")
    home = next(w for w in current[0].workers if w.port == port)
    pool = await create_pool(home.url, min_size=2, max_size=2)
    try:
        async with pool.acquire() as mover, pool.acquire() as writer:
            # What citus_move_shard_placement's switch takes on every node (BlockWritesToShardList).
            tx = mover.transaction()
            await tx.start()
            await mover.execute("SELECT lock_shard_metadata(7, ARRAY[$1::bigint])", shard)
            append = asyncio.ensure_future(
                _append_counting(writer, _args(tenant, conv.id, "x"), shard, "read_committed")
            )
            await asyncio.sleep(0.5)
            blocked = not append.done()
            await tx.rollback()
            assert blocked
            assert await asyncio.wait_for(append, 30) == (1, 1, 0)
    finally:
        await pool.close()
