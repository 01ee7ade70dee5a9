"""SQL for tenant statistics over a time range [from, to) (either bound optional)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from db.session import Connection

_CONV_RANGE = (
    "c.tenant_id = $1 AND ($2::timestamptz IS NULL OR c.created_at >= $2) "
    "AND ($3::timestamptz IS NULL OR c.created_at < $3) AND ($4::text IS NULL OR c.agent_id = $4)"
)
_MSG_RANGE = (
    "m.tenant_id = $1 AND ($2::timestamptz IS NULL OR m.created_at >= $2) "
    "AND ($3::timestamptz IS NULL OR m.created_at < $3) AND ($4::text IS NULL OR c.agent_id = $4)"
)
_MSG_JOIN = "messages m JOIN conversations c ON c.tenant_id = m.tenant_id AND c.id = m.conversation_id"


async def conversations_by_status(
    conn: Connection, tenant_id: str, start: datetime | None, end: datetime | None, agent: str | None
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"""
            SELECT c.status, count(*) AS conversations, sum(c.message_count) AS messages,
                   count(c.closed_at) AS closed,
                   sum(extract(epoch FROM c.closed_at - c.created_at)) AS duration_seconds
            FROM conversations c WHERE {_CONV_RANGE} GROUP BY c.status
            """,
            tenant_id,
            start,
            end,
            agent,
        )
    )


async def messages_by_role(
    conn: Connection, tenant_id: str, start: datetime | None, end: datetime | None, agent: str | None
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"""
            SELECT m.role, count(*) AS messages, coalesce(sum(m.token_count), 0) AS tokens
            FROM {_MSG_JOIN} WHERE {_MSG_RANGE} GROUP BY m.role
            """,
            tenant_id,
            start,
            end,
            agent,
        )
    )


async def per_agent(
    conn: Connection, tenant_id: str, start: datetime | None, end: datetime | None, agent: str | None
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"""
            WITH convs AS (
                SELECT c.agent_id, count(*) AS conversations, sum(c.message_count) AS total_messages
                FROM conversations c WHERE {_CONV_RANGE} AND c.agent_id IS NOT NULL GROUP BY c.agent_id
            ), msgs AS (
                SELECT c.agent_id, count(*) AS messages, coalesce(sum(m.token_count), 0) AS tokens
                FROM {_MSG_JOIN} WHERE {_MSG_RANGE} AND c.agent_id IS NOT NULL GROUP BY c.agent_id
            )
            SELECT coalesce(convs.agent_id, msgs.agent_id) AS agent_id,
                   coalesce(convs.conversations, 0) AS conversations,
                   coalesce(convs.total_messages, 0) AS total_messages,
                   coalesce(msgs.messages, 0) AS messages,
                   coalesce(msgs.tokens, 0) AS tokens
            FROM convs FULL JOIN msgs ON convs.agent_id = msgs.agent_id
            ORDER BY 1
            """,
            tenant_id,
            start,
            end,
            agent,
        )
    )


async def daily(
    conn: Connection, tenant_id: str, start: datetime | None, end: datetime | None, agent: str | None
) -> list[asyncpg.Record]:
    """Per UTC day with any activity (the session's TimeZone is UTC)."""
    return list(
        await conn.fetch(
            f"""
            WITH convs AS (
                SELECT date_trunc('day', c.created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS conversations
                FROM conversations c WHERE {_CONV_RANGE} GROUP BY 1
            ), msgs AS (
                SELECT date_trunc('day', m.created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS messages,
                       coalesce(sum(m.token_count), 0) AS tokens
                FROM {_MSG_JOIN} WHERE {_MSG_RANGE} GROUP BY 1
            )
            SELECT coalesce(convs.day, msgs.day) AS day,
                   coalesce(convs.conversations, 0) AS conversations,
                   coalesce(msgs.messages, 0) AS messages,
                   coalesce(msgs.tokens, 0) AS tokens
            FROM convs FULL JOIN msgs ON convs.day = msgs.day
            ORDER BY 1
            """,
            tenant_id,
            start,
            end,
            agent,
        )
    )
