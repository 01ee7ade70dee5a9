"""SQL for conversation state (versioned key → JSON value).

A deleted key stays as a tombstone row (`deleted`, value null) holding its last version: every
read below skips tombstones, and a write over one continues its version, so a key's version
never goes back across deletes (a client holding an old version cannot overwrite a newer value).
"""

from __future__ import annotations

import uuid
from typing import Any

from app.models import StateEntry
from db.repositories import records
from db.session import Connection

_COLUMNS = "conversation_id, key, value, version, updated_at"


async def get(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, key: str) -> StateEntry | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM conversation_state "
        "WHERE tenant_id = $1 AND conversation_id = $2 AND key = $3 AND NOT deleted",
        tenant_id,
        conversation_id,
        key,
    )
    return records.state(row) if row else None


async def list_(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> list[StateEntry]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM conversation_state "
        "WHERE tenant_id = $1 AND conversation_id = $2 AND NOT deleted ORDER BY key",
        tenant_id,
        conversation_id,
    )
    return [records.state(r) for r in rows]


async def list_many(
    conn: Connection, tenant_id: str, conversation_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[StateEntry]]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM conversation_state WHERE tenant_id = $1 AND conversation_id = ANY($2::uuid[]) "
        "AND NOT deleted ORDER BY conversation_id, key",
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
    """Create (version 1, or the tombstone's version + 1) or overwrite (version + 1); None when
    the conversation is missing or `expected_version` does not hold (the caller tells which)."""
    if expected_version is not None and expected_version > 0:
        row = await conn.fetchrow(
            f"""
            -- statement_timestamp(): Citus refuses volatile functions in UPDATEs of distributed tables
            UPDATE conversation_state SET value = $4::jsonb, version = version + 1, updated_at = statement_timestamp()
            WHERE tenant_id = $1 AND conversation_id = $2 AND key = $3 AND version = $5 AND NOT deleted
            RETURNING {_COLUMNS}
            """,
            tenant_id,
            conversation_id,
            key,
            value,
            expected_version,
        )
    else:
        # expected_version 0 means "must not exist": the conflict arm then updates only a tombstone.
        row = await conn.fetchrow(
            f"""
            INSERT INTO conversation_state AS s (tenant_id, conversation_id, key, value, version, updated_at)
            -- FROM the conversation (not WHERE EXISTS): Citus pushes this INSERT ... SELECT down to
            -- the one shard group whole; with no FROM it plans it on the coordinator and fails.
            SELECT c.tenant_id, c.id, $3::text, $4::jsonb, 1, statement_timestamp()
            FROM conversations c WHERE c.tenant_id = $1 AND c.id = $2
            ON CONFLICT (tenant_id, conversation_id, key) DO UPDATE
            -- EXCLUDED.updated_at, not a function: Citus wants only immutable ones in DO UPDATE
            SET value = EXCLUDED.value, version = s.version + 1, updated_at = EXCLUDED.updated_at, deleted = false
            WHERE $5::int IS NULL OR s.deleted
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
    """Turn the key into a tombstone (its version + 1); False when there was no live key."""
    status = await conn.execute(
        """
        UPDATE conversation_state
        SET deleted = true, value = 'null'::jsonb, version = version + 1, updated_at = statement_timestamp()
        WHERE tenant_id = $1 AND conversation_id = $2 AND key = $3 AND NOT deleted
        """,
        tenant_id,
        conversation_id,
        key,
    )
    return bool(status.endswith(" 1"))
