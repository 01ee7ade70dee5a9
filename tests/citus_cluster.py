"""Running the suites on Citus: `pytest --cluster citus` (or TEST_CLUSTER=citus).

The session's Postgres is then a local Citus cluster (coordinator + 2 workers, app/embedded/citus.py)
instead of the single embedded server, the hot store a Redis Cluster (3 masters + 3 replicas,
REDIS_CLUSTER_NODES), and every test is checked for multi-shard statements: every node logs each
statement that runs as more than one task (Citus' ``citus.multi_task_query_log_level``, with the
statement itself via ``log_min_error_statement``), and after each test the new lines of **every
node's log** are read: the coordinator's and each worker's (a worker added later too), because a
statement also runs on a worker, through a pool pointed at it (querying from any node) or in the
body of a distributed function delegated to the worker of its tenant's shard group. A statement
that is not on the allow-list below fails the test that ran it: every request path must route to
one shard (``tenant_id = $n`` on every table reference and CTE). Strict mode (TEST_CITUS_STRICT=1)
also fails intermediate results and two-phase commits a node issues (docs/scaling.md, "Strict mode").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from app.embedded.citus import CitusCluster
from app.embedded.process import EmbeddedServer

#: Statements allowed to touch many shards, by a fragment of their text, each with why.
ALLOWED_MULTI_SHARD: dict[str, str] = {
    # crons (jobs/maintenance.py): cross-tenant by nature, run by one worker on a schedule
    "FROM conversations WHERE status = 'active'": "cron: idle close scans every tenant",
    "closed_at <": "cron: retention purge across tenants",
    "FROM crm_outbox": "cron: CRM sweep of due deliveries across tenants",
    "FROM action_log WHERE created_at <": "cron: action log pruning across tenants",
    "DELETE FROM action_log": "cron: action log pruning across tenants",
    "DELETE FROM crm_outbox": "cron: settled deliveries pruning across tenants",
    "SELECT DISTINCT tenant_id FROM conversations": "cron: which tenants have conversations",
    "SELECT DISTINCT tenant_id FROM crm_outbox": "cron: which tenants have CRM deliveries",
    "SELECT DISTINCT tenant_id FROM action_log": "cron: which tenants have action log rows",
    "FROM stats_daily WHERE shard <> 0 AND day <": "cron: rollup compaction finds the tenants with old spread rows",
    # cross-tenant admin and migrations
    "alembic_version": "migrations",
    "create_distributed_table": "migrations",
    "pg_dist_": "the guard's own metadata queries",
    "citus_move_shard_placement": "online growth: the operator's shard move",
    "citus_shards": "online growth: where a shard is",
    "citus_tables": "tests reading Citus metadata",
}

#: Strict mode (TEST_CITUS_STRICT=1): a split statement or a two-phase commit is allowed only when the
#: remote commands its backend issued just before it (the context) contain one of these fragments. None
#: is a request path: each is an operator's or a test's action, and commits on many nodes by design.
ALLOWED_SPLITS: dict[str, str] = {
    # Online growth (docs/scaling.md, runbook): adding a node and moving a shard group is an operator's
    # action, not a request; Citus commits its metadata (placements, node state) on every node with 2PC.
    "pg_dist_placement": "operator: a shard move records the new placement on every node",
    "citus_internal.update_placement_metadata": "operator: a shard move switches the placement on every node",
    "UPDATE pg_dist_node": "operator: a new worker is activated on every node",
    # DDL: the embedding backfill (CLI / cron, not a request) creates a model's HNSW index on every shard.
    "CREATE  INDEX  IF NOT EXISTS ix_message_embeddings_hnsw_": "DDL: the backfill's index for a new vector length",
    # tests/api/test_search_language.py refreshes the planner's statistics; ANALYZE runs on every shard.
    "ANALYZE public.messages_": "test: ANALYZE of a distributed table",
    # Once per process at start (app/resources.py): every node's synchronous_commit, asked on every node.
    "SHOW synchronous_commit": "start-up: the check that no node commits asynchronously",
    # tests/test_citus_async_commit.py: a role (propagated to every node) that commits asynchronously.
    "ROLE async_": "test: DDL of a role on every node",
}

_MULTI_TASK = re.compile(r"(?:WARNING|NOTICE):\s+multi-task query about to be executed")
_STATEMENT = re.compile(r"STATEMENT:\s+(.*)")
_CONTEXT = re.compile(r"CONTEXT:\s+(.*)")
# Only logged with TEST_CITUS_STRICT=1 (citus.log_remote_commands): a subplan's result shipped to a
# worker, or a two-phase commit across connections.
_SPLIT = re.compile(r"issuing (?:COPY \"\d+_\d+\" FROM STDIN WITH \(format result\)|PREPARE TRANSACTION)")


def cluster_requested(config: pytest.Config) -> bool:
    option = config.getoption("--cluster", default=None)
    return (option or os.environ.get("TEST_CLUSTER", "none")) == "citus"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        choices=["none", "citus"],
        default=None,
        help="run against a local Citus cluster (coordinator + 2 workers); also TEST_CLUSTER=citus",
    )


@dataclass
class NodeLog:
    """One node's log, read from where the previous test left it, with each of its backends' open
    transaction (pids are per node, so each node follows its own)."""

    name: str
    log_path: Path
    offset: int = 0
    #: Per backend pid: the commands of its open transaction (across reads and skipped lines).
    open_commands: dict[str, list[str]] = field(default_factory=dict)

    def read_new_lines(self) -> list[str]:
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            raw = f.read()
        # Only complete lines: a statement being written now belongs to the next read.
        end = raw.rfind(b"\n") + 1
        self.offset += end
        return raw[:end].decode(errors="replace").splitlines()

    def follow(self, line: str) -> None:
        """Keep each backend's commands since its last commit or rollback (remote ones are "issuing";
        the node's own placement of a shard or a reference table runs its command locally)."""
        pid = _PID.search(line)
        if pid is None:
            return
        if _TRANSACTION_END.search(line):
            self.open_commands.pop(pid.group(1), None)  # a pooled connection's next transaction starts clean
        elif ("issuing" in line or "executing the command locally:" in line) and not _BOOKKEEPING.search(line):
            command = re.split(r"issuing|executing the command locally:", line, maxsplit=1)[1].strip()[:160]
            commands = self.open_commands.setdefault(pid.group(1), [])
            commands.append(command)
            del commands[:-200]  # a long transaction (an import) keeps its latest commands

    def context(self, line: str) -> str:
        """The commands the backend of a split line ran in its transaction so far: what caused it."""
        pid = _PID.search(line)
        commands = self.open_commands.get(pid.group(1), []) if pid else []
        return f" (after: {' | '.join(commands)})" if commands else ""

    def new_multi_shard_statements(self) -> list[str]:
        lines = self.read_new_lines()
        found: list[str] = []
        allowed_backends: set[str] = set()  # ran an allow-listed multi-shard statement (a cron's transaction)
        for i, line in enumerate(lines):
            if _SPLIT.search(line):
                context = self.context(line)
                pid = _PID.search(line)
                # A write to a reference table commits on every node by design (two-phase commit):
                # rare admin writes and the throttled record of an API key's last use. A cron's
                # transaction that ran an allowed multi-shard statement commits on many nodes too.
                if (
                    not _REFERENCE_WRITE.search(context)
                    and not (pid and pid.group(1) in allowed_backends)
                    and not any(fragment in context for fragment in ALLOWED_SPLITS)
                ):
                    found.append(self._named(line.strip()[:200] + context))
                continue
            self.follow(line)
            if not _MULTI_TASK.search(line):
                continue
            statement, where = _statement_of(lines, i)
            if not any(fragment in statement for fragment in ALLOWED_MULTI_SHARD):
                found.append(self._named((statement or line) + where))
            elif pid_match := _PID.search(line):
                allowed_backends.add(pid_match.group(1))
        return found

    def _named(self, finding: str) -> str:
        # A worker's finding says so: it ran there (a delegated function's body, a pool on a worker).
        return finding if self.name == COORDINATOR else f"[{self.name}] {finding}"


def _statement_of(lines: list[str], i: int) -> tuple[str, str]:
    """The statement logged after the multi-task warning at ``lines[i]`` (``log_min_error_statement``),
    and where in it the warning arose when inside a function (its ``CONTEXT``, e.g. a delegated
    function's body on a worker, whose STATEMENT is only the call)."""
    statement, where = "", ""
    pid = _PID.search(lines[i])
    for j in range(i + 1, min(i + 7, len(lines))):
        follower = lines[j]
        other = _PID.search(follower)
        if pid and other and other.group(1) != pid.group(1):
            continue  # another backend's line interleaved
        context = _CONTEXT.search(follower)
        if context and not where:
            where = f" (in: {context.group(1)[:160]})"
        match = _STATEMENT.search(follower)
        if match:
            statement = match.group(1)
            # A statement spans lines until the next log line (which starts with a prefix).
            for more in lines[j + 1 :]:
                if re.match(r"^\d{4}-\d\d-\d\d |^(?:WARNING|NOTICE|ERROR|LOG|STATEMENT|DETAIL):", more):
                    break
                statement += " " + more.strip()
            break
    return statement, where


@dataclass
class ShardGuard:
    """Reads every node's log (the coordinator's and each worker's) from where the previous test
    left it: a statement runs on a worker when a pool points there (any node) or a distributed
    function is delegated to the worker holding its tenant's shard group."""

    nodes: list[NodeLog]
    #: The cluster whose workers it follows: one added later (online growth) is read from then on.
    cluster: CitusCluster | None = None
    seen: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        """The coordinator's log."""
        return self.nodes[0].log_path

    def skip_to_end(self) -> None:
        # The skipped lines are still followed for the transactions they open: one that began before
        # the test (the session app's background record of a key's last use, from the previous test
        # or a fixture) may commit inside it, and its commands are its cause (docs/scaling.md).
        self._add_new_workers()
        for node in self.nodes:
            for line in node.read_new_lines():
                node.follow(line)

    def new_multi_shard_statements(self) -> list[str]:
        self._add_new_workers()
        found = [finding for node in self.nodes for finding in node.new_multi_shard_statements()]
        self.seen.extend(found)
        return found

    def _add_new_workers(self) -> None:
        if self.cluster is None:
            return
        known = {node.log_path for node in self.nodes}
        for worker in self.cluster.workers:
            path = worker.data_dir / "postgres.log"
            if path not in known:
                # Read from its first line: a node added during a test served that test already.
                configure_node_logging(worker)
                self.nodes.append(NodeLog(worker.data_dir.name, path))


COORDINATOR = "coordinator"

#: log_line_prefix of the test cluster (start()): "<time> [<pid>] <backend type>|<application name>: ".
#: A flagged line then says whether a client (and which: the service's pools, psql, Citus' own
#: rebalancer) or a Citus background process committed; in the strict runs every two-phase commit
#: came from a client backend (docs/scaling.md), so no background process is allow-listed.
LOG_LINE_PREFIX = "%m [%p] %b|%a: "


_REFERENCE_WRITE = re.compile(r"(?:INSERT INTO|UPDATE|DELETE FROM) public\.(?:tenants|api_keys)_\d+")
_PID = re.compile(r"\[(\d+)\]")
_BOOKKEEPING = re.compile(r"issuing (?:BEGIN|PREPARE|COMMIT|ROLLBACK|SELECT assign_distributed)")


_TRANSACTION_END = re.compile(r"issuing (?:COMMIT|ROLLBACK)")


#: The session's guard (one per session: the plugin module is imported once).
_guards: list[ShardGuard] = []


def install_guard(cluster: CitusCluster) -> ShardGuard:
    # The nodes present now (start() configured them); one added later is configured when first seen.
    nodes = [NodeLog(COORDINATOR, cluster.coordinator.data_dir / "postgres.log")]
    nodes += [NodeLog(worker.data_dir.name, worker.data_dir / "postgres.log") for worker in cluster.workers]
    guard = ShardGuard(nodes, cluster)
    guard.skip_to_end()
    _guards[:] = [guard]
    return guard


#: The session's Citus cluster, its directory, and the servers list the session stops at its end.
_clusters: list[tuple[CitusCluster, Path, list[EmbeddedServer]]] = []


def current_cluster() -> tuple[CitusCluster, Path, list[EmbeddedServer]] | None:
    return _clusters[0] if _clusters else None


def current_guard() -> ShardGuard | None:
    return _guards[0] if _guards else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    guard = current_guard()
    if guard is not None:
        guard.skip_to_end()  # fixtures' setup (factories, other tenants) is not the request path
    result = yield
    if guard is not None:
        statements = guard.new_multi_shard_statements()
        if statements:
            listing = "\n".join(f"  - {s[:400]}" for s in dict.fromkeys(statements))
            pytest.fail(
                f"{len(statements)} multi-shard (or, strict, split) statement(s) on Citus outside the allow-list "
                f"(tests/citus_cluster.py):\n{listing}",
                pytrace=False,
            )
    return result


def start(root: Path, started: list[EmbeddedServer]) -> str:
    """Start the cluster for the session (building Citus once per machine), migrate it, arm the guard."""
    from app.embedded.citus import start_citus_cluster
    from db.migrate import upgrade

    cluster = start_citus_cluster(root, fsync=False)
    started.extend([cluster.coordinator, *cluster.workers])
    _clusters[:] = [(cluster, root, started)]
    upgrade(cluster.url)
    # New sessions (the test pools open after this) log every multi-task statement with its text.
    settings = {"citus.multi_task_query_log_level": "warning", "log_min_error_statement": "warning"}
    if os.environ.get("TEST_CITUS_STRICT") == "1":
        # Stricter: also fail statements that Citus splits into subplans (intermediate results) or
        # commits with two-phase commit, which multi_task_query_log_level does not see because
        # each piece is one task (the append is such a statement today: docs/scaling.md).
        settings |= {"citus.log_remote_commands": "on", "citus.log_local_commands": "on", "log_min_messages": "notice"}
    _database_settings.clear()
    _database_settings.update(settings)
    # Citus propagates ALTER DATABASE … SET to the workers, and to a node added later when it is
    # activated; configure_node_logging checks each node has them.
    _psql_coordinator(
        cluster.url,
        "".join(f"ALTER DATABASE conversations SET {name} = '{value}';" for name, value in settings.items()),
    )
    for server in [cluster.coordinator, *cluster.workers]:
        configure_node_logging(server)
    install_guard(cluster)
    # The hot store on a 3-master Redis Cluster too (pub/sub and arq stay on the single Redis, as in
    # production: docs/scaling.md). Every Settings() the suites build reads it from the environment.
    # TEST_REDIS_CLUSTER=0: Citus alone.
    if os.environ.get("TEST_REDIS_CLUSTER", "1") == "0":
        return cluster.url
    from app.embedded.redis_cluster import start_redis_cluster

    redis_cluster = start_redis_cluster(root / "redis-cluster")
    started.extend(redis_cluster.nodes)
    os.environ["REDIS_CLUSTER_NODES"] = redis_cluster.seeds
    return cluster.url


#: The database settings the guard reads the logs by (start()); every node must have them.
_database_settings: dict[str, str] = {}


def configure_node_logging(server: EmbeddedServer) -> None:
    """Make one node log what the guard reads: its lines name their backend's type and application
    (a flagged commit says which process made it; a reload applies it to running processes), and its
    database has the guard's settings (set locally only if Citus did not propagate them)."""
    import asyncio

    async def run() -> None:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute(f"ALTER SYSTEM SET log_line_prefix = '{LOG_LINE_PREFIX}'")
            await conn.execute("SELECT pg_reload_conf()")
            rows = await conn.fetch(
                "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = current_database() AND s.setrole = 0"
            )
            present = {row[0] for row in rows}
            missing = {k: v for k, v in _database_settings.items() if f"{k}={v}" not in present}
            if missing:
                # Local only: the coordinator owns the cluster-wide DDL.
                await conn.execute("SET citus.enable_ddl_propagation = off")
                dbname = await conn.fetchval("SELECT quote_ident(current_database())")
                for name, value in missing.items():
                    await conn.execute(f"ALTER DATABASE {dbname} SET {name} = '{value}'")
        finally:
            await conn.close()

    # On a thread of its own: the guard may find a new worker from inside a test's running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, run()).result()


def _psql_coordinator(url: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.asynccontextmanager
async def shards_on(port: int, *tables: str) -> AsyncIterator[tuple[asyncpg.Connection, list[str]]]:
    """A connection to one node with its shard tables visible, and the names of its shards of
    `tables` (old copies a move left behind included): to see where rows physically are."""
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/conversations")
    try:
        await conn.execute("SET citus.override_table_visibility = off")
        pattern = "^(" + "|".join(tables) + ")_[0-9]+$"
        rows = await conn.fetch("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ $1", pattern)
        yield conn, [row["relname"] for row in rows]
    finally:
        await conn.close()
