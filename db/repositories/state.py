"""SQL for conversation state (versioned key → JSON value)."""

from __future__ import annotations

import uuid
from typing import Any

from app.models import StateEntry
from db.repositories import records
from db.session import Connection

_COLUMNS = "conversation_id, key, value, version, updated_at"


async def get(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, key: str) -> StateEntry | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM conversation_state WHERE tenant_id = $1 AND conversation_id = $2 AND key = $3",
        tenant_id,
        conversation_id,
        key,
    )
    return records.state(row) if row else None


async def list_(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> list[StateEntry]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM conversation_state WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY key",
        tenant_id,
        conversation_id,
    )
    return [records.state(r) for r in rows]


async def list_many(
    conn: Connection, tenant_id: str, conversation_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[StateEntry]]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM conversation_state WHERE tenant_id = $1 AND conversation_id = ANY($2::uuid[]) "
        "ORDER BY conversation_id, key",
        tenant_id,
        conversation_ids,
    )
    result: dict[uuid.UUID, list[StateEntry]] = {cid: [] for cid in conversation_ids}
    for r in rows:
        result[r["conversation_id"]].append(records.state(r))
    return result


async def put(
    conn: Connection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    key: str,
    value: Any,
    expected_version: int | None,
) -> StateEntry | None:
    """Create (version 1) or overwrite (version + 1); None when the conversation is
    missing or `expected_version` does not hold (the caller tells which)."""
    if expected_version is not None and expected_version > 0:
        row = await conn.fetchrow(
            f"""
            UPDATE conversation_state SET value = $4::jsonb, version = version + 1, updated_at = clock_timestamp()
            WHERE tenant_id = $1 AND conversation_id = $2 AND key = $3 AND version = $5
            RETURNING {_COLUMNS}
            """,
            tenant_id,
            conversation_id,
            key,
            value,
            expected_version,
        )
    else:
        # expected_version 0 means "must not exist": the conflict arm then updates nothing.
        row = await conn.fetchrow(
            f"""
            INSERT INTO conversation_state AS s (tenant_id, conversation_id, key, value, version, updated_at)
            SELECT $1, $2, $3, $4::jsonb, 1, clock_timestamp()
            WHERE EXISTS (SELECT 1 FROM conversations WHERE tenant_id = $1 AND id = $2)
            ON CONFLICT (tenant_id, conversation_id, key) DO UPDATE
            SET value = EXCLUDED.value, version = s.version + 1, updated_at = clock_timestamp()
            WHERE $5::int IS NULL
            RETURNING {_COLUMNS}
            """,
            tenant_id,
            conversation_id,
            key,
            value,
            expected_version,
        )
    return records.state(row) if row else None


async def delete(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, key: str) -> bool:
    status = await conn.execute(
        "DELETE FROM conversation_state WHERE tenant_id = $1 AND conversation_id = $2 AND key = $3",
        tenant_id,
        conversation_id,
        key,
    )
    return bool(status.endswith(" 1"))
