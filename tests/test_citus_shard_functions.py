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
from asyncpg import Record

from db.citus_shard_functions import APPEND, PAGE, SPECS, Spec
from db.distribute import distribute
from db.repositories.messages import CITUS_APPEND_BY_ID, CITUS_PAGE_BY_ID
from db.session import Connection, Database, create_pool
from tests import citus_cluster
from tests.factories import create_conversation

_SHARD = "SELECT get_shard_id_for_distribution_column('conversations', $1::text)"
_PORT = "SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = $1"
_CALLS = "SELECT coalesce(pg_stat_get_xact_function_calls(to_regproc($1)), 0)"
_STATS = "SELECT coalesce(sum(messages), 0) FROM stats_daily WHERE tenant_id = $1"
_COUNT = (
    "SELECT result FROM run_command_on_all_nodes($$SELECT count(*) FROM pg_proc WHERE starts_with(proname, '{}')$$)"
)

Isolation = Literal["read_committed", "repeatable_read"]


def _args(tenant: str, conversation: uuid.UUID, content: str) -> list[object]:
    return [tenant, conversation, None, None, "user", content, None, 2, None, None, {}, None, None, None]


async def _counting(
    conn: Connection, spec: Spec, sql: str, args: list[object], shard: int, isolation: Isolation
) -> tuple[list[Record], int, int]:
    """(rows, shard-path calls, routed calls) of one call in its own transaction."""
    async with conn.transaction(isolation=isolation):
        # (already on for a session that SET ROLE to a role that may not change it)
        await conn.execute(
            "SELECT set_config('track_functions', 'pl', true) WHERE current_setting('track_functions') <> 'pl'"
        )
        # The counters hold the backend's calls not yet flushed to the stats system: a difference.
        names = (f"public.{spec.prefix}{shard}", f"public.{spec.routed}")
        before = [await conn.fetchval(_CALLS, name) for name in names]
        rows = await conn.fetch(sql, *args)
        after = [await conn.fetchval(_CALLS, name) for name in names]
    return rows, after[0] - before[0], after[1] - before[1]


async def _append(conn: Connection, args: list[object], shard: int, isolation: Isolation) -> tuple[int, int, int]:
    """(seq, shard-path calls, routed calls) of one append."""
    rows, fast, routed = await _counting(conn, APPEND, CITUS_APPEND_BY_ID, args, shard, isolation)
    return rows[0]["seq"], fast, routed


async def _page(conn: Connection, tenant: str, conv: uuid.UUID, shard: int) -> tuple[list[str], int, int]:
    """(contents of the last 50, shard-path calls, routed calls) of one page read."""
    args: list[object] = [tenant, conv, False, 0, None, 50]
    rows, fast, routed = await _counting(conn, PAGE, CITUS_PAGE_BY_ID, args, shard, "read_committed")
    return [r["content"] for r in rows], fast, routed


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
        groups = await conn.fetchval(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'conversations'::regclass"
        )
        # Every node has every group's functions (a move needs them on the target), none missing.
        for spec in SPECS:
            per_node = [int(r["result"]) for r in await conn.fetch(_COUNT.format(spec.prefix))]
            assert per_node == [groups] * (len(workers) + 1), spec.name
        # Distributed objects: Citus creates them on a node added later too (citus_add_node).
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_dist_object o JOIN pg_proc p ON p.oid = o.objid "
                "WHERE o.classid = 'pg_proc'::regclass AND starts_with(p.proname, $1)",
                APPEND.prefix,
            )
            == groups
        )
        # A STABLE dispatcher would check the placement with its caller's (pre-lock) snapshot.
        assert await conn.fetchval("SELECT provolatile FROM pg_proc WHERE proname = 'history_page'") == b"v"
    conv = await create_conversation(db, tenant, session_id="shard-path")
    home = next(w for w in workers if w.port == port)
    other = next(w for w in workers if w.port != port)
    pools = {w.port: await create_pool(w.url, min_size=1, max_size=1) for w in (home, other)}
    try:
        async with pools[home.port].acquire() as conn:
            # On the node holding the group, READ COMMITTED: the static per-group function.
            assert await _append(conn, _args(tenant, conv.id, "a"), shard, "read_committed") == (1, 1, 0)
            # A transaction snapshot could show a placement a move has switched since: routed.
            assert await _append(conn, _args(tenant, conv.id, "b"), shard, "repeatable_read") == (2, 0, 1)
        async with pools[other.port].acquire() as conn:
            # In a transaction block the call is not delegated: it runs on the node without the group,
            # whose copy of the shard function must not be used (its shard tables are elsewhere).
            assert await _append(conn, _args(tenant, conv.id, "c"), shard, "read_committed") == (3, 0, 1)
            assert await _page(conn, tenant, conv.id, shard) == (["a", "b", "c"], 0, 1)
        async with pools[home.port].acquire() as conn:
            assert await _page(conn, tenant, conv.id, shard) == (["a", "b", "c"], 1, 0)
            missing = await _counting(
                conn, PAGE, CITUS_PAGE_BY_ID, [tenant, uuid.uuid4(), False, 0, None, 50], shard, "read_committed"
            )
            assert missing == ([], 1, 0)
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
            append = asyncio.ensure_future(_append(writer, _args(tenant, conv.id, "x"), shard, "read_committed"))
            await asyncio.sleep(0.5)
            blocked = not append.done()
            await tx.rollback()
            assert blocked
            assert await asyncio.wait_for(append, 30) == (1, 1, 0)
    finally:
        await pool.close()


async def test_a_migration_replacing_the_append_gets_its_shard_functions_rebuilt(db: Database, tenant: str) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    async with db.pool.acquire() as conn:
        shard = await conn.fetchval(_SHARD, tenant)
        port = await conn.fetchval(_PORT, shard)
        # What a later migration does (CREATE OR REPLACE append_message with its new body): the
        # dispatcher is gone until migrate's distribute() rebuilds the routed copy, groups, dispatcher.
        definition = await conn.fetchval("SELECT pg_get_functiondef('public.append_message_routed'::regproc)")
        await conn.execute(definition.replace("public.append_message_routed(", "public.append_message(", 1))
        changed = await distribute(conn)
        groups = await conn.fetchval(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'conversations'::regclass"
        )
        assert "append_message() (shard dispatcher)" in changed
        assert len([c for c in changed if c.startswith(APPEND.prefix)]) == groups
        assert not [c for c in changed if c.startswith(PAGE.name)]  # untouched
        assert await distribute(conn) == []
    guard = citus_cluster.current_guard()
    if guard is not None:  # DDL commits on every node (2PC), as migrations do
        guard.skip_to_end()
    conv = await create_conversation(db, tenant, session_id="rebuilt")
    home = next(w for w in current[0].workers if w.port == port)
    pool = await create_pool(home.url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert await _append(conn, _args(tenant, conv.id, "a"), shard, "read_committed") == (1, 1, 0)
    finally:
        await pool.close()


async def test_a_role_that_does_not_own_the_tables_takes_the_routed_body(db: Database, tenant: str) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    role = f"cs_app_{uuid.uuid4().hex[:8]}"
    async with db.read() as conn:
        shard = await conn.fetchval(_SHARD, tenant)
        port = await conn.fetchval(_PORT, shard)
    conv = await create_conversation(db, tenant, session_id="not-owner")
    home = next(w for w in current[0].workers if w.port == port)
    pool = await create_pool(home.url, min_size=1, max_size=1)
    try:
        async with db.pool.acquire() as conn:
            # An application role with the rights it needs but not the owner's (lock_shard_metadata
            # checks ownership): the shard path must not be tried, the append must still work.
            await conn.execute(f"CREATE ROLE {role} NOLOGIN")
            await conn.fetch(f"SELECT run_command_on_all_nodes('GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}')")
        async with pool.acquire() as conn:
            await conn.execute(f"SET track_functions = 'pl'; SET ROLE {role}")
            try:
                assert await _append(conn, _args(tenant, conv.id, "a"), shard, "read_committed") == (1, 0, 1)
            finally:
                await conn.execute("RESET ROLE; RESET track_functions")
    finally:
        await pool.close()
        async with db.pool.acquire() as conn:
            await conn.fetch(f"SELECT run_command_on_all_nodes('DROP OWNED BY {role}')")
            await conn.execute(f"DROP ROLE IF EXISTS {role}")
        guard = citus_cluster.current_guard()
        if guard is not None:  # role DDL commits on every node (2PC)
            guard.skip_to_end()
