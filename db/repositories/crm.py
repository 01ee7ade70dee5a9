"""SQL for the CRM outbox: one row per delivery, claimed by a job with a lease."""

from __future__ import annotations

import uuid

import asyncpg

from db.session import Connection, on_citus

OUTBOX_COLUMNS = (
    "tenant_id, id, conversation_id, trigger, status, attempts, last_error, next_attempt_at, locked_until, "
    "created_at, updated_at, delivered_at"
)


async def insert_if_configured(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, trigger: str
) -> asyncpg.Record | None:
    """A pending delivery, only when the tenant has a CRM webhook (one statement, in the caller's
    transaction); None when it has none."""
    if on_citus():
        # Two statements on Citus: an INSERT … SELECT reading `tenants` (a reference table) is planned
        # on the coordinator (intermediate result, two-phase commit). The read is local on the
        # coordinator; the insert is routed on the connection the close already holds.
        webhook = await conn.fetchval(
            "SELECT settings->>'crm_webhook_url' FROM tenants WHERE tenant_id = $1", tenant_id
        )
        return await insert(conn, tenant_id, conversation_id, trigger) if webhook else None
    return await conn.fetchrow(
        f"""
        INSERT INTO crm_outbox (tenant_id, id, conversation_id, trigger)
        SELECT $1, $2, $3, $4
        WHERE EXISTS (
            SELECT 1 FROM tenants WHERE tenant_id = $1 AND coalesce(settings->>'crm_webhook_url', '') <> ''
        )
        RETURNING {OUTBOX_COLUMNS}
        """,
        tenant_id,
        uuid.uuid4(),
        conversation_id,
        trigger,
    )


async def insert(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, trigger: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO crm_outbox (tenant_id, id, conversation_id, trigger) VALUES ($1, $2, $3, $4) "
        f"RETURNING {OUTBOX_COLUMNS}",
        tenant_id,
        uuid.uuid4(),
        conversation_id,
        trigger,
    )
    assert row is not None
    return row


async def get(conn: Connection, tenant_id: str, id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {OUTBOX_COLUMNS} FROM crm_outbox WHERE tenant_id = $1 AND id = $2", tenant_id, id
    )


async def latest(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, *, pending_only: bool = False
) -> asyncpg.Record | None:
    """The conversation's newest delivery (optionally: its newest pending one)."""
    status = " AND status = 'pending'" if pending_only else ""
    return await conn.fetchrow(
        f"SELECT {OUTBOX_COLUMNS} FROM crm_outbox WHERE tenant_id = $1 AND conversation_id = $2{status} "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        tenant_id,
        conversation_id,
    )


async def claim(conn: Connection, tenant_id: str, id: uuid.UUID, lease_s: float) -> asyncpg.Record | None:
    """Take a due, pending, unclaimed delivery for `lease_s` seconds and count the attempt.
    None when it is not due, already settled, or another sender holds it."""
    return await conn.fetchrow(
        f"""
        -- statement_timestamp(): Citus refuses volatile functions in UPDATEs of distributed tables
        UPDATE crm_outbox
        SET attempts = attempts + 1,
            locked_until = statement_timestamp() + make_interval(secs => $3),
            updated_at = statement_timestamp()
        WHERE tenant_id = $1 AND id = $2 AND status = 'pending' AND next_attempt_at <= statement_timestamp()
          AND (locked_until IS NULL OR locked_until < statement_timestamp())
        RETURNING {OUTBOX_COLUMNS}
        """,
        tenant_id,
        id,
        lease_s,
    )


async def settle(
    conn: Connection,
    tenant_id: str,
    id: uuid.UUID,
    *,
    status: str,
    error: str | None,
    retry_in_s: float | None = None,
) -> asyncpg.Record | None:
    """Record the outcome of an attempt: delivered, failed for good, or pending again in `retry_in_s`.
    The last error is kept after a later success: it says what the earlier attempts met."""
    return await conn.fetchrow(
        f"""
        -- The clock CTE: Citus allows no non-immutable function inside CASE, nor a stable one
        -- (timestamptz + interval) over a column, in UPDATEs of distributed tables.
        WITH clock AS (
            SELECT t AS now, t + make_interval(secs => coalesce($5::float8, 0)) AS retry_at
            FROM (SELECT statement_timestamp() AS t) c
        )
        UPDATE crm_outbox
        SET status = $3,
            last_error = coalesce($4, last_error),
            next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at
                                   ELSE clock.retry_at END,
            delivered_at = CASE WHEN $3 = 'delivered' THEN clock.now ELSE delivered_at END,
            locked_until = NULL,
            updated_at = clock.now
        FROM clock
        WHERE tenant_id = $1 AND id = $2
        RETURNING {OUTBOX_COLUMNS}
        """,
        tenant_id,
        id,
        status,
        error,
        retry_in_s,
    )


async def due(conn: Connection, limit: int) -> list[asyncpg.Record]:
    """Pending deliveries whose time has come and that nobody holds, across tenants: the sweep's
    safety net for a lost job. Reads only the partial index of pending rows."""
    return list(
        await conn.fetch(
            f"""
            SELECT {OUTBOX_COLUMNS} FROM crm_outbox
            WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()
              AND (locked_until IS NULL OR locked_until < clock_timestamp())
            ORDER BY next_attempt_at
            LIMIT $1
            """,
            limit,
        )
    )


#: The worker's backlog sample (public: a test EXPLAINs it).
DELIVERY_STATS_SQL = """
    SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END AS state,
           count(*) AS deliveries,
           extract(epoch FROM clock_timestamp() - min(created_at)) AS oldest_undelivered_s
    FROM crm_outbox
    WHERE status <> 'delivered'
    GROUP BY 1
"""


async def delivery_stats(conn: Connection) -> list[asyncpg.Record]:
    """Unsettled deliveries across tenants by state (`pending` never tried, `retrying` pending
    after a failed attempt, `failed` given up), with the oldest one's age in seconds. For the
    worker's metrics, sampled every few seconds: it reads ix_crm_outbox_unsettled, never the
    delivered rows kept for OUTBOX_RETENTION_DAYS."""
    return list(await conn.fetch(DELIVERY_STATS_SQL))
