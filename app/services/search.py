"""Full-text search over message content within a tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from app.errors import BadUserInput
from app.models import ConversationFilter, Message, Page
from app.services import cursors, semantic
from app.services import embedder as embedders
from app.services import limits as check
from app.services.conversations import validate_filter
from app.services.limits import DEFAULT_LIMITS, Limits
from db.repositories import message_search as repo
from db.repositories import records, text_search
from db.repositories import search as search_repo
from db.session import Connection

MAX_QUERY_LENGTH = 500


async def search_messages(
    conn: Connection,
    tenant_id: str,
    query: str,
    filter: ConversationFilter | None = None,
    *,
    first: int | None = 20,
    after: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Page[Message]:
    """Messages matching `query` (web-search syntax: words, "phrases", -not, or), newest first, parsed
    with the tenant's text-search configuration (its `search_language`).
    totalCount is exact up to limits.search_count_cap (the probe that finds the page counts it too,
    so it costs nothing extra) and the cap beyond, with total_count_capped set."""
    query = (check.text(query, "query", MAX_QUERY_LENGTH, required=True) or "").strip()
    if not query:
        raise BadUserInput("query must not be blank", field="query")
    f = validate_filter(filter or ConversationFilter(), limits)
    size = check.page_size(first if first is not None else 20, limits, "first")
    assert size is not None
    key = cursors.parse_search_cursor(after) if after else None
    cap = limits.search_count_cap
    config = await text_search.tenant_config(conn, tenant_id)
    rows, total = await repo.search(conn, tenant_id, query, f, size + 1, key, cap, config)
    items = rows[:size]
    return Page(
        items=items,
        cursor_of=lambda m: cursors.search_cursor(m.created_at, m.conversation_id, m.seq),
        has_next_page=len(rows) > size,
        has_previous_page=key is not None,
        total_count=min(total, cap),
        total_count_capped=total > cap,
    )


class SearchMode(StrEnum):
    KEYWORD = "KEYWORD"
    SEMANTIC = "SEMANTIC"
    HYBRID = "HYBRID"


@dataclass(slots=True)
class SearchHit:
    message: Message
    score: float
    snippet: str | None


async def search(
    conn: Connection,
    tenant_id: str,
    query: str,
    mode: SearchMode = SearchMode.HYBRID,
    filter: ConversationFilter | None = None,
    *,
    first: int | None = 20,
    after: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    snippets: bool = True,
) -> Page[SearchHit]:
    """Best matches first. KEYWORD ranks full-text matches with ts_rank (ties: newest first); when a
    word matches more than limits.search_count_cap messages, the newest cap of them are ranked.
    SEMANTIC (k-NN by cosine) and HYBRID (reciprocal-rank fusion of both lists) need an embedder
    (app/services/semantic.py); without one they are BAD_USER_INPUT."""
    embedder = semantic.require(embedders.configured(), mode.value) if mode is not SearchMode.KEYWORD else None
    query = (check.text(query, "query", MAX_QUERY_LENGTH, required=True) or "").strip()
    if not query:
        raise BadUserInput("query must not be blank", field="query")
    f = validate_filter(filter or ConversationFilter(), limits)
    size = check.page_size(first if first is not None else 20, limits, "first")
    assert size is not None
    key = cursors.parse_hit_cursor(after) if after else None
    config = await text_search.tenant_config(conn, tenant_id)
    if embedder is not None:
        return await _by_meaning(conn, tenant_id, query, mode, f, embedder, size, key, limits, snippets, config)
    rows = await search_repo.ranked(conn, tenant_id, query, f, size + 1, key, limits.search_count_cap, snippets, config)
    hits = [SearchHit(records.message(r), float(r["score"]), r["snippet"]) for r in rows]
    items = hits[:size]
    return Page(
        items=items,
        cursor_of=lambda h: cursors.hit_cursor(h.score, h.message.created_at, h.message.conversation_id, h.message.seq),
        has_next_page=len(hits) > size,
        has_previous_page=key is not None,
        total_count=0,  # a SearchHitConnection has no totalCount (searchMessages has one)
    )


async def _by_meaning(
    conn: Connection,
    tenant_id: str,
    query: str,
    mode: SearchMode,
    f: ConversationFilter,
    embedder: embedders.Embedder,
    size: int,
    key: tuple[float, datetime, uuid.UUID, int] | None,
    limits: Limits,
    snippets: bool,
    config: str,
) -> Page[SearchHit]:
    ttl = embedders.query_cache_s()
    if mode is SearchMode.SEMANTIC:
        ranked = await semantic.semantic(conn, tenant_id, query, f, embedder, limits, ttl)
    else:
        ranked = await semantic.hybrid(conn, tenant_id, query, f, embedder, limits, ttl, config)
    window = semantic.page_after(ranked, key, size)
    items = window[:size]
    marks = await semantic.snippets(conn, tenant_id, query, items, config) if snippets else {}
    hits = [SearchHit(r.message, r.score, marks.get((r.message.conversation_id, r.message.seq))) for r in items]
    return Page(
        items=hits,
        cursor_of=lambda h: cursors.hit_cursor(h.score, h.message.created_at, h.message.conversation_id, h.message.seq),
        has_next_page=len(window) > size,
        has_previous_page=key is not None,
        total_count=0,
    )
