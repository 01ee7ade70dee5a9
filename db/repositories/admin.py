"""SQL for the admin API: tenant settings, dead letters, CRM deliveries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from db.repositories.crm import OUTBOX_COLUMNS
from db.session import Connection

_TENANT_COLUMNS = "tenant_id, name, settings, created_at, updated_at"


async def tenant_for_update(conn: Connection, tenant_id: str) -> asyncpg.Record | None:
    """The tenant row, locked until the transaction ends (settings are read, changed, written)."""
    return await conn.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant_id)


async def tenant(conn: Connection, tenant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1", tenant_id)


async def write_settings(
    conn: Connection,
    tenant_id: str,
    *,
    set_name: bool,
    name: str | None,
    patch: dict[str, Any],
    remove: list[str],
) -> asyncpg.Record | None:
    """Merge `patch` into the settings, drop the `remove` keys, and (with set_name) set the name."""
    return await conn.fetchrow(
        f"""
        UPDATE tenants
        SET name = CASE WHEN $2 THEN $3 ELSE name END,
            settings = (settings || $4::jsonb) - $5::text[],
            -- not clock_timestamp(): Citus refuses volatile functions in UPDATEs (docs/scaling.md)
            updated_at = statement_timestamp()
        WHERE tenant_id = $1
        RETURNING {_TENANT_COLUMNS}
        """,
        tenant_id,
        set_name,
        name,
        patch,
        remove,
    )


async def all_cors_origins(conn: Connection) -> list[tuple[str, str]]:
    """(origin, tenant) for every origin a tenant allows (preflights carry no credentials)."""
    rows = await conn.fetch(
        "SELECT jsonb_array_elements_text(settings->'cors_origins') AS origin, tenant_id FROM tenants "
        "WHERE jsonb_typeof(settings->'cors_origins') = 'array'"
    )
    return [(r["origin"], r["tenant_id"]) for r in rows]


# --- dead letters ----------------------------------------------------------------------------------

_LETTER_COLUMNS = "tenant_id, id, kind, action_type, action_id, correlation_id, error, envelope, failed_at, replayed_at"


async def insert_dead_letter(conn: Connection, tenant_id: str, id: uuid.UUID, letter: dict[str, Any]) -> bool:
    """Keep a dead letter for its tenant, only when that tenant exists; idempotent by id.

    Two statements on this rare path: `INSERT … SELECT … WHERE EXISTS (tenants)` is an INSERT … SELECT
    that Citus runs through the coordinator (COPY and two-phase commit), a VALUES insert is routed."""
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)", tenant_id):
        return False
    status = await conn.execute(
        """
        INSERT INTO dead_letters (tenant_id, id, kind, action_type, action_id, correlation_id, error, envelope)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)
        ON CONFLICT (tenant_id, id) DO NOTHING
        """,
        tenant_id,
        id,
        letter["kind"],
        letter.get("action_type"),
        letter.get("action_id"),
        letter.get("correlation_id"),
        letter.get("error"),
        letter.get("envelope"),
    )
    return bool(status.endswith(" 1"))


async def dead_letter_page(
    conn: Connection, tenant_id: str, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[asyncpg.Record]:
    """Newest first, keyset on (failed_at, id)."""
    if after is None:
        return await conn.fetch(
            f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE tenant_id = $1 "
            "ORDER BY failed_at DESC, id DESC LIMIT $2",
            tenant_id,
            limit,
        )
    return await conn.fetch(
        f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE tenant_id = $1 AND (failed_at, id) < ($2, $3) "
        "ORDER BY failed_at DESC, id DESC LIMIT $4",
        tenant_id,
        after[0],
        after[1],
        limit,
    )


async def dead_letter_for_update(conn: Connection, tenant_id: str, id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE tenant_id = $1 AND id = $2 FOR UPDATE", tenant_id, id
    )


async def mark_replayed(conn: Connection, tenant_id: str, id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"UPDATE dead_letters SET replayed_at = statement_timestamp() WHERE tenant_id = $1 AND id = $2 "
        f"RETURNING {_LETTER_COLUMNS}",
        tenant_id,
        id,
    )
    assert row is not None
    return row


# --- CRM deliveries --------------------------------------------------------------------------------


async def delivery_page(
    conn: Connection, tenant_id: str, status: str | None, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[asyncpg.Record]:
    """The tenant's outbox rows, newest first, keyset on (created_at, id), optionally by status."""
    return await conn.fetch(
        f"""
        SELECT {OUTBOX_COLUMNS} FROM crm_outbox
        WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
          AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT $5
        """,
        tenant_id,
        status,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def requeue_delivery(conn: Connection, tenant_id: str, id: uuid.UUID) -> asyncpg.Record:
    """A delivery pending and due now; a failed one starts its attempts from zero again. A sender
    holding it keeps its lease (no second concurrent POST)."""
    row = await conn.fetchrow(
        f"""
        UPDATE crm_outbox
        SET attempts = CASE WHEN status = 'failed' THEN 0 ELSE attempts END,
            status = 'pending', next_attempt_at = statement_timestamp(), updated_at = statement_timestamp()
        WHERE tenant_id = $1 AND id = $2
        RETURNING {OUTBOX_COLUMNS}
        """,
        tenant_id,
        id,
    )
    assert row is not None
    return row
