"""The schema on Citus: every tenant table distributed and co-located, new ones too; the guard works.

Run with `pytest --cluster citus` (or TEST_CLUSTER=citus); on plain Postgres only the no-op test runs.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import pytest

from app.models import NewMessage, Role, Source
from db.distribute import ANCHOR, REFERENCE_TABLES, UNDISTRIBUTED_TENANT_TABLES, distribute
from db.repositories import bulk_import as bulk_import_repo
from db.repositories import crm as crm_repo
from db.repositories import embeddings as embeddings_repo
from db.repositories import messages as messages_repo
from db.repositories.messages import CITUS_APPEND_BY_ID
from db.repositories.transfer import ImportedMessage
from db.session import Connection, Database, LeanPool, create_pool, has_citus
from tests import citus_cluster
from tests.conftest import Servers
from tests.factories import create_conversation


async def _citus_or_skip(db: Database) -> None:
    async with db.pool.acquire() as conn:
        if not await has_citus(conn):
            pytest.skip("needs the Citus cluster: pytest --cluster citus")


async def _guard_or_skip(db: Database, *, strict: bool = False) -> citus_cluster.ShardGuard:
    """The cluster's multi-shard guard; the test is skipped off Citus (and, `strict`, outside strict mode)."""
    await _citus_or_skip(db)
    if strict and os.environ.get("TEST_CITUS_STRICT") != "1":
        pytest.skip("strict mode only (TEST_CITUS_STRICT=1)")
    guard = citus_cluster.current_guard()
    assert guard is not None
    return guard


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
    guard = await _guard_or_skip(db)
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


async def _remote_commands(db: Database, work: Callable[[Connection], Awaitable[None]]) -> list[str]:
    """The commands the coordinator sent to the workers while `work` ran in one transaction."""
    notices: list[str] = []
    async with db.pool.acquire() as conn:
        conn.add_log_listener(lambda _c, message: notices.append(message.message))
        await conn.execute("SET citus.log_remote_commands = on")
        try:
            async with conn.transaction():
                await work(conn)
        finally:
            await conn.execute("RESET citus.log_remote_commands")
    return [n for n in notices if n.startswith("issuing")]


def _one_connection_one_phase(remote: list[str]) -> None:
    # One BEGIN: one worker connection. No intermediate result shipped, no two-phase commit.
    assert len([n for n in remote if "BEGIN TRANSACTION" in n]) == 1, remote
    assert not [n for n in remote if "format result" in n or "format 'result'" in n], remote
    assert not [n for n in remote if "PREPARE TRANSACTION" in n], remote
    assert [n for n in remote if n == "issuing COMMIT"], remote


async def test_the_write_paths_run_on_one_connection_with_a_one_phase_commit(db: Database, tenant: str) -> None:
    """The request paths strict mode used to flag (docs/scaling.md, single-shard): a batch append with
    sources, a close's CRM delivery (tenant with a webhook), the embedding store and a bulk import
    batch are each one transaction on the one worker of the tenant, committed in one phase."""
    await _citus_or_skip(db)
    async with db.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO tenants (tenant_id, name, settings) VALUES ($1, $1, $2)",
            tenant,
            {"crm_webhook_url": "http://127.0.0.1:9/hook"},
        )
    conversation = await create_conversation(db, tenant)
    batch = [
        NewMessage(role=Role.USER, content="one", token_count=1, sources=[Source(document_id="d1")]),
        NewMessage(role=Role.ASSISTANT, content="two", token_count=1),
    ]

    async def append_and_close(conn: Connection) -> None:
        await conn.execute(
            "SELECT 1 FROM conversations WHERE tenant_id = $1 AND id = $2 FOR UPDATE", tenant, conversation.id
        )
        inserted = await messages_repo.insert_many(conn, tenant, conversation.id, 1, batch, datetime.now(UTC))
        assert [(m.seq, len(m.sources or [])) for m in inserted] == [(1, 1), (2, 0)]
        assert await crm_repo.insert_if_configured(conn, tenant, conversation.id, "closed") is not None
        assert await embeddings_repo.store(conn, tenant, conversation.id, "m", 2, [1, 2, 9], [[1, 0]] * 3) == 2

    _one_connection_one_phase(await _remote_commands(db, append_and_close))

    imported = uuid.uuid4()
    message = ImportedMessage(
        id=uuid.uuid4(), seq=1, client_message_id="i-1", role="user", content="imported", name=None,
        tool_call_id=None, tool_calls=None, token_count=1, metadata={}, execution=None,
        created_at=datetime(2025, 1, 1, tzinfo=UTC), sources=[Source(document_id="d2")],
    )  # fmt: skip
    row = {
        "id": str(imported), "session_id": "imported", "user_id": None, "agent_id": "a", "channel": None,
        "title": None, "status": "active", "tags": ["x"], "metadata": {"k": 1},
        "created_at": "2025-01-01T00:00:00+00:00", "updated_at": "2025-01-01T00:00:00+00:00",
        "closed_at": None, "close_reason": None,
    }  # fmt: skip

    async def bulk_import(conn: Connection) -> None:
        await bulk_import_repo.defer_rollups(conn)
        created = await bulk_import_repo.insert_conversations(conn, tenant, [row])
        assert [(c.id, c.tags, c.metadata) for c in created] == [(imported, ["x"], {"k": 1})]
        assert await bulk_import_repo.insert_messages(conn, tenant, [(imported, [message])]) == 1
        await bulk_import_repo.advance(conn, tenant, [(imported, 1, 1, message.created_at)])
        assert await bulk_import_repo.insert_state(conn, tenant, [(imported, "k", 1, 1, message.created_at)])
        await bulk_import_repo.rollup_batch(conn, tenant, [imported])

    _one_connection_one_phase(await _remote_commands(db, bulk_import))
    async with db.pool.acquire() as conn:
        # The shard triggers kept the rollups (the deferral does not reach the workers): counted once.
        counted = await conn.fetchval(
            "SELECT sum(messages) FROM stats_daily WHERE tenant_id = $1 AND day = '2025-01-01'", tenant
        )
        sources = await conn.fetchval("SELECT count(*) FROM message_sources WHERE tenant_id = $1", tenant)
    assert counted == 1 and sources == 2


async def _split_insert(conn: Connection, tenant: str, conversation_id: uuid.UUID) -> None:
    """An INSERT … SELECT reading a reference table, in a transaction block: Citus plans it on the
    node the client is on (intermediate result, two-phase commit)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO crm_outbox (tenant_id, id, conversation_id, trigger) SELECT $1, $2, $3, 'manual' "
            "WHERE EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)",
            tenant,
            uuid.uuid4(),
            conversation_id,
        )


async def test_strict_mode_flags_a_statement_split_through_the_coordinator(db: Database, tenant: str) -> None:
    """TEST_CITUS_STRICT=1 (on in `make test`): an INSERT … SELECT that reads a reference table is
    planned on the coordinator (intermediate result, two-phase commit) and the guard names it."""
    guard = await _guard_or_skip(db, strict=True)
    conversation = await create_conversation(db, tenant)
    async with db.pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ($1, $1)", tenant)
        guard.skip_to_end()  # the reference-table write above commits on every node by design
        await _split_insert(conn, tenant, conversation.id)
    seen = await _eventually_seen(guard)
    # Named with its cause and its process (a client backend: log_line_prefix' %b).
    assert any("PREPARE TRANSACTION" in s and "crm_outbox" in s and "client backend" in s for s in seen), seen


async def test_a_reference_write_that_began_before_the_test_is_attributed_by_its_commands(
    db: Database, servers: Servers, tenant: str
) -> None:
    """What strict mode flagged in CI (docs/scaling.md): the session app records a key's last use
    in the background, so its reference-table write can start before a test's window (the previous
    test, a fixture) and commit, with two-phase commit, inside it. The guard finds its commands
    before the window and allows it; a client's two-phase commit without a cause still fails (the
    test above)."""
    guard = await _guard_or_skip(db)
    # A connection of its own, so the remote commands are logged without strict mode too (and
    # nothing leaks into the pool).
    conn = await asyncpg.connect(servers.database_url)
    try:
        await conn.execute("SET citus.log_remote_commands = on; SET log_min_messages = notice")
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", tenant)
        pid = conn.get_server_pid()
        async with conn.transaction():
            await conn.execute("UPDATE tenants SET name = $2 WHERE tenant_id = $1", tenant, "renamed")
            window = guard.log_path.stat().st_size
            guard.skip_to_end()  # the test's window opens mid-transaction
    finally:
        await conn.close()
    # The backend logs before it answers: its two-phase commit is in the window by now.
    logged = guard.log_path.read_bytes()[window:].decode(errors="replace")
    assert f"[{pid}]" in logged and "PREPARE TRANSACTION" in logged, logged[-2000:]
    assert guard.new_multi_shard_statements() == []


async def _eventually_seen(guard: citus_cluster.ShardGuard) -> list[str]:
    # The coordinator writes its log asynchronously to us: read until the lines are there.
    seen: list[str] = []
    for _ in range(50):
        seen += guard.new_multi_shard_statements()
        if seen:
            return seen
        await asyncio.sleep(0.1)
    return seen


_HOME_PORT = """
SELECT nodeport FROM pg_dist_shard_placement
WHERE shardid = get_shard_id_for_distribution_column('conversations', $1::text)
"""


async def _worker_pool(db: Database, tenant: str, *, home: bool) -> tuple[LeanPool, str]:
    """A one-connection pool on the worker holding `tenant`'s shard group (home) or on another one,
    and the name of the home worker (its data directory, as the guard names a worker's findings)."""
    current = citus_cluster.current_cluster()
    assert current is not None
    async with db.pool.acquire() as conn:
        port = await conn.fetchval(_HOME_PORT, tenant)
    workers = current[0].workers
    home_worker = next(w for w in workers if w.port == port)
    worker = home_worker if home else next(w for w in workers if w.port != port)
    return await create_pool(worker.url, min_size=1, max_size=1), home_worker.data_dir.name


async def _seen_until(guard: citus_cluster.ShardGuard, found: Callable[[str], bool]) -> list[str]:
    # Every node's lines are read (the relayed copy on the caller's node as well): until the one wanted.
    seen: list[str] = []
    for _ in range(50):
        seen += guard.new_multi_shard_statements()
        if any(found(s) for s in seen):
            return seen
        await asyncio.sleep(0.1)
    return seen


async def test_the_guard_reads_every_nodes_log_and_every_node_logs_what_it_reads(db: Database) -> None:
    """The guard follows each node the cluster lists (a worker added later too), and each node has the
    settings and the line prefix its rules read: a worker's session logs multi-task statements with
    their text (and, strict, its remote commands) like the coordinator's."""
    await _citus_or_skip(db)
    current, guard = citus_cluster.current_cluster(), citus_cluster.current_guard()
    assert current is not None and guard is not None
    guard.skip_to_end()  # takes in any worker added since the last test
    nodes = [current[0].coordinator, *current[0].workers]
    assert [n.log_path for n in guard.nodes] == [n.data_dir / "postgres.log" for n in nodes]
    strict = os.environ.get("TEST_CITUS_STRICT") == "1"
    for node in nodes:
        conn = await asyncpg.connect(node.url)
        try:
            assert await conn.fetchval("SHOW log_line_prefix") == citus_cluster.LOG_LINE_PREFIX
            assert await conn.fetchval("SHOW citus.multi_task_query_log_level") == "warning"
            assert await conn.fetchval("SHOW log_min_error_statement") == "warning"
            assert await conn.fetchval("SHOW citus.log_remote_commands") == ("on" if strict else "off")
        finally:
            await conn.close()


async def test_the_guard_reads_the_workers_logs_for_a_pool_on_a_worker(db: Database, tenant: str) -> None:
    """Querying from any node: a multi-shard statement whose client is on a worker is logged only
    there (the coordinator never sees it), and the guard names it with the worker."""
    guard = await _guard_or_skip(db)
    pool, _ = await _worker_pool(db, tenant, home=True)
    marker = f"guard-{uuid.uuid4().hex[:8]}"
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1", tenant)
            assert guard.new_multi_shard_statements() == []
            await conn.fetchval(f"SELECT count(*) FROM messages WHERE content = '{marker}'")
    finally:
        await pool.close()
    seen = await _seen_until(guard, lambda s: marker in s)
    assert any(marker in s and s.startswith("[worker") for s in seen), seen


async def test_the_guard_reads_a_delegated_functions_body_on_its_worker(db: Database, tenant: str) -> None:
    """A distributed function runs on the worker holding its tenant's shard group (as append_message()
    and history_page() do): a multi-shard statement in its body is judged in that worker's log, with
    the function named, even when the call came through another worker (the coordinator sees nothing)."""
    guard = await _guard_or_skip(db)
    name = f"guard_probe_{uuid.uuid4().hex[:8]}"
    marker = f"guard-{uuid.uuid4().hex[:8]}"
    async with db.pool.acquire() as conn:
        await conn.execute(
            f"CREATE FUNCTION {name}(p_tenant text) RETURNS bigint LANGUAGE sql "
            f"AS $$ SELECT count(*) FROM messages WHERE content = '{marker}' $$"
        )
        await conn.execute(
            f"SELECT create_distributed_function('{name}(text)', 'p_tenant', colocate_with := 'conversations')"
        )
    guard.skip_to_end()  # DDL commits on every node (2PC), as migrations do
    pool, home = await _worker_pool(db, tenant, home=False)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval(f"SELECT {name}($1)", tenant) == 0
        seen = await _seen_until(guard, lambda s: s.startswith(f"[{home}]"))
        assert any(s.startswith(f"[{home}]") and f'SQL function "{name}"' in s for s in seen), seen
    finally:
        await pool.close()
        async with db.pool.acquire() as conn:
            await conn.execute(f"DROP FUNCTION IF EXISTS {name}(text)")
        guard.skip_to_end()


async def test_strict_mode_flags_a_statement_split_through_a_worker(db: Database, tenant: str) -> None:
    """TEST_CITUS_STRICT=1: the worker logs its own remote commands, so a two-phase commit that a
    client on a worker starts is named with its cause, as on the coordinator."""
    guard = await _guard_or_skip(db, strict=True)
    conversation = await create_conversation(db, tenant)
    async with db.pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ($1, $1)", tenant)
    pool, _ = await _worker_pool(db, tenant, home=False)
    try:
        guard.skip_to_end()  # the reference-table write above commits on every node by design
        async with pool.acquire() as on_worker:
            await _split_insert(on_worker, tenant, conversation.id)
    finally:
        await pool.close()
    seen = await _seen_until(guard, lambda s: "PREPARE TRANSACTION" in s)
    assert any(s.startswith("[worker") and "PREPARE TRANSACTION" in s and "crm_outbox" in s for s in seen), seen
