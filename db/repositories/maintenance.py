"""SQL for the crons: which tenants have data, their settings, retention purges and pruning.

The crons work tenant by tenant (every statement below but the tenant listing filters by
tenant_id), so each one is an index range scan that would stay on one shard under Citus.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from db.session import Connection, has_citus

#: A loose index scan over a primary key that leads with tenant_id: one index probe per distinct
#: tenant, not a scan of every row.
_DISTINCT_TENANTS = """
WITH RECURSIVE t AS (
    (SELECT tenant_id FROM {table} ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT x.tenant_id FROM {table} x WHERE x.tenant_id > t.tenant_id ORDER BY x.tenant_id LIMIT 1)
    FROM t WHERE t.tenant_id IS NOT NULL
)
SELECT tenant_id FROM t WHERE tenant_id IS NOT NULL
"""
_TABLES = ("conversations", "crm_outbox", "action_log")


async def tenants_with_rows(conn: Connection, table: str) -> list[str]:
    """The tenants that have rows in `table` (one of conversations, crm_outbox, action_log)."""
    if table not in _TABLES:
        raise ValueError(f"not a tenant table: {table}")
    if await has_citus(conn):
        # Citus runs a recursive CTE only when it filters by tenant: a distributed DISTINCT instead
        # (each worker scans its shards' primary keys in parallel).
        return [r["tenant_id"] for r in await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}")]
    return [r["tenant_id"] for r in await conn.fetch(_DISTINCT_TENANTS.format(table=table))]


async def tenant_settings(conn: Connection, tenant_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch("SELECT tenant_id, settings FROM tenants WHERE tenant_id = ANY($1::text[])", tenant_ids)
    return {r["tenant_id"]: r["settings"] for r in rows}


async def active_among(conn: Connection, tenant_id: str, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM conversations WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND status = 'active'",
        tenant_id,
        ids,
    )
    return {r["id"] for r in rows}


async def prune_outbox(conn: Connection, tenant_id: str, cutoff: datetime) -> int:
    """Settled CRM deliveries last touched before `cutoff`. Pending ones are never pruned."""
    status = await conn.execute(
        "DELETE FROM crm_outbox WHERE tenant_id = $1 AND status <> 'pending' AND updated_at < $2", tenant_id, cutoff
    )
    return int(status.split()[-1])


async def prune_action_log(conn: Connection, tenant_id: str, cutoff: datetime) -> int:
    status = await conn.execute("DELETE FROM action_log WHERE tenant_id = $1 AND created_at < $2", tenant_id, cutoff)
    return int(status.split()[-1])
