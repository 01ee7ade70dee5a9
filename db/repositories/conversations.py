"""SQL for conversations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from app.models import Conversation, ConversationFilter, ConversationOrder
from db.repositories import records
from db.repositories.records import CONVERSATION_COLUMNS
from db.session import Connection

_INSERT = f"""
INSERT INTO conversations (tenant_id, id, session_id, user_id, agent_id, channel, title, tags, metadata,
                           created_at, updated_at, last_activity_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, clock_timestamp(), clock_timestamp(), clock_timestamp())
ON CONFLICT (tenant_id, session_id) DO NOTHING
RETURNING {CONVERSATION_COLUMNS}
"""


async def insert(
    conn: Connection,
    tenant_id: str,
    *,
    session_id: str,
    user_id: str | None,
    agent_id: str | None,
    channel: str | None,
    title: str | None,
    tags: list[str],
    metadata: dict[str, Any],
) -> Conversation | None:
    """Insert, or None when the sessionId is taken (the caller decides what that means)."""
    row = await conn.fetchrow(
        _INSERT, tenant_id, uuid.uuid4(), session_id, user_id, agent_id, channel, title, tags, metadata
    )
    return records.conversation(row) if row else None


async def get(
    conn: Connection,
    tenant_id: str,
    *,
    id: uuid.UUID | None = None,
    session_id: str | None = None,
    for_update: bool = False,
) -> Conversation | None:
    lock = " FOR UPDATE" if for_update else ""
    if id is not None:
        row = await conn.fetchrow(
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = $2{lock}",
            tenant_id,
            id,
        )
    else:
        row = await conn.fetchrow(
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND session_id = $2{lock}",
            tenant_id,
            session_id,
        )
    return records.conversation(row) if row else None


async def get_many(conn: Connection, tenant_id: str, ids: list[uuid.UUID]) -> list[Conversation]:
    rows = await conn.fetch(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
        tenant_id,
        ids,
    )
    return [records.conversation(r) for r in rows]


_ORDER = {
    ConversationOrder.LAST_ACTIVITY_DESC: ("last_activity_at", "DESC"),
    ConversationOrder.CREATED_AT_DESC: ("created_at", "DESC"),
    ConversationOrder.CREATED_AT_ASC: ("created_at", "ASC"),
}


class Where:
    """Builds a parameterised WHERE clause; values never touch the SQL text.

    Templates name the table alias `{a}` and the parameter `{p}`.
    """

    def __init__(self, tenant_id: str, alias: str = "") -> None:
        self.alias = f"{alias}." if alias else ""
        self.clauses = [f"{self.alias}tenant_id = $1"]
        self.args: list[Any] = [tenant_id]

    def add(self, template: str, *values: Any) -> None:
        params = []
        for value in values:
            self.args.append(value)
            params.append(f"${len(self.args)}")
        self.clauses.append(template.format(*params, a=self.alias, p=params[0] if params else ""))

    def param(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    @property
    def sql(self) -> str:
        return " AND ".join(self.clauses)


def filtered(tenant_id: str, f: ConversationFilter, alias: str = "") -> Where:
    """The conversation filter over the conversations table (aliased as `alias`)."""
    where = Where(tenant_id, alias)
    if f.user_id is not None:
        where.add("{a}user_id = {p}", f.user_id)
    if f.agent_id is not None:
        where.add("{a}agent_id = {p}", f.agent_id)
    if f.status is not None:
        where.add("{a}status = {p}", f.status.value)
    if f.tags:
        where.add("{a}tags @> {p}::text[]", f.tags)
    if f.created_from is not None:
        where.add("{a}created_at >= {p}", f.created_from)
    if f.created_to is not None:
        where.add("{a}created_at < {p}", f.created_to)
    if f.metadata:
        where.add("{a}metadata @> {p}::jsonb", f.metadata)
    return where


async def list_page(
    conn: Connection,
    tenant_id: str,
    f: ConversationFilter,
    order: ConversationOrder,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[Conversation]:
    """One keyset page (limit rows; ask for one more to learn if a next page exists)."""
    column, direction = _ORDER[order]
    where = filtered(tenant_id, f)
    if after is not None:
        op = "<" if direction == "DESC" else ">"
        where.add(f"({column}, id) {op} ({{}}, {{}})", *after)
    limit_param = where.param(limit)
    sql = (
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE {where.sql} "
        f"ORDER BY {column} {direction}, id {direction} LIMIT {limit_param}"
    )
    return [records.conversation(r) for r in await conn.fetch(sql, *where.args)]


async def count(conn: Connection, tenant_id: str, f: ConversationFilter, cap: int | None = None) -> int:
    """Conversations matching the filter; with a cap, counting stops after cap + 1 rows (so a result
    above cap means "more than cap") and the cost is bounded whatever the tenant's size."""
    where = filtered(tenant_id, f)
    if cap is None:
        value = await conn.fetchval(f"SELECT count(*) FROM conversations WHERE {where.sql}", *where.args)
    else:
        limit = where.param(cap + 1)
        value = await conn.fetchval(
            f"SELECT count(*) FROM (SELECT 1 FROM conversations WHERE {where.sql} LIMIT {limit}) AS capped",
            *where.args,
        )
    return int(value)


async def update(
    conn: Connection,
    tenant_id: str,
    id: uuid.UUID,
    *,
    title: str | None,
    set_title: bool,
    tags: list[str] | None,
    metadata_patch: dict[str, Any] | None,
    status: str | None,
    closed_reason: str | None = None,
) -> Conversation | None:
    row = await conn.fetchrow(
        f"""
        WITH clock AS (SELECT statement_timestamp() AS now)  -- stable: routed whole on Citus
        UPDATE conversations SET
            title = CASE WHEN $3 THEN $4 ELSE title END,
            tags = COALESCE($5::text[], tags),
            metadata = CASE WHEN $6::jsonb IS NULL THEN metadata ELSE metadata || $6::jsonb END,
            status = COALESCE($7, status),
            -- closed_at equals updated_at exactly when this statement closed it (one clock read).
            closed_at = CASE WHEN $7 IS NOT NULL AND $7 <> 'active' AND status = 'active'
                             THEN (SELECT now FROM clock)
                             WHEN $7 = 'active' THEN NULL ELSE closed_at END,
            close_reason = CASE WHEN $7 = 'active' THEN NULL
                                WHEN $7 IS NOT NULL AND $7 <> 'active' AND status = 'active' THEN $8
                                ELSE close_reason END,
            updated_at = (SELECT now FROM clock)
        WHERE tenant_id = $1 AND id = $2
        RETURNING {CONVERSATION_COLUMNS}
        """,
        tenant_id,
        id,
        set_title,
        title,
        tags,
        metadata_patch,
        status,
        closed_reason,
    )
    return records.conversation(row) if row else None


async def close(conn: Connection, tenant_id: str, id: uuid.UUID, reason: str | None) -> Conversation | None:
    """Close an active conversation; None when it was not active (idempotence is the caller's)."""
    row = await conn.fetchrow(
        f"""
        UPDATE conversations
        -- statement_timestamp(): Citus refuses volatile functions in UPDATEs of distributed tables
        SET status = 'closed', closed_at = statement_timestamp(), close_reason = $3, updated_at = statement_timestamp()
        WHERE tenant_id = $1 AND id = $2 AND status = 'active'
        RETURNING {CONVERSATION_COLUMNS}
        """,
        tenant_id,
        id,
        reason,
    )
    return records.conversation(row) if row else None


async def advance(conn: Connection, tenant_id: str, id: uuid.UUID, count: int, tokens: int) -> Conversation:
    """Reserve `count` seqs and add to the counters (the batch append; the row is locked)."""
    row = await conn.fetchrow(
        f"""
        WITH clock AS (SELECT statement_timestamp() AS now)  -- stable: routed whole on Citus
        UPDATE conversations
        SET last_seq = last_seq + $3,
            message_count = message_count + $3,
            token_count = token_count + $4,
            last_message_at = GREATEST((SELECT now FROM clock), last_message_at),
            last_activity_at = GREATEST((SELECT now FROM clock), last_message_at),
            updated_at = (SELECT now FROM clock)
        WHERE tenant_id = $1 AND id = $2
        RETURNING {CONVERSATION_COLUMNS}
        """,
        tenant_id,
        id,
        count,
        tokens,
    )
    assert row is not None, "advance() runs under the row lock of a conversation that exists"
    return records.conversation(row)


async def idle_before(conn: Connection, tenant_id: str, cutoff: datetime) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM conversations WHERE tenant_id = $1 AND status = 'active' AND last_activity_at < $2",
        tenant_id,
        cutoff,
    )
    return [r["id"] for r in rows]
