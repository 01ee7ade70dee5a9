"""The schema on Citus: every tenant table distributed and co-located, new ones too; the guard works.

Run with `pytest --cluster citus` (or TEST_CLUSTER=citus); on plain Postgres only the no-op test runs.
"""

from __future__ import annotations

import uuid

import pytest

from db.distribute import ANCHOR, REFERENCE_TABLES, UNDISTRIBUTED_TENANT_TABLES, distribute, has_citus
from db.repositories.messages import CITUS_APPEND_BY_ID
from db.session import Database
from tests import citus_cluster
from tests.factories import create_conversation


async def _citus_or_skip(db: Database) -> None:
    async with db.pool.acquire() as conn:
        if not await has_citus(conn):
            pytest.skip("needs the Citus cluster: pytest --cluster citus")


async def test_every_tenant_table_is_distributed_by_tenant_and_colocated(db: Database) -> None:
    await _citus_or_skip(db)
    async with db.pool.acquire() as conn:
        assert await conn.fetch(UNDISTRIBUTED_TENANT_TABLES, list(REFERENCE_TABLES)) == []
        rows = await conn.fetch(
            "SELECT table_name::text AS name, citus_table_type AS kind, distribution_column AS col, colocation_id "
            "FROM citus_tables"
        )
    tables = {r["name"]: r for r in rows}
    for name in REFERENCE_TABLES:
        assert tables[name]["kind"] == "reference"
    distributed = [r for r in rows if r["kind"] == "distributed"]
    assert {r["col"] for r in distributed} == {"tenant_id"}
    assert {r["colocation_id"] for r in distributed} == {tables[ANCHOR]["colocation_id"]}
    assert {"messages", "message_sources", "conversation_state", "crm_outbox", "action_log", "audit_log"} <= {
        r["name"] for r in distributed
    }


async def test_a_table_added_later_is_distributed_by_the_next_migrate(db: Database, tenant: str) -> None:
    await _citus_or_skip(db)
    name = f"t_rollup_{uuid.uuid4().hex[:8]}"
    async with db.pool.acquire() as conn:
        try:
            # What a colleague's migration might add: tenant-scoped, with an FK to a distributed table.
            await conn.execute(
                f"CREATE TABLE {name} (tenant_id text NOT NULL, conversation_id uuid NOT NULL, n int, "
                f"PRIMARY KEY (tenant_id, conversation_id))"
            )
            assert [r[0] for r in await conn.fetch(UNDISTRIBUTED_TENANT_TABLES, list(REFERENCE_TABLES))] == [name]
            assert name in await distribute(conn)
            assert await conn.fetch(UNDISTRIBUTED_TENANT_TABLES, list(REFERENCE_TABLES)) == []
            await conn.execute(
                f"ALTER TABLE {name} ADD FOREIGN KEY (tenant_id, conversation_id) "
                "REFERENCES conversations (tenant_id, id) ON DELETE CASCADE"
            )
            assert await distribute(conn) == []  # idempotent
        finally:
            await conn.execute(f"DROP TABLE IF EXISTS {name}")
    guard = citus_cluster.current_guard()
    if guard is not None:  # DDL commits on every node (2PC): migrations are allowed to (strict mode)
        guard.skip_to_end()


async def test_the_guard_sees_multi_shard_statements_and_not_routed_ones(db: Database, tenant: str) -> None:
    await _citus_or_skip(db)
    guard = citus_cluster.current_guard()
    assert guard is not None
    async with db.pool.acquire() as conn:
        await conn.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1", tenant)
        assert guard.new_multi_shard_statements() == []
        await conn.fetchval("SELECT count(*) FROM messages WHERE role = 'user'")
        seen = guard.new_multi_shard_statements()
    assert any("role = 'user'" in s for s in seen)


async def test_distribute_is_a_no_op_on_plain_postgres(db: Database) -> None:
    async with db.pool.acquire() as conn:
        if await has_citus(conn):
            pytest.skip("plain Postgres only")
        assert await distribute(conn) == []


async def test_the_append_is_one_task_delegated_whole_to_the_tenants_worker(db: Database, tenant: str) -> None:
    """append_message() runs on the worker of the tenant's shard group: one task, no subplan, no
    intermediate result, no INSERT … SELECT through the coordinator (the CTE statement it replaced
    was split into four subplans and committed with two-phase commit)."""
    await _citus_or_skip(db)
    conversation = await create_conversation(db, tenant)
    args = [tenant, conversation.id, "cm-1", None, "user", "hi", None, 1, None, None, {}, None, None, None]
    notices: list[str] = []
    async with db.pool.acquire() as conn:
        conn.add_log_listener(lambda _c, message: notices.append(message.message))
        await conn.execute("SET client_min_messages = debug1")
        try:
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (COSTS OFF) " + CITUS_APPEND_BY_ID, *args))
            await conn.execute("SET citus.log_remote_commands = on")
            row = await conn.fetchrow(CITUS_APPEND_BY_ID, *args)
        finally:
            await conn.execute("RESET client_min_messages; RESET citus.log_remote_commands")
    assert "Task Count: 1" in plan
    assert "Subplan" not in plan and "INSERT ... SELECT" not in plan and "intermediate" not in plan
    assert any("pushing down the function call" in n for n in notices)
    # What the coordinator sent: the call itself, once, and no two-phase commit.
    remote = [n for n in notices if n.startswith("issuing")]
    assert [n for n in remote if "append_message" in n] and not [n for n in remote if "PREPARE TRANSACTION" in n]
    assert row is not None and row["seq"] == 1 and row["last_seq"] == 1
