"""SQL for messages and their sources.

The single append is ONE statement, a call of the append_message() function
(migration 9e4b7c2d1f60): it resolves the conversation, checks the idempotency
key, bumps the conversation's seq and counters (locking its row, which
serialises appends per conversation), inserts the message and its sources. A
durable write then costs one round trip and one commit; on Citus the call is
delegated whole to the worker holding the tenant's shard group. On plain Postgres
the statement also upserts its stats_daily rollup (db/repositories/append_rollup.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg

from app.models import Message, NewMessage, Source
from db.repositories import append_rollup, records, text_search
from db.repositories.records import CONVERSATION_COLUMNS, MESSAGE_COLUMNS, prefixed
from db.session import Connection, on_citus

_SOURCE_FIELDS = "document_id text, chunk_id text, title text, uri text, score float8, snippet text"

# A NewMessage field beyond the columns bound by hand (records.MESSAGE_BOUND_COLUMNS) is written by
# fragments generated here, once, at import: its column and `$15`, `$16`, … appended to the append
# statement (after $14, the sources), and an unnest array in insert_many. With no such field the
# statements are exactly the hand-written ones.
_NEW_EXTRA = records.extra_columns(NewMessage)
_APPEND_EXTRA_COLUMNS, _APPEND_EXTRA_PARAMS = records.extra_sql(NewMessage, first_param=15)


def _extra_values_reader() -> Callable[[NewMessage], tuple[Any, ...]]:
    """message → the values of its extra columns, in order (plain Python, made once)."""
    values = "".join(f"m.{c.field}, " for c in _NEW_EXTRA)
    namespace: dict[str, Any] = {}
    exec(compile(f"def f(m):\n    return ({values})\n", "<db.repositories.messages extras>", "exec"), namespace)
    reader: Callable[[NewMessage], tuple[Any, ...]] = namespace["f"]
    return reader


_extra_values = _extra_values_reader()
_MANY = records.UnnestExtras(_NEW_EXTRA, first_param=15)

_APPEND_TEMPLATE = f"""
WITH target AS ({{target}}),
{append_rollup.MARK}prior AS (
    SELECT seq FROM messages
    WHERE tenant_id = $1 AND conversation_id = (SELECT id FROM target) AND client_message_id = $3
),
-- statement_timestamp(), not clock_timestamp(): a volatile CTE is run on the Citus coordinator and
-- shipped to the shard as an intermediate result, which a concurrent shard move loses; GREATEST
-- below keeps created_at in seq order either way.
clock AS (SELECT statement_timestamp() AS now),
bump AS (
    UPDATE conversations c
    SET last_seq = c.last_seq + 1,
        message_count = c.message_count + 1,
        token_count = c.token_count + $8,
        -- Never earlier than the previous message: created_at follows seq order.
        last_message_at = GREATEST((SELECT now FROM clock), c.last_message_at),
        last_activity_at = GREATEST((SELECT now FROM clock), c.last_message_at),
        updated_at = (SELECT now FROM clock)
    WHERE c.tenant_id = $1 AND c.id = (SELECT id FROM target) AND c.status = 'active'
      AND ($13::int IS NULL OR c.last_seq + 1 = $13::int)
      AND NOT EXISTS (SELECT 1 FROM prior)
    RETURNING {CONVERSATION_COLUMNS}
),
ins AS (
    INSERT INTO messages (tenant_id, conversation_id, seq, id, client_message_id, role, content, name,
                          tool_call_id, tool_calls, token_count, metadata, execution, created_at, search_config{_APPEND_EXTRA_COLUMNS})
    SELECT $1, b.id, b.last_seq, COALESCE($4::uuid, gen_random_uuid()), $3, $5, $6, $7, $9, $10, $8, $11, $12,
           b.last_message_at, {text_search.TENANT_CONFIG}{_APPEND_EXTRA_PARAMS}
    FROM bump b, mark
    RETURNING {MESSAGE_COLUMNS}
),
{append_rollup.ROLLUP}{{sources}}SELECT {prefixed(MESSAGE_COLUMNS, "i")},
       b.session_id, b.user_id, b.agent_id, b.channel, b.title, b.status, b.tags,
       b.metadata AS conversation_metadata, b.created_at AS conversation_created_at, b.updated_at,
       b.last_message_at, b.last_activity_at, b.closed_at, b.close_reason, b.message_count,
       b.token_count AS conversation_token_count, b.last_seq
FROM ins i, bump b
"""

_SOURCES_CTE = f"""src AS (
    INSERT INTO message_sources (tenant_id, conversation_id, seq, position, document_id, chunk_id, title,
                                 uri, score, snippet)
    SELECT i.tenant_id, i.conversation_id, i.seq, s.position - 1, s.document_id, s.chunk_id, s.title, s.uri,
           s.score, s.snippet
    FROM ins i,
         ROWS FROM (jsonb_to_recordset($14::jsonb) AS ({_SOURCE_FIELDS})) WITH ORDINALITY
           AS s(document_id, chunk_id, title, uri, score, snippet, position)
    WHERE $14::jsonb IS NOT NULL
)
"""
# Without sources the statement skips the sources CTE (a data-modifying CTE always runs).
_NO_SOURCES_CTE = "nosrc AS (SELECT $14::jsonb AS unused)\n"
_BY_ID = "SELECT $2::uuid AS id"
_BY_SESSION = "SELECT id FROM conversations WHERE tenant_id = $1 AND session_id = $2::text"
APPEND_BY_ID = _APPEND_TEMPLATE.format(target=_BY_ID, sources=_SOURCES_CTE)
APPEND_BY_SESSION = _APPEND_TEMPLATE.format(target=_BY_SESSION, sources=_SOURCES_CTE)
_APPEND_BY_ID_PLAIN = _APPEND_TEMPLATE.format(target=_BY_ID, sources=_NO_SOURCES_CTE)
_APPEND_BY_SESSION_PLAIN = _APPEND_TEMPLATE.format(target=_BY_SESSION, sources=_NO_SOURCES_CTE)

# On Citus the append is the function of migration 9e4b7c2d1f60 (append_message): ONE statement and
# one task delegated whole to the worker of the tenant's shard group (a statement
# with an INSERT in a CTE is split by Citus into subplans and a two-phase commit: docs/scaling.md).
# The parameters keep the order of the statement it replaced ($2 the conversation id or session id).
_APPEND_ARGS = "$3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14"
CITUS_APPEND_BY_ID = f"SELECT * FROM append_message($1, $2::uuid, NULL, {_APPEND_ARGS})"
CITUS_APPEND_BY_SESSION = f"SELECT * FROM append_message($1, NULL, $2::text, {_APPEND_ARGS})"
# It writes the columns it was written with: a Message field added later (records' generated extra
# columns) needs the function replaced in its migration too (docs/architecture.md, the recipe).


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _sources_json(sources: list[Source]) -> list[dict[str, Any]] | None:
    if not sources:
        return None
    return [
        {
            "document_id": s.document_id,
            "chunk_id": s.chunk_id,
            "title": s.title,
            "uri": s.uri,
            "score": s.score,
            "snippet": s.snippet,
        }
        for s in sources
    ]


async def append(
    conn: Connection,
    tenant_id: str,
    *,
    conversation_id: uuid.UUID | None,
    session_id: str | None,
    message: NewMessage,
    expected_seq: int | None,
) -> asyncpg.Record | None:
    """Append one message; None when nothing was written (the caller diagnoses why)."""
    by_id = conversation_id is not None
    target = conversation_id if by_id else session_id
    if on_citus():
        sql = CITUS_APPEND_BY_ID if by_id else CITUS_APPEND_BY_SESSION
        extra: tuple[Any, ...] = ()
    else:
        if message.sources:
            sql = APPEND_BY_ID if by_id else APPEND_BY_SESSION
        else:
            sql = _APPEND_BY_ID_PLAIN if by_id else _APPEND_BY_SESSION_PLAIN
        extra = _extra_values(message)
    return await conn.fetchrow(
        sql,
        tenant_id,
        target,
        message.client_message_id,
        None,  # the id: gen_random_uuid() in the statement, one syscall fewer here
        message.role.value,
        message.content,
        message.name,
        message.token_count,
        message.tool_call_id,
        message.tool_calls,
        message.metadata,
        message.execution,
        expected_seq,
        _sources_json(message.sources),
        *extra,
    )


def split_append_row(row: asyncpg.Record) -> tuple[Message, dict[str, Any]]:
    """append_message returns the message and the conversation header after the bump side by side."""
    conversation = {
        "tenant_id": row["tenant_id"],
        "id": row["conversation_id"],
        "session_id": row["session_id"],
        "user_id": row["user_id"],
        "agent_id": row["agent_id"],
        "channel": row["channel"],
        "title": row["title"],
        "status": row["status"],
        "tags": row["tags"],
        "metadata": row["conversation_metadata"],
        "created_at": row["conversation_created_at"],
        "updated_at": row["updated_at"],
        "last_message_at": row["last_message_at"],
        "last_activity_at": row["last_activity_at"],
        "closed_at": row["closed_at"],
        "close_reason": row["close_reason"],
        "message_count": row["message_count"],
        "token_count": row["conversation_token_count"],
        "last_seq": row["last_seq"],
    }
    return records.message(row), conversation


async def seq_of_client_message(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, client_message_id: str
) -> int | None:
    value = await conn.fetchval(
        "SELECT seq FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND client_message_id = $3",
        tenant_id,
        conversation_id,
        client_message_id,
    )
    return int(value) if value is not None else None


async def seqs_of_client_messages(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, client_message_ids: list[str]
) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT client_message_id, seq FROM messages "
        "WHERE tenant_id = $1 AND conversation_id = $2 AND client_message_id = ANY($3::text[])",
        tenant_id,
        conversation_id,
        client_message_ids,
    )
    return {r["client_message_id"]: r["seq"] for r in rows}


async def by_client_message_ids(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, client_message_ids: list[str]
) -> list[Message]:
    rows = await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages "
        "WHERE tenant_id = $1 AND conversation_id = $2 AND client_message_id = ANY($3::text[]) ORDER BY seq",
        tenant_id,
        conversation_id,
        client_message_ids,
    )
    return [records.message(r) for r in rows]


# The batch insert. On Citus it joins the conversation's row (tenant_id = $1) so it is pushed down as one task (unnest()
# alone: planned on the coordinator, 2PC), the search config a parameter: a `tenants` subquery stops shard pruning.
_CITUS_CONFIG = f"${15 + len(_NEW_EXTRA)}::regconfig"
_INSERT_MANY = f"""
INSERT INTO messages (tenant_id, conversation_id, seq, id, client_message_id, role, content, name,
                      tool_call_id, tool_calls, token_count, metadata, execution, created_at, search_config{_MANY.columns})
SELECT {{tenant}}, $3 + t.ord - 1, t.id, t.client_message_id, t.role, t.content, t.name, t.tool_call_id,
       t.tool_calls::jsonb, t.token_count, t.metadata::jsonb, t.execution::jsonb, $14, {{config}}{_MANY.values}
FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
            $11::int[], $12::text[], $13::text[]{_MANY.arrays})
     WITH ORDINALITY AS t(id, client_message_id, role, content, name, tool_call_id, tool_calls,
                          token_count, metadata, execution{_MANY.aliases}, ord) {{join}}
ORDER BY t.ord
RETURNING {MESSAGE_COLUMNS}
"""
_INSERT_SOURCES = f"""
INSERT INTO message_sources (tenant_id, conversation_id, seq, position, document_id, chunk_id, title, uri, score, snippet)
SELECT {{tenant}}, s.seq, s.position, s.document_id, s.chunk_id, s.title, s.uri, s.score, s.snippet
FROM jsonb_to_recordset($3::jsonb) AS s(seq int, position int, {_SOURCE_FIELDS}) {{join}}
"""
_PLAIN = {"tenant": "$1, $2", "join": ""}
_CITUS = {"tenant": "c.tenant_id, c.id", "join": "JOIN conversations c ON c.tenant_id = $1 AND c.id = $2"}
INSERT_MANY = _INSERT_MANY.format(config=text_search.TENANT_CONFIG, **_PLAIN)
CITUS_INSERT_MANY = _INSERT_MANY.format(config=_CITUS_CONFIG, **_CITUS)
INSERT_SOURCES = _INSERT_SOURCES.format(**_PLAIN)
CITUS_INSERT_SOURCES = _INSERT_SOURCES.format(**_CITUS)


async def insert_many(
    conn: Connection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    first_seq: int,
    messages: list[NewMessage],
    created_at: datetime,
) -> list[Message]:
    """Insert messages with seqs first_seq, first_seq+1, … (the caller holds the conversation lock)."""
    n, citus = len(messages), on_citus()
    config = [await text_search.tenant_config(conn, tenant_id)] if citus else []
    rows = await conn.fetch(
        CITUS_INSERT_MANY if citus else INSERT_MANY,
        tenant_id,
        conversation_id,
        first_seq,
        [uuid.uuid4() for _ in range(n)],
        [m.client_message_id for m in messages],
        [m.role.value for m in messages],
        [m.content for m in messages],
        [m.name for m in messages],
        [m.tool_call_id for m in messages],
        # JSON goes as text: asyncpg would read a list value as a nested SQL array.
        [_json_or_none(m.tool_calls) for m in messages],
        [m.token_count for m in messages],
        [_json_or_none(m.metadata) for m in messages],
        [_json_or_none(m.execution) for m in messages],
        created_at,
        *_MANY.columns_of(messages),
        *config,
    )
    inserted = sorted((records.message(r) for r in rows), key=lambda m: m.seq)
    sources: list[dict[str, Any]] = []
    for msg, new in zip(inserted, messages, strict=True):
        msg.sources = list(new.sources)
        for position, s in enumerate(new.sources):
            sources.append({"seq": msg.seq, "position": position, **(_sources_json([s]) or [{}])[0]})
    if sources:
        await conn.execute(CITUS_INSERT_SOURCES if citus else INSERT_SOURCES, tenant_id, conversation_id, sources)
    return inserted


async def range_(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, lo: int, hi: int) -> list[Message]:
    """Messages with lo <= seq <= hi, seq ascending (seqs are gap-free, so this is exact)."""
    rows = await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages "
        "WHERE tenant_id = $1 AND conversation_id = $2 AND seq BETWEEN $3 AND $4 ORDER BY seq",
        tenant_id,
        conversation_id,
        lo,
        hi,
    )
    return [records.message(r) for r in rows]


async def ranges(
    conn: Connection, tenant_id: str, wanted: list[tuple[uuid.UUID, int, int]]
) -> dict[tuple[uuid.UUID, int, int], list[Message]]:
    """Several seq ranges of several conversations in one statement (a DataLoader batch)."""
    result: dict[tuple[uuid.UUID, int, int], list[Message]] = {w: [] for w in wanted}
    if not wanted:
        return result
    rows = await conn.fetch(
        f"""
        SELECT r.lo, r.hi, {prefixed(MESSAGE_COLUMNS, "m")}
        FROM unnest($2::uuid[], $3::int[], $4::int[]) AS r(conversation_id, lo, hi)
        JOIN messages m ON m.tenant_id = $1 AND m.conversation_id = r.conversation_id
                       AND m.seq BETWEEN r.lo AND r.hi
        ORDER BY m.conversation_id, m.seq
        """,
        tenant_id,
        [w[0] for w in wanted],
        [w[1] for w in wanted],
        [w[2] for w in wanted],
    )
    for r in rows:
        result[(r["conversation_id"], r["lo"], r["hi"])].append(records.message(r))
    return result


_PAGE_TEMPLATE = f"""
WITH c AS ({{target}}),
b AS (
    SELECT c.id, c.last_seq,
           CASE WHEN $3 THEN $4 + 1
                ELSE GREATEST($4 + 1, LEAST(c.last_seq + 1, COALESCE($5, c.last_seq + 1)) - $6) END AS lo,
           CASE WHEN $3 THEN LEAST(LEAST(c.last_seq + 1, COALESCE($5, c.last_seq + 1)) - 1, $4 + $6)
                ELSE LEAST(c.last_seq + 1, COALESCE($5, c.last_seq + 1)) - 1 END AS hi
    FROM c
)
SELECT b.last_seq, {prefixed(MESSAGE_COLUMNS, "m")}
FROM b LEFT JOIN messages m ON m.tenant_id = $1 AND m.conversation_id = b.id AND m.seq BETWEEN b.lo AND b.hi
ORDER BY m.seq
"""
_PAGE_BY_ID = _PAGE_TEMPLATE.format(
    target="SELECT id, last_seq FROM conversations WHERE tenant_id = $1 AND id = $2::uuid"
)
_PAGE_BY_SESSION = _PAGE_TEMPLATE.format(
    target="SELECT id, last_seq FROM conversations WHERE tenant_id = $1 AND session_id = $2::text"
)

# On Citus: history_page() (migration 1fd9a71b989d), delegated whole to the tenant's worker; the statement
# above is planned, deparsed and shipped by the coordinator and parsed and planned again by the worker.
CITUS_PAGE_BY_ID = "SELECT * FROM history_page($1, $2::uuid, NULL, $3, $4, $5, $6)"
CITUS_PAGE_BY_SESSION = "SELECT * FROM history_page($1, NULL, $2::text, $3, $4, $5, $6)"


async def page_by_ref(
    conn: Connection, tenant_id: str, id: uuid.UUID | None, session_id: str | None, request: Any
) -> tuple[int, list[Message]] | None:
    """(lastSeq, messages of the page) in one statement; None when the conversation is not found.
    The bounds mirror app.services.messages.PageRequest.bounds."""
    if on_citus():
        sql, target = (CITUS_PAGE_BY_ID, id) if id is not None else (CITUS_PAGE_BY_SESSION, session_id)
    else:
        sql, target = (_PAGE_BY_ID, id) if id is not None else (_PAGE_BY_SESSION, session_id)
    rows = await conn.fetch(sql, tenant_id, target, request.forward, request.lower, request.upper_cap, request.size)
    if not rows:
        return None
    return rows[0]["last_seq"], [records.message(r) for r in rows if r["seq"] is not None]


async def by_seqs(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, seqs: list[int]) -> list[Message]:
    rows = await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages "
        "WHERE tenant_id = $1 AND conversation_id = $2 AND seq = ANY($3::int[]) ORDER BY seq",
        tenant_id,
        conversation_id,
        seqs,
    )
    return [records.message(r) for r in rows]


async def first_seq_since(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, since: datetime) -> int | None:
    """The first seq created at or after `since` (created_at never decreases along seq)."""
    value = await conn.fetchval(
        "SELECT seq FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND created_at >= $3 "
        "ORDER BY created_at, seq LIMIT 1",
        tenant_id,
        conversation_id,
        since,
    )
    return int(value) if value is not None else None


async def sources_for(
    conn: Connection, tenant_id: str, keys: list[tuple[uuid.UUID, int]]
) -> dict[tuple[uuid.UUID, int], list[Source]]:
    """Sources of many messages in one statement (the DataLoader's batch)."""
    result: dict[tuple[uuid.UUID, int], list[Source]] = {k: [] for k in keys}
    if not keys:
        return result
    rows = await conn.fetch(
        """
        SELECT s.conversation_id, s.seq, s.document_id, s.chunk_id, s.title, s.uri, s.score, s.snippet
        FROM message_sources s
        JOIN unnest($2::uuid[], $3::int[]) AS k(conversation_id, seq)
          ON s.conversation_id = k.conversation_id AND s.seq = k.seq
        WHERE s.tenant_id = $1
        ORDER BY s.conversation_id, s.seq, s.position
        """,
        tenant_id,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    for r in rows:
        result[(r["conversation_id"], r["seq"])].append(records.source(r))
    return result
