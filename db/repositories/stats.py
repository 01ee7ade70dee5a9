"""SQL for tenant statistics over a time range [from, to) (either bound optional)."""

from __future__ import annotations

from datetime import date, datetime

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


# Every read returns facts of one shape: (day, agent_id, role, status) -> conversations,
# conversation_messages, closed, duration_seconds, messages, tokens. Conversation facts have role '',
# message facts status ''; agent '' is "no agent".
_EXACT_FACTS = f"""
SELECT (c.created_at AT TIME ZONE 'UTC')::date AS day, coalesce(c.agent_id, '') AS agent_id, '' AS role,
       c.status, count(*) AS conversations, sum(c.message_count) AS conversation_messages,
       count(c.closed_at) AS closed,
       coalesce(sum(extract(epoch FROM c.closed_at - c.created_at)), 0)::float8 AS duration_seconds,
       0::bigint AS messages, 0::bigint AS tokens
FROM conversations c WHERE {_CONV_RANGE} GROUP BY 1, 2, 4
UNION ALL
SELECT (m.created_at AT TIME ZONE 'UTC')::date, coalesce(c.agent_id, ''), m.role, '', 0, 0, 0, 0::float8,
       count(*), sum(m.token_count)
FROM {_MSG_JOIN} WHERE {_MSG_RANGE} GROUP BY 1, 2, 3
"""


async def exact_facts(
    conn: Connection, tenant_id: str, start: datetime | None, end: datetime | None, agent: str | None
) -> list[asyncpg.Record]:
    """Facts from the rows themselves: only for the partial days at the edges of a range (bounded by
    one day's writes), and the brute-force reference in tests."""
    return list(await conn.fetch(_EXACT_FACTS, tenant_id, start, end, agent))


async def rollup_facts(
    conn: Connection, tenant_id: str, first_day: date | None, end_day: date | None, agent: str | None
) -> list[asyncpg.Record]:
    """Facts of the whole UTC days [first_day, end_day) from the daily rollups, summed over shards in
    two groupings so that few rows travel: per (day, role, status) with agent_id NULL (totals and
    days), and per (agent_id, role, status) with day NULL (the agents)."""
    return list(
        await conn.fetch(
            """
            SELECT day, agent_id, role, status, sum(conversations)::bigint AS conversations,
                   sum(conversation_messages)::bigint AS conversation_messages, sum(closed)::bigint AS closed,
                   sum(duration_seconds) AS duration_seconds, sum(messages)::bigint AS messages,
                   sum(tokens)::bigint AS tokens
            FROM stats_daily
            WHERE tenant_id = $1 AND ($2::date IS NULL OR day >= $2) AND ($3::date IS NULL OR day < $3)
              AND ($4::text IS NULL OR agent_id = $4)
            GROUP BY GROUPING SETS ((day, role, status), (agent_id, role, status))
            HAVING sum(conversations) <> 0 OR sum(messages) <> 0
            """,
            tenant_id,
            first_day,
            end_day,
            agent,
        )
    )


async def tenants_with_shards(conn: Connection, before: date) -> list[str]:
    rows = await conn.fetch("SELECT DISTINCT tenant_id FROM stats_daily WHERE shard <> 0 AND day < $1", before)
    return [r["tenant_id"] for r in rows]


async def fold_shards(conn: Connection, tenant_id: str, before: date) -> int:
    """Sum the shards of a tenant's days before `before` into shard 0 (one statement, atomic). Shards
    only spread the row locks of concurrent writes to the current day; past days are read far more
    often than written, so they are kept as one row per key. A late write to a past day (a close, an
    import) simply lands in its shard again, to be folded next time. Returns the rows removed."""
    status = await conn.execute(
        """
        WITH moved AS (
            DELETE FROM stats_daily WHERE tenant_id = $1 AND day < $2 AND shard <> 0 RETURNING *
        ), summed AS (
            SELECT tenant_id, day, agent_id, role, status, sum(conversations) AS conversations,
                   sum(conversation_messages) AS conversation_messages, sum(closed) AS closed,
                   sum(duration_seconds) AS duration_seconds, sum(messages) AS messages, sum(tokens) AS tokens
            FROM moved GROUP BY 1, 2, 3, 4, 5
        )
        INSERT INTO stats_daily AS s (tenant_id, day, agent_id, role, status, shard, conversations,
                                      conversation_messages, closed, duration_seconds, messages, tokens)
        SELECT tenant_id, day, agent_id, role, status, 0, conversations, conversation_messages, closed,
               duration_seconds, messages, tokens
        FROM summed ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (tenant_id, day, agent_id, role, status, shard) DO UPDATE SET
            conversations = s.conversations + excluded.conversations,
            conversation_messages = s.conversation_messages + excluded.conversation_messages,
            closed = s.closed + excluded.closed,
            duration_seconds = s.duration_seconds + excluded.duration_seconds,
            messages = s.messages + excluded.messages,
            tokens = s.tokens + excluded.tokens
        """,
        tenant_id,
        before,
    )
    return int(status.split()[-1])
