"""SQL for tenants and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from db.session import Connection


async def ensure_tenant(conn: Connection, tenant_id: str, name: str | None) -> tuple[asyncpg.Record, bool]:
    """Create the tenant if missing; returns (row, created)."""
    row = await conn.fetchrow(
        "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING "
        "RETURNING tenant_id, name, settings, created_at",
        tenant_id,
        name,
    )
    if row is not None:
        return row, True
    existing = await conn.fetchrow(
        "SELECT tenant_id, name, settings, created_at FROM tenants WHERE tenant_id = $1", tenant_id
    )
    assert existing is not None
    return existing, False


async def get_tenant(conn: Connection, tenant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT tenant_id, name, settings, created_at FROM tenants WHERE tenant_id = $1", tenant_id
    )


async def update_settings(conn: Connection, tenant_id: str, patch: dict[str, Any]) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE tenants SET settings = settings || $2::jsonb WHERE tenant_id = $1 "
        "RETURNING tenant_id, name, settings, created_at",
        tenant_id,
        patch,
    )


_KEY_COLUMNS = "tenant_id, id, name, prefix, scopes, created_at, revoked_at, expires_at, last_used_at"


async def insert_key(
    conn: Connection,
    tenant_id: str,
    *,
    name: str | None,
    prefix: str,
    key_hash: str,
    scopes: list[str],
    expires_at: datetime | None = None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "INSERT INTO api_keys (tenant_id, id, name, prefix, key_hash, scopes, expires_at) "
        f"VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_KEY_COLUMNS}",
        tenant_id,
        uuid.uuid4(),
        name,
        prefix,
        key_hash,
        scopes,
        expires_at,
    )
    assert row is not None
    return row


async def list_keys(conn: Connection, tenant_id: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id", tenant_id)
    )


async def revoke_key(conn: Connection, key_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"UPDATE api_keys SET revoked_at = least(revoked_at, statement_timestamp()) WHERE id = $1 "
        f"RETURNING {_KEY_COLUMNS}",
        key_id,
    )


async def key_by_hash(conn: Connection, key_hash: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash)


async def keys_by_hashes(conn: Connection, key_hashes: list[str]) -> list[asyncpg.Record]:
    """Several keys in one statement (a WebSocket re-check of every live credential)."""
    return await conn.fetch(
        f"SELECT key_hash, {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ANY($1::text[])", key_hashes
    )


async def revoke_tenant_key(conn: Connection, tenant_id: str, key_id: uuid.UUID) -> asyncpg.Record | None:
    """Revoke one of the tenant's keys (another tenant's key id is not found)."""
    return await conn.fetchrow(
        # least() ignores a NULL: an earlier revocation wins. Citus refuses volatile functions in UPDATEs.
        f"UPDATE api_keys SET revoked_at = least(revoked_at, statement_timestamp()) WHERE tenant_id = $1 AND id = $2 "
        f"RETURNING {_KEY_COLUMNS}",
        tenant_id,
        key_id,
    )


async def touch_key(conn: Connection, key_id: uuid.UUID, min_interval_s: float) -> None:
    """Record a use of the key, unless one was recorded less than `min_interval_s` ago (by any process)."""
    await conn.execute(
        # statement_timestamp(): Citus refuses volatile functions in UPDATEs (api_keys is a reference table).
        "UPDATE api_keys SET last_used_at = statement_timestamp() WHERE id = $1 "
        "AND (last_used_at IS NULL OR last_used_at < statement_timestamp() - make_interval(secs => $2))",
        key_id,
        min_interval_s,
    )
