"""SQL for `import`: conversations and messages written with the values they were exported with
(ids, seqs, times, counts), which the service's append path deliberately never does."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.models import Conversation, NewMessage, Source
from db.repositories import records, text_search
from db.repositories.records import CONVERSATION_COLUMNS
from db.session import Connection, on_citus


@dataclass(slots=True)
class ImportedMessage:
    id: uuid.UUID
    seq: int
    client_message_id: str | None
    role: str
    content: str
    name: str | None
    tool_call_id: str | None
    tool_calls: Any
    token_count: int
    metadata: dict[str, Any]
    execution: dict[str, Any] | None
    created_at: datetime
    sources: list[Source]
    #: The NewMessage fields beyond the hand-bound columns (records.extra_columns), by field name.
    extra: dict[str, Any] = field(default_factory=dict)


# Extra columns (a new NewMessage field) go as generated unnest arrays after $14: no edit here.
_EXTRA = records.UnnestExtras(records.extra_columns(NewMessage), first_param=15)


async def insert_conversation(
    conn: Connection,
    tenant_id: str,
    *,
    id: uuid.UUID,
    session_id: str,
    user_id: str | None,
    agent_id: str | None,
    channel: str | None,
    title: str | None,
    status: str,
    tags: list[str],
    metadata: dict[str, Any],
    created_at: datetime,
    updated_at: datetime,
    closed_at: datetime | None,
    close_reason: str | None,
) -> Conversation | None:
    """None when the id or the sessionId is taken in this tenant (the caller tells which)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO conversations (tenant_id, id, session_id, user_id, agent_id, channel, title, status, tags,
                                   metadata, created_at, updated_at, last_activity_at, closed_at, close_reason)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $11, $13, $14)
        ON CONFLICT DO NOTHING
        RETURNING {CONVERSATION_COLUMNS}
        """,
        tenant_id,
        id,
        session_id,
        user_id,
        agent_id,
        channel,
        title,
        status,
        tags,
        metadata,
        created_at,
        updated_at,
        closed_at,
        close_reason,
    )
    return records.conversation(row) if row else None


async def id_taken(conn: Connection, tenant_id: str, id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM conversations WHERE tenant_id = $1 AND id = $2", tenant_id, id))


async def message_keys(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> tuple[set[str], set[uuid.UUID]]:
    """The clientMessageIds and ids a conversation already has."""
    rows = await conn.fetch(
        "SELECT client_message_id, id FROM messages WHERE tenant_id = $1 AND conversation_id = $2",
        tenant_id,
        conversation_id,
    )
    return {r["client_message_id"] for r in rows if r["client_message_id"] is not None}, {r["id"] for r in rows}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# On Citus each INSERT … SELECT joins the conversation row by tenant_id = $1: pushed down to the tenant's
# shard as one task (from unnest() alone Citus plans it on the coordinator and COPYs, with a two-phase
# commit); the search config is then a parameter (a `tenants` subquery stops shard pruning).
_INSERT_MESSAGES_SQL = f"""
INSERT INTO messages (tenant_id, conversation_id, seq, id, client_message_id, role, content, name,
                      tool_call_id, tool_calls, token_count, metadata, execution, created_at, search_config{_EXTRA.columns})
SELECT {{tenant}}, t.seq, t.id, t.client_message_id, t.role, t.content, t.name, t.tool_call_id,
       t.tool_calls::jsonb, t.token_count, t.metadata::jsonb, t.execution::jsonb, t.created_at,
       {{config}}{_EXTRA.values}
FROM unnest($3::int[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
            $10::text[], $11::int[], $12::text[], $13::text[], $14::timestamptz[]{_EXTRA.arrays})
     AS t(seq, id, client_message_id, role, content, name, tool_call_id, tool_calls, token_count,
          metadata, execution, created_at{_EXTRA.aliases}) {{join}}
"""
_INSERT_SOURCES_SQL = """
INSERT INTO message_sources (tenant_id, conversation_id, seq, position, document_id, chunk_id, title, uri, score, snippet)
SELECT {tenant}, s.seq, s.position, s.document_id, s.chunk_id, s.title, s.uri, s.score, s.snippet
FROM jsonb_to_recordset($3::jsonb) AS s(seq int, position int, document_id text, chunk_id text,
                                        title text, uri text, score float8, snippet text) {join}
"""
_PLAIN = {"tenant": "$1, $2", "join": ""}
_CITUS = {"tenant": "c.tenant_id, c.id", "join": "JOIN conversations c ON c.tenant_id = $1 AND c.id = $2"}
_INSERT_MESSAGES = _INSERT_MESSAGES_SQL.format(config=text_search.TENANT_CONFIG, **_PLAIN)
_CITUS_INSERT_MESSAGES = _INSERT_MESSAGES_SQL.format(config=f"${15 + len(_EXTRA.extra)}::regconfig", **_CITUS)
_INSERT_SOURCES = _INSERT_SOURCES_SQL.format(**_PLAIN)
_CITUS_INSERT_SOURCES = _INSERT_SOURCES_SQL.format(**_CITUS)


async def insert_messages(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, messages: list[ImportedMessage]
) -> None:
    """Insert with the given ids, seqs and times (the caller holds the conversation's row lock)."""
    if not messages:
        return
    citus = on_citus()
    config = [await text_search.tenant_config(conn, tenant_id)] if citus else []
    await conn.execute(
        _CITUS_INSERT_MESSAGES if citus else _INSERT_MESSAGES,
        tenant_id,
        conversation_id,
        [m.seq for m in messages],
        [m.id for m in messages],
        [m.client_message_id for m in messages],
        [m.role for m in messages],
        [m.content for m in messages],
        [m.name for m in messages],
        [m.tool_call_id for m in messages],
        # JSON goes as text: asyncpg would read a list value as a nested SQL array.
        [_json(m.tool_calls) for m in messages],
        [m.token_count for m in messages],
        [_json(m.metadata) for m in messages],
        [_json(m.execution) for m in messages],
        [m.created_at for m in messages],
        *_EXTRA.columns_of(messages, lambda m, name: m.extra.get(name)),
        *config,
    )
    sources = [
        {
            "seq": m.seq,
            "position": position,
            "document_id": s.document_id,
            "chunk_id": s.chunk_id,
            "title": s.title,
            "uri": s.uri,
            "score": s.score,
            "snippet": s.snippet,
        }
        for m in messages
        for position, s in enumerate(m.sources)
    ]
    if sources:
        await conn.execute(
            _CITUS_INSERT_SOURCES if citus else _INSERT_SOURCES,
            tenant_id,
            conversation_id,
            sources,
        )


async def advance(
    conn: Connection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    count: int,
    tokens: int,
    last_message_at: datetime,
) -> Conversation:
    """Count imported messages into the conversation's counters and activity times."""
    row = await conn.fetchrow(
        f"""
        UPDATE conversations
        SET last_seq = last_seq + $3,
            message_count = message_count + $3,
            token_count = token_count + $4,
            last_message_at = GREATEST(last_message_at, $5),
            last_activity_at = GREATEST(last_activity_at, $5),
            updated_at = GREATEST(updated_at, $5)
        WHERE tenant_id = $1 AND id = $2
        RETURNING {CONVERSATION_COLUMNS}
        """,
        tenant_id,
        conversation_id,
        count,
        tokens,
        last_message_at,
    )
    assert row is not None
    return records.conversation(row)


async def insert_state(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, entries: list[tuple[str, Any, int, datetime]]
) -> int:
    """Entries (key, value, version, updated_at) the conversation does not have yet; returns how many."""
    if not entries:
        return 0
    citus = on_citus()  # the conversation joined (above, _CITUS)
    status = await conn.execute(
        f"""
        INSERT INTO conversation_state AS s (tenant_id, conversation_id, key, value, version, updated_at)
        SELECT {_CITUS["tenant"] if citus else "$1, $2"}, e.key, e.value::jsonb, e.version, e.updated_at
        FROM unnest($3::text[], $4::text[], $5::int[], $6::timestamptz[]) AS e(key, value, version, updated_at)
        {_CITUS["join"] if citus else ""}
        ON CONFLICT (tenant_id, conversation_id, key) DO UPDATE
        -- Over a tombstone (a deleted key): the imported value, never a version below the tombstone's.
        SET value = EXCLUDED.value, version = GREATEST(EXCLUDED.version, s.version + 1),
            updated_at = EXCLUDED.updated_at, deleted = false
        WHERE s.deleted
        """,
        tenant_id,
        conversation_id,
        [e[0] for e in entries],
        [json.dumps(e[1], separators=(",", ":"), ensure_ascii=False) for e in entries],
        [e[2] for e in entries],
        [e[3] for e in entries],
    )
    return int(status.split()[-1])


async def known_tenants(conn: Connection, tenant_ids: list[str]) -> set[str]:
    """Those of `tenant_ids` that exist: a tenants row, or conversations (trusted mode makes no row)."""
    # No correlated subquery over unnest(): Citus refuses it; `tenant_id = ANY(…)` prunes to the
    # listed tenants' shards (one tenant: a routed statement).
    rows = await conn.fetch(
        "SELECT tenant_id FROM tenants WHERE tenant_id = ANY($1::text[])"
        " UNION SELECT tenant_id FROM conversations WHERE tenant_id = ANY($1::text[])",
        tenant_ids,
    )
    return {r["tenant_id"] for r in rows}
