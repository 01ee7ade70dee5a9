"""SEMANTIC and HYBRID search (issue 14.2); KEYWORD is app/services/search.py.

SEMANTIC: the tenant's messages nearest to the query's vector (cosine, HNSW), filtered like
conversation lists; score = 1 - cosine distance. HYBRID: reciprocal-rank fusion of the KEYWORD and
SEMANTIC lists, score = Σ 1/(RRF_K + rank) over the lists a message is in (k = 60, the usual
constant: a rank-1 hit in one list is worth about as much as rank 5 in both). Each list is its best
`limits.search_count_cap` hits (the window pages walk through); scores compare within one result
list only. Snippets mark the query's words where the keyword search matched them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from app.errors import BadUserInput
from app.models import ConversationFilter, Message
from app.services.embedder import Embedder, EmbeddingError, embed_query
from app.services.limits import Limits
from db.repositories import embeddings as repo
from db.repositories import records
from db.repositories import search as search_repo
from db.repositories.text_search import SEARCH_CONFIG
from db.session import Connection

RRF_K = 60

Key = tuple[float, datetime, uuid.UUID, int]


@dataclass(slots=True)
class Ranked:
    message: Message
    score: float
    #: A keyword match: it gets a snippet.
    keyword: bool = False

    @property
    def key(self) -> Key:
        return (self.score, self.message.created_at, self.message.conversation_id, self.message.seq)


async def _query_vector(embedder: Embedder, query: str, ttl_s: float) -> list[float]:
    try:
        return await embed_query(embedder, query, ttl_s)
    except EmbeddingError as exc:
        # The endpoint is down or answers nonsense: the caller can retry or use KEYWORD meanwhile.
        raise BadUserInput(
            f"the embedder could not embed the query ({exc}); try again or use mode KEYWORD", field="mode"
        ) from exc


async def semantic(
    conn: Connection,
    tenant_id: str,
    query: str,
    f: ConversationFilter,
    embedder: Embedder,
    limits: Limits,
    ttl_s: float,
) -> list[Ranked]:
    vector = await _query_vector(embedder, query, ttl_s)
    rows = await repo.nearest(conn, tenant_id, vector, embedder.model, f, limits.search_count_cap)
    return [Ranked(records.message(r), float(r["score"])) for r in rows]


async def hybrid(
    conn: Connection,
    tenant_id: str,
    query: str,
    f: ConversationFilter,
    embedder: Embedder,
    limits: Limits,
    ttl_s: float,
    config: str = SEARCH_CONFIG,
) -> list[Ranked]:
    cap = limits.search_count_cap
    near = await semantic(conn, tenant_id, query, f, embedder, limits, ttl_s)
    words = await search_repo.ranked(conn, tenant_id, query, f, cap, None, cap, False, config)
    fused: dict[tuple[uuid.UUID, int], Ranked] = {}
    for rank, row in enumerate(words, start=1):
        m = records.message(row)
        fused[(m.conversation_id, m.seq)] = Ranked(m, 1.0 / (RRF_K + rank), keyword=True)
    for rank, hit in enumerate(near, start=1):
        k = (hit.message.conversation_id, hit.message.seq)
        r = fused.setdefault(k, Ranked(hit.message, 0.0))
        r.score += 1.0 / (RRF_K + rank)
    return sorted(fused.values(), key=lambda r: r.key, reverse=True)


async def snippets(
    conn: Connection, tenant_id: str, query: str, hits: list[Ranked], config: str = SEARCH_CONFIG
) -> dict[tuple[uuid.UUID, int], str]:
    """Snippets of the keyword matches among `hits` (one statement for the page)."""
    wanted = [(h.message.conversation_id, h.message.seq) for h in hits if h.keyword]
    return await search_repo.headlines(conn, tenant_id, query, wanted, config) if wanted else {}


def page_after(hits: list[Ranked], after: Key | None, size: int) -> list[Ranked]:
    """Hits (best first) after the cursor's key, at most size + 1 (the extra one says there is more)."""
    if after is not None:
        hits = [h for h in hits if h.key < after]
    return hits[: size + 1]


def require(embedder: Embedder | None, mode: str) -> Embedder:
    if embedder is None:
        raise BadUserInput(
            f"search mode {mode} needs an embedder, and none is configured (EMBEDDER=none); use mode KEYWORD",
            field="mode",
        )
    return embedder
