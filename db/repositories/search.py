"""SQL for ranked keyword search (the KEYWORD mode of `search`, issue 11)."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from app.models import ConversationFilter
from db.repositories import text_search
from db.repositories.conversations import filtered
from db.repositories.message_search import dense_in_recent, is_common
from db.repositories.records import MESSAGE_COLUMNS, prefixed
from db.repositories.text_search import SEARCH_CONFIG
from db.session import Connection, planned_per_call

#: Markdown-style marks: safe to show as text, and no HTML reaches a browser from message content.
_HEADLINE = 'StartSel=**, StopSel=**, MaxWords=30, MinWords=10, MaxFragments=2, FragmentDelimiter=" … "'


@planned_per_call
async def ranked(
    conn: Connection,
    tenant_id: str,
    query: str,
    f: ConversationFilter,
    limit: int,
    after: tuple[float, datetime, uuid.UUID, int] | None,
    cap: int,
    snippets: bool,
    config: str = SEARCH_CONFIG,
) -> list[asyncpg.Record]:
    """Best matches first (ts_rank, then newest). Candidates are the matches found through the GIN
    index (no ORDER BY, stopped after cap + 1: the plan cannot become an index walk); when there are
    more than cap (a common word), the newest cap matches are ranked instead. Rows carry `score`
    and, when asked, `snippet`. Every statement is planned for this query's words (planned_per_call)."""
    common = await is_common(conn, tenant_id, query, cap, config) and await dense_in_recent(
        conn, tenant_id, query, f, cap, config
    )
    rows = [] if common else await _page(conn, tenant_id, query, f, limit, after, cap, snippets, config, walk=False)
    if common or (rows and rows[0]["total"] > cap):
        rows = await _page(conn, tenant_id, query, f, limit, after, cap, snippets, config, walk=True)
    return [r for r in rows if r["id"] is not None]


async def _page(
    conn: Connection,
    tenant_id: str,
    query: str,
    f: ConversationFilter,
    limit: int,
    after: tuple[float, datetime, uuid.UUID, int] | None,
    cap: int,
    snippets: bool,
    config: str,
    *,
    walk: bool,
) -> list[asyncpg.Record]:
    where = filtered(tenant_id, f, alias="c")
    has_filter = len(where.args) > 1
    q = where.param(query)
    match = text_search.match(config, q)
    join = "JOIN conversations c ON c.tenant_id = m.tenant_id AND c.id = m.conversation_id"
    if walk:
        candidates = (
            f"SELECT m.conversation_id, m.seq, m.created_at FROM messages m {join} "
            f"WHERE {where.sql} AND m.tenant_id = $1 AND {match} "
            "ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC"
        )
    elif has_filter:
        candidates = f"SELECT m.conversation_id, m.seq, m.created_at FROM messages m {join} WHERE {where.sql} AND m.tenant_id = $1 AND {match}"
    else:
        candidates = f"SELECT m.conversation_id, m.seq, m.created_at FROM messages m WHERE m.tenant_id = $1 AND {match}"
    cap_param = where.param(cap if walk else cap + 1)
    limit_param = where.param(limit)
    keyset = ""
    if after is not None:
        score, at, cid, seq = (where.param(v) for v in after)
        keyset = f"WHERE (r.score, r.created_at, r.conversation_id, r.seq) < ({score}::float8, {at}, {cid}, {seq})"
    snippet = (
        f"ts_headline({text_search.literal(config)}, m.content, {text_search.tsquery(config, q)}, '{_HEADLINE}')"
        if snippets
        else "NULL::text"
    )
    return list(
        await conn.fetch(
            f"""
            WITH cand AS MATERIALIZED ({candidates} LIMIT {cap_param}),
            ranked AS (
                SELECT k.conversation_id, k.seq, k.created_at,
                       ts_rank(to_tsvector(m.search_config, m.content), {text_search.tsquery(config, q)})::float8
                           AS score
                FROM cand k JOIN messages m ON m.tenant_id = $1 AND m.conversation_id = k.conversation_id
                                            AND m.seq = k.seq
            ), page AS (
                SELECT * FROM ranked r {keyset}
                ORDER BY r.score DESC, r.created_at DESC, r.conversation_id DESC, r.seq DESC LIMIT {limit_param}
            )
            SELECT n.total, p.score, {snippet} AS snippet, {prefixed(MESSAGE_COLUMNS, "m")}
            FROM (SELECT count(*) AS total FROM cand) n
            LEFT JOIN (page p JOIN messages m ON m.tenant_id = $1 AND m.conversation_id = p.conversation_id
                       AND m.seq = p.seq) ON true
            ORDER BY p.score DESC, p.created_at DESC, p.conversation_id DESC, p.seq DESC
            """,
            *where.args,
        )
    )


async def headlines(
    conn: Connection, tenant_id: str, query: str, keys: list[tuple[uuid.UUID, int]], config: str = SEARCH_CONFIG
) -> dict[tuple[uuid.UUID, int], str]:
    """ts_headline snippets of the given messages (HYBRID's keyword matches on one page)."""
    rows = await conn.fetch(
        f"""
        SELECT m.conversation_id, m.seq,
               ts_headline($5::regconfig, m.content, websearch_to_tsquery($5::regconfig, $2),
                           '{_HEADLINE}') AS snippet
        FROM unnest($3::uuid[], $4::int[]) AS k(conversation_id, seq)
        JOIN messages m ON m.tenant_id = $1 AND m.conversation_id = k.conversation_id AND m.seq = k.seq
        """,
        tenant_id,
        query,
        [k[0] for k in keys],
        [k[1] for k in keys],
        config,
    )
    return {(r["conversation_id"], r["seq"]): r["snippet"] for r in rows}
