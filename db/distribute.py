"""Distribute the schema on Citus: every tenant-scoped table by ``tenant_id``, co-located.

Data-driven on purpose: any table with a ``tenant_id`` column is distributed by it, so a table a
migration adds tomorrow (a rollup, dead letters, summaries) is covered without touching this file.
``migrate`` (db/migrate.py) calls it after ``alembic upgrade`` on a database that has the ``citus``
extension; on plain Postgres it does nothing, so the same migration files serve both.

Why this shape:
- Co-location with ``conversations`` puts all rows of a tenant (conversation, messages, sources,
  state, outbox, action log, audit…) on the same shard group: joins and foreign keys stay local and a
  statement with ``tenant_id = $1`` is routed to one worker.
- ``tenants`` and ``api_keys`` are reference tables (a copy on every node): they are small, written
  rarely (admin), and ``api_keys`` is looked up by ``key_hash`` before the tenant is known (auth), so
  distributing it by tenant would make every authentication a multi-shard query, and its unique
  ``key_hash`` could not be enforced across shards.
- Tables are distributed parents first (foreign-key order): Citus accepts a foreign key between
  distributed tables only when both are distributed and co-located.
"""

from __future__ import annotations

import logging

import asyncpg

from db import citus_shard_functions
from db.citus_triggers import rewrite_for_shards
from db.session import has_citus

log = logging.getLogger("conversation_service")

#: Small global tables: a copy on every node (see the module docstring).
REFERENCE_TABLES: tuple[str, ...] = ("tenants", "api_keys")
#: Functions Citus delegates whole to the worker of the shard group their argument names (by name:
#: the distribution argument). append_message is the append (migration 9e4b7c2d1f60), history_page
#: the history page (1fd9a71b989d).
DISTRIBUTED_FUNCTIONS: dict[str, str] = {"append_message": "p_tenant_id", "history_page": "p_tenant_id"}
#: The table every tenant-scoped table is co-located with.
ANCHOR = "conversations"
DISTRIBUTION_COLUMN = "tenant_id"


# Tables of the schema (public) that Citus does not manage yet, with whether they have tenant_id.
_UNMANAGED = """
SELECT c.relname AS name,
       EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attname = $1 AND NOT a.attisdropped) AS tenant_scoped
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.oid)
"""

# (referencing, referenced) pairs among public tables: parents must be distributed first.
_FOREIGN_KEYS = """
SELECT src.relname AS child, dst.relname AS parent
FROM pg_constraint k
JOIN pg_class src ON src.oid = k.conrelid
JOIN pg_class dst ON dst.oid = k.confrelid
JOIN pg_namespace n ON n.oid = src.relnamespace
WHERE k.contype = 'f' AND n.nspname = 'public' AND src.oid <> dst.oid
"""

#: Tables of the schema that Citus does not manage and have tenant_id: must be empty on Citus.
UNDISTRIBUTED_TENANT_TABLES = """
SELECT c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p
                  WHERE p.logicalrelid = c.oid AND (p.partmethod = 'h' OR c.relname = ANY($1::text[])))
ORDER BY 1
"""


def _parents_first(names: list[str], edges: list[tuple[str, str]]) -> list[str]:
    pending = set(names)
    ordered: list[str] = []
    # The anchor goes first when pending: the others are co-located with it.
    if ANCHOR in pending:
        ordered.append(ANCHOR)
        pending.discard(ANCHOR)
    while pending:
        ready = sorted(t for t in pending if not any(c == t and p in pending for c, p in edges))
        if not ready:  # a cycle of foreign keys: Citus will say what it refuses
            ready = sorted(pending)
        ordered.extend(ready)
        pending.difference_update(ready)
    return ordered


async def distribute(conn: asyncpg.Connection) -> list[str]:
    """Make every unmanaged table reference or distributed; returns what it changed. Idempotent."""
    if not await has_citus(conn):
        return []
    rows = await conn.fetch(_UNMANAGED, DISTRIBUTION_COLUMN)
    unmanaged = {r["name"]: bool(r["tenant_scoped"]) for r in rows}
    edges = [(r["child"], r["parent"]) for r in await conn.fetch(_FOREIGN_KEYS)]
    changed: list[str] = []
    # The stats_daily rollup triggers go to the shards with their tables (db/citus_triggers.py).
    await conn.execute("SET citus.enable_unsafe_triggers = on")
    for name in REFERENCE_TABLES:
        if name in unmanaged:
            await conn.execute("SELECT create_reference_table($1::regclass)", name)
            changed.append(f"{name} (reference)")
    anchor_distributed = ANCHOR not in unmanaged and await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1) AND partmethod = 'h')",
        ANCHOR,
    )
    tenant_tables = [n for n, scoped in unmanaged.items() if scoped and n not in REFERENCE_TABLES]
    for name in _parents_first(tenant_tables, edges):
        colocate = ANCHOR if anchor_distributed else "default"
        # One transaction per table: create_distributed_table copies existing rows to the shards.
        async with conn.transaction():
            await conn.execute(
                "SELECT create_distributed_table($1::regclass, $2, colocate_with => $3)",
                name,
                DISTRIBUTION_COLUMN,
                colocate,
            )
        anchor_distributed = anchor_distributed or name == ANCHOR
        changed.append(name)
    for name in sorted(n for n, scoped in unmanaged.items() if not scoped and n not in REFERENCE_TABLES):
        # alembic_version: read and written by migrations only, on the coordinator.
        log.debug("table %s has no tenant_id: left on the coordinator", name)
    changed.extend(f"{f} (shard-local)" for f in await rewrite_for_shards(conn))
    for function, argument in DISTRIBUTED_FUNCTIONS.items():
        oid = await conn.fetchval("SELECT to_regproc($1)::oid", function)
        delegated = oid is not None and await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_object WHERE classid = 'pg_proc'::regclass AND objid = $1 "
            "AND distribution_argument_index IS NOT NULL)",
            oid,
        )
        if oid is not None and not delegated:
            await conn.execute(
                "SELECT create_distributed_function($1::oid::regprocedure, $2, colocate_with => $3)",
                oid,
                argument,
                ANCHOR,
            )
            changed.append(f"{function}() (delegated by {argument})")
    # After delegation: the dispatcher replaces append_message in place (db/citus_shard_functions.py).
    changed.extend(await citus_shard_functions.build(conn))
    if changed:
        log.info("citus: distributed %s", ", ".join(changed))
    return changed


async def distribute_url(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return await distribute(conn)
    finally:
        await conn.close()
