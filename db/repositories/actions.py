"""SQL for the action log: the answer of each domain action that wrote something, by action_id."""

from __future__ import annotations

from typing import Any

from db.session import Connection


async def get(conn: Connection, tenant_id: str, action_id: str) -> Any | None:
    return await conn.fetchval(
        "SELECT response FROM action_log WHERE tenant_id = $1 AND action_id = $2", tenant_id, action_id
    )


async def insert(conn: Connection, tenant_id: str, action_id: str, action_type: str, response: Any) -> None:
    """Record an answer; a concurrent run of the same action makes this raise UniqueViolationError."""
    await conn.execute(
        "INSERT INTO action_log (tenant_id, action_id, action_type, response) VALUES ($1, $2, $3, $4::jsonb)",
        tenant_id,
        action_id,
        action_type,
        response,
    )
