"""SQL for the action log: each domain action that wrote something, by action_id, with a hash
of the payload it was sent with and (for actions answered from the log) its answer."""

from __future__ import annotations

from typing import Any

import asyncpg

from db.session import Connection


async def get(conn: Connection, tenant_id: str, action_id: str) -> asyncpg.Record | None:
    """`payload_hash` and `response` of a logged action (either may be NULL)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT payload_hash, response FROM action_log WHERE tenant_id = $1 AND action_id = $2",
        tenant_id,
        action_id,
    )
    return row


async def claim(conn: Connection, tenant_id: str, action_id: str, action_type: str, payload_hash: str) -> bool:
    """Log the action before it runs; False when it is logged already. A concurrent run of the
    same action holds this row until it commits or rolls back, so the two never both run."""
    claimed: bool | None = await conn.fetchval(
        """INSERT INTO action_log (tenant_id, action_id, action_type, payload_hash) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, action_id) DO NOTHING RETURNING true""",
        tenant_id,
        action_id,
        action_type,
        payload_hash,
    )
    return bool(claimed)


async def set_response(conn: Connection, tenant_id: str, action_id: str, response: Any) -> None:
    await conn.execute(
        "UPDATE action_log SET response = $3::jsonb WHERE tenant_id = $1 AND action_id = $2",
        tenant_id,
        action_id,
        response,
    )
