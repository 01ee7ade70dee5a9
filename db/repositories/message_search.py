"""SQL for full-text search over messages: the GIN-first probe, and the newest-first walk taken
only when a word is really dense in the tenant's recent messages (issue 11; docs/decisions.md)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from app.models import ConversationFilter, Message
from db.repositories import records, text_search
from db.repositories.conversations import filtered
from db.repositories.records import MESSAGE_COLUMNS, prefixed
from db.repositories.text_search import SEARCH_CONFIG
from db.session import Connection, planned_per_call


async def _plan_rows(conn: Connection, sql: str, *args: object) -> int:
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    parsed = json.loads(plan) if isinstance(plan, str) else plan
    return int(parsed[0]["Plan"]["Plan Rows"])


async def estimated_matches(conn: Connection, tenant_id: str, query: str, config: str = SEARCH_CONFIG) -> int:
    """The planner's estimate of the tenant's messages matching `query` (an EXPLAIN, nothing executed)."""
    return await _plan_rows(
        conn,
        f"SELECT 1 FROM messages m WHERE m.tenant_id = $1 AND {text_search.match(config, '$2')}",
        tenant_id,
        query,
    )


async def is_common(
    conn: Connection, tenant_id: str, query: str, cap: int, config: str = SEARCH_CONFIG, matches: int | None = None
) -> bool:
    """Whether the planner expects `query` to match a large share of the tenant's messages (two
    EXPLAINs, nothing executed; one when the caller has `matches` already). Words among the index
    statistics' most common elements are estimated closely; any other word gets a small default share
    (a 15-match word at 1M messages: ~0.15 %), so a share threshold keeps rare words off the walk at
    any tenant size."""
    if matches is None:
        matches = await estimated_matches(conn, tenant_id, query, config)
    if matches < COMMON_FACTOR * cap:
        return False
    rows = await _plan_rows(conn, "SELECT 1 FROM messages m WHERE m.tenant_id = $1", tenant_id)
    return matches >= COMMON_SHARE * rows


async def dense_in_recent(
    conn: Connection, tenant_id: str, query: str, f: ConversationFilter, cap: int, config: str = SEARCH_CONFIG
) -> bool:
    """Whether the tenant's newest messages really hold cap + 1 matches within cap / COMMON_SHARE x 2
    of them. The statistics are table-wide: a word common in other tenants' messages may be rare in
    this one's, and an unbounded walk would then test every message of the tenant. This check tests
    at most that many (and stops at cap + 1 matches)."""
    where = filtered(tenant_id, f, alias="c")
    q = where.param(query)
    window = where.param(int(2 * (cap + 1) / COMMON_SHARE))
    need = where.param(cap + 1)
    found = await conn.fetchval(
        f"""
        SELECT count(*) FROM (
            SELECT 1 FROM (
                SELECT m.search_config, m.content FROM messages m
                JOIN conversations c ON c.tenant_id = m.tenant_id AND c.id = m.conversation_id
                WHERE {where.sql} AND m.tenant_id = $1
                ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC LIMIT {window}
            ) recent
            WHERE {text_search.match(config, q, alias="recent")}
            LIMIT {need}
        ) AS hits
        """,
        *where.args,
    )
    return int(found) > cap


#: "Common": expected at least COMMON_FACTOR x the cap matches and COMMON_SHARE of the tenant's
#: messages. The GIN probe would build a bitmap of every match before its LIMIT applies, while the
#: newest-first walk meets a match every 1/COMMON_SHARE rows at worst (so counting to the cap tests at
#: most cap/COMMON_SHARE messages).
COMMON_FACTOR = 10
COMMON_SHARE = 0.05
#: A word expected to match at most this many messages is read whole by the probe and its page sorted
#: from the matches, even past the cap: a bitmap read costs ~0.8 µs a match, the walk ~6 µs for every
#: message it tests, and a word in 2 % of 100,000 messages made the walk test ~1,100 of them for a
#: page of 20 (6.8 ms against 1.6 ms for reading its 1,923 matches; docs/benchmarks.md). A word the
#: planner underestimates costs at most this many reads before the walk it would have taken anyway.
SORT_ALL = 4000


@planned_per_call
async def search(
    conn: Connection,
    tenant_id: str,
    query: str,
    f: ConversationFilter,
    limit: int,
    after: tuple[datetime, uuid.UUID, int] | None,
    cap: int,
    config: str = SEARCH_CONFIG,
) -> tuple[list[Message], int]:
    """Full-text matches, newest first, keyset-paged, and the number of matches counted up to cap + 1
    (cap + 1: more than cap). Always: it costs nothing extra, the probe counts while it finds and a
    common word's check already found more than cap.

    The plan cannot flip to a walk of the created_at index (which runs to_tsvector on every message of
    the tenant when the planner overestimates a rare word): matching keys come from the GIN index first
    (a MATERIALIZED probe with no ORDER BY, stopped after cap + 1 rows, or SORT_ALL when the planner
    expects at most that many matches), then only those are ordered and paged. Only when the probe
    overflows (a common word) is the page read by walking newest first, which then meets a match
    within a few rows. Every statement is planned
    for this query's words (planned_per_call: a generic plan can scan every message)."""
    expected = await estimated_matches(conn, tenant_id, query, config)
    if await is_common(conn, tenant_id, query, cap, config, expected) and await dense_in_recent(
        conn, tenant_id, query, f, cap, config
    ):
        # The check found more than cap matches: the count is "more than cap" without counting again.
        return await _walk(conn, tenant_id, query, f, limit, after, cap, False, cap + 1, config)
    probe = max(SORT_ALL if expected <= SORT_ALL else 0, cap + 1)  # rows the probe reads at most
    where = filtered(tenant_id, f, alias="c")
    filtered_by_conversation = len(where.args) > 1  # more than the tenant
    tsq = where.param(query)
    matches = text_search.match(config, tsq)
    if filtered_by_conversation:
        probe_from = (
            "FROM messages m JOIN conversations c ON c.tenant_id = m.tenant_id AND c.id = m.conversation_id "
            f"WHERE {where.sql} AND m.tenant_id = $1 AND {matches}"
        )
    else:
        probe_from = f"FROM messages m WHERE m.tenant_id = $1 AND {matches}"
    probe_param = where.param(probe)
    limit_param = where.param(limit)
    keyset = ""
    if after is not None:
        at, cid, seq = (where.param(v) for v in after)
        keyset = f"WHERE (h.created_at, h.conversation_id, h.seq) < ({at}, {cid}, {seq})"
    rows = await conn.fetch(
        f"""
        WITH hits AS MATERIALIZED (
            SELECT m.conversation_id, m.seq, m.created_at {probe_from} LIMIT {probe_param}
        ), page AS (
            SELECT h.conversation_id, h.seq, h.created_at FROM hits h {keyset}
            ORDER BY h.created_at DESC, h.conversation_id DESC, h.seq DESC LIMIT {limit_param}
        )
        SELECT n.total, {prefixed(MESSAGE_COLUMNS, "m")}
        FROM (SELECT count(*) AS total FROM hits) n
        LEFT JOIN (page p JOIN messages m ON m.tenant_id = $1 AND m.conversation_id = p.conversation_id
                   AND m.seq = p.seq) ON true
        ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC
        """,
        *where.args,
    )
    total = int(rows[0]["total"])
    if total < probe:  # every match was read: the page and the count are exact
        return [records.message(r) for r in rows if r["id"] is not None], total
    # A common word: the newest-first walk meets matches quickly.
    return await _walk(conn, tenant_id, query, f, limit, after, cap, False, total, config)


async def _walk(
    conn: Connection,
    tenant_id: str,
    query: str,
    f: ConversationFilter,
    limit: int,
    after: tuple[datetime, uuid.UUID, int] | None,
    cap: int,
    with_count: bool,
    known_total: int = 0,
    config: str = SEARCH_CONFIG,
) -> tuple[list[Message], int]:
    """Newest first by the created_at index, testing each message: for common words only. The count,
    when asked, walks the same way and stops after cap + 1 matches (exact below the cap)."""
    walk = filtered(tenant_id, f, alias="c")
    tsq = walk.param(query)
    source = (
        "FROM conversations c JOIN messages m ON m.tenant_id = c.tenant_id AND m.conversation_id = c.id AND "
        f"{text_search.match(config, tsq)} "
    )
    order = "ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC"
    total = known_total
    if with_count:
        cap_param = walk.param(cap + 1)
        total = int(
            await conn.fetchval(
                f"SELECT count(*) FROM (SELECT 1 {source} WHERE {walk.sql} AND m.tenant_id = $1 {order} "
                f"LIMIT {cap_param}) AS capped",
                *walk.args,
            )
        )
        walk.args.pop()
    if after is not None:
        walk.add("(m.created_at, m.conversation_id, m.seq) < ({}, {}, {})", *after)
    limit_param = walk.param(limit)
    page = await conn.fetch(
        f"SELECT {prefixed(MESSAGE_COLUMNS, 'm')} {source} WHERE {walk.sql} AND m.tenant_id = $1 {order} "
        f"LIMIT {limit_param}",
        *walk.args,
    )
    return [records.message(r) for r in page], total
