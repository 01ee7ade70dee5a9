"""SQL for message embeddings (issue 14.2): what is missing, storing vectors, k-NN by cosine.

Vectors travel as pgvector's text form (`[0.1,0.2,…]`, cast from text) so no client codec is
needed. The column holds any length; every statement names the length (`dims = N`,
`embedding::vector(N)`) so the partial HNSW index of that length serves it.
"""

from __future__ import annotations

import uuid

import asyncpg

from app.models import ConversationFilter
from db.repositories.conversations import filtered
from db.repositories.records import MESSAGE_COLUMNS, prefixed
from db.session import Connection, on_citus


def vector_text(v: list[float]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in v) + "]"


def _dims(dims: int) -> int:
    # Inlined into SQL (an index's partial predicate must match a literal): only ever an int.
    if not 0 < int(dims) <= 2000:
        raise ValueError(f"embedding length {dims} out of range")
    return int(dims)


async def missing(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, model: str, limit: int
) -> list[asyncpg.Record]:
    """(seq, content) of the conversation's messages with no vector of `model` yet, oldest first."""
    return list(
        await conn.fetch(
            """
            SELECT m.seq, m.content FROM messages m
            WHERE m.tenant_id = $1 AND m.conversation_id = $2
              AND NOT EXISTS (SELECT 1 FROM message_embeddings e
                              WHERE e.tenant_id = m.tenant_id AND e.conversation_id = m.conversation_id
                                AND e.seq = m.seq AND e.model = $3)
            ORDER BY m.seq LIMIT $4
            """,
            tenant_id,
            conversation_id,
            model,
            limit,
        )
    )


_STORE = """
WITH c AS (SELECT 1 FROM conversations WHERE tenant_id = $1 AND id = $2 FOR KEY SHARE)
INSERT INTO message_embeddings (tenant_id, conversation_id, seq, model, dims, embedding)
SELECT $1, $2, u.seq, $3, $4, u.v::vector
FROM unnest($5::int[], $6::text[]) AS u(seq, v)
WHERE EXISTS (SELECT 1 FROM c)
  AND EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = $1 AND m.conversation_id = $2 AND m.seq = u.seq)
ON CONFLICT (tenant_id, conversation_id, seq) DO UPDATE
    SET model = EXCLUDED.model, dims = EXCLUDED.dims, embedding = EXCLUDED.embedding,
        embedded_at = EXCLUDED.embedded_at
    WHERE message_embeddings.model IS DISTINCT FROM EXCLUDED.model
"""
# On Citus one INSERT … SELECT that reads the conversation row (key-share locked) and the message by
# join, filtered by tenant_id: pushed down to the tenant's shard as one task. The CTE form above is
# planned on the coordinator there (intermediate result, two-phase commit).
_CITUS_STORE = """
INSERT INTO message_embeddings (tenant_id, conversation_id, seq, model, dims, embedding)
SELECT c.tenant_id, c.id, u.seq, $3, $4, u.v::vector
FROM conversations c
CROSS JOIN unnest($5::int[], $6::text[]) AS u(seq, v)
JOIN messages m ON m.tenant_id = c.tenant_id AND m.conversation_id = c.id AND m.seq = u.seq
WHERE c.tenant_id = $1 AND c.id = $2
FOR KEY SHARE OF c
ON CONFLICT (tenant_id, conversation_id, seq) DO UPDATE
    SET model = EXCLUDED.model, dims = EXCLUDED.dims, embedding = EXCLUDED.embedding,
        embedded_at = EXCLUDED.embedded_at
    WHERE message_embeddings.model IS DISTINCT FROM EXCLUDED.model
"""


async def store(
    conn: Connection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    model: str,
    dims: int,
    seqs: list[int],
    vectors: list[list[float]],
) -> int:
    """Write the vectors of messages that still exist; returns how many were written. The
    conversation row is key-share locked first: a deletion (FOR UPDATE) either ran before (nothing
    is written: no orphans) or waits for this statement and then deletes these rows too."""
    status: str = await conn.execute(
        _CITUS_STORE if on_citus() else _STORE,
        tenant_id,
        conversation_id,
        model,
        dims,
        seqs,
        [vector_text(v) for v in vectors],
    )
    return int(status.rsplit(maxsplit=1)[-1])


async def tenant_ids(conn: Connection) -> list[str]:
    return [r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM tenants ORDER BY tenant_id")]


async def conversation_ids(
    conn: Connection, tenant_id: str, after: uuid.UUID | None, limit: int, active_since_s: float | None = None
) -> list[uuid.UUID]:
    """A keyset page of the tenant's conversation ids (backfill), or those active recently (sweep)."""
    recent = "AND last_activity_at > now() - make_interval(secs => $4)" if active_since_s is not None else ""
    args: list[object] = [tenant_id, after or uuid.UUID(int=0), limit]
    if active_since_s is not None:
        args.append(active_since_s)
    rows = await conn.fetch(
        f"SELECT id FROM conversations WHERE tenant_id = $1 AND id > $2 {recent} ORDER BY id LIMIT $3", *args
    )
    return [r["id"] for r in rows]


async def progress(conn: Connection, tenant_id: str, model: str) -> tuple[int, int]:
    """(messages with a vector of `model`, messages) of the tenant."""
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM message_embeddings WHERE tenant_id = $1 AND model = $2) AS done,
               (SELECT count(*) FROM messages WHERE tenant_id = $1) AS total
        """,
        tenant_id,
        model,
    )
    assert row is not None
    return int(row["done"]), int(row["total"])


async def ensure_index(conn: Connection, dims: int) -> None:
    """The HNSW index for vectors of this length (the migration made the 256 one)."""
    n = _dims(dims)
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS ix_message_embeddings_hnsw_{n} ON message_embeddings "
        f"USING hnsw ((embedding::vector({n})) vector_cosine_ops) WHERE dims = {n}"
    )


async def nearest(
    conn: Connection,
    tenant_id: str,
    vector: list[float],
    model: str,
    f: ConversationFilter,
    limit: int,
) -> list[asyncpg.Record]:
    """The tenant's `limit` messages nearest to `vector` (cosine), filtered like conversation lists;
    rows carry `score` = 1 - cosine distance, best first (ties: newest first). The HNSW scan is
    iterative (hnsw.iterative_scan, set on the database by the migration), so tenant and filter
    conditions checked during the scan still yield `limit` rows; the outer sort restores exact order."""
    n = _dims(len(vector))
    where = filtered(tenant_id, f, alias="c")
    has_filter = len(where.args) > 1
    v = where.param(vector_text(vector))
    m = where.param(model)
    lim = where.param(limit)
    conv_filter = (
        f"AND EXISTS (SELECT 1 FROM conversations c WHERE c.id = e.conversation_id AND {where.sql})"
        if has_filter
        else ""
    )
    return list(
        await conn.fetch(
            f"""
            WITH nn AS MATERIALIZED (
                SELECT e.conversation_id, e.seq, e.embedding::vector({n}) <=> {v}::text::vector({n}) AS distance
                FROM message_embeddings e
                WHERE e.tenant_id = $1 AND e.dims = {n} AND e.model = {m} {conv_filter}
                ORDER BY e.embedding::vector({n}) <=> {v}::text::vector({n}) LIMIT {lim}
            )
            SELECT (1 - nn.distance)::float8 AS score, NULL::text AS snippet, {prefixed(MESSAGE_COLUMNS, "m")}
            FROM nn JOIN messages m ON m.tenant_id = $1 AND m.conversation_id = nn.conversation_id AND m.seq = nn.seq
            WHERE nn.distance <> 'NaN'::float8  -- an empty message's zero vector has no direction
            ORDER BY nn.distance, m.created_at DESC, m.conversation_id DESC, m.seq DESC
            """,
            *where.args,
        )
    )
