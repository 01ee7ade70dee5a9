"""SQL for the audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from db.session import Connection

_COLUMNS = "id, at, actor, action, details"


async def insert(
    conn: Connection, tenant_id: str, actor: str, action: str, details: dict[str, Any] | None
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO audit_log (tenant_id, id, actor, action, details) VALUES ($1, $2, $3, $4, $5::jsonb) "
        f"RETURNING {_COLUMNS}",
        tenant_id,
        uuid.uuid4(),
        actor,
        action,
        details,
    )
    assert row is not None
    return row


async def page(
    conn: Connection, tenant_id: str, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[asyncpg.Record]:
    """Newest first, keyset on (at, id)."""
    if after is None:
        return await conn.fetch(
            f"SELECT {_COLUMNS} FROM audit_log WHERE tenant_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
            tenant_id,
            limit,
        )
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM audit_log WHERE tenant_id = $1 AND (at, id) < ($2, $3) "
        "ORDER BY at DESC, id DESC LIMIT $4",
        tenant_id,
        after[0],
        after[1],
        limit,
    )
