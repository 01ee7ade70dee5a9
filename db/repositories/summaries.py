"""SQL for the summarizer's bookkeeping (`conversation_summaries`)."""

from __future__ import annotations

import uuid

import asyncpg

from db.session import Connection

_COLUMNS = "status, up_to_seq, covered_tokens, token_count, model, error, attempts, locked_until, updated_at"


async def get(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM conversation_summaries WHERE tenant_id = $1 AND conversation_id = $2",
        tenant_id,
        conversation_id,
    )


async def covered_tokens(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> int:
    value = await conn.fetchval(
        "SELECT covered_tokens FROM conversation_summaries WHERE tenant_id = $1 AND conversation_id = $2",
        tenant_id,
        conversation_id,
    )
    return int(value or 0)


async def mark_pending(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> asyncpg.Record:
    """Status PENDING (text, range, model and error kept); the row is made when missing.
    EXCLUDED.updated_at is the column default now(): Citus allows only immutable functions in DO UPDATE."""
    row = await conn.fetchrow(
        "INSERT INTO conversation_summaries (tenant_id, conversation_id, status) VALUES ($1, $2, 'pending') "
        "ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET status = 'pending', updated_at = EXCLUDED.updated_at "
        f"RETURNING {_COLUMNS}",
        tenant_id,
        conversation_id,
    )
    assert row is not None
    return row


async def claim(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, lease_s: float) -> asyncpg.Record | None:
    """Take the conversation's lease for `lease_s` seconds; None while another holder's is live.
    One statement: two jobs racing here cannot both win (the row lock orders them)."""
    return await conn.fetchrow(
        "INSERT INTO conversation_summaries AS s (tenant_id, conversation_id, status, locked_until, updated_at) "
        "VALUES ($1, $2, 'none', now() + make_interval(secs => $3), now()) "
        "ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET locked_until = EXCLUDED.locked_until "
        # EXCLUDED.updated_at is now(): Citus allows only immutable functions in ON CONFLICT … WHERE.
        "WHERE s.locked_until IS NULL OR s.locked_until < EXCLUDED.updated_at "
        f"RETURNING {_COLUMNS}",
        tenant_id,
        conversation_id,
        lease_s,
    )


async def release(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, status: str) -> None:
    """Give the lease back with nothing summarized (status as it was, or as the caller says)."""
    await conn.execute(
        "UPDATE conversation_summaries SET locked_until = NULL, status = $3, updated_at = now() "
        "WHERE tenant_id = $1 AND conversation_id = $2",
        tenant_id,
        conversation_id,
        status,
    )


async def succeed(
    conn: Connection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    *,
    up_to_seq: int,
    covered_tokens: int,
    token_count: int,
    model: str,
) -> None:
    """Status READY with the new range; the lease is released, attempts reset."""
    await conn.execute(
        "UPDATE conversation_summaries SET status = 'ready', up_to_seq = $3, covered_tokens = $4, "
        "token_count = $5, model = $6, error = NULL, attempts = 0, updated_at = now(), "
        "locked_until = NULL WHERE tenant_id = $1 AND conversation_id = $2",
        tenant_id,
        conversation_id,
        up_to_seq,
        covered_tokens,
        token_count,
        model,
    )


async def fail(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, error: str) -> int:
    """Status FAILED with `error`, lease released; returns the failed attempts so far."""
    value = await conn.fetchval(
        "UPDATE conversation_summaries SET status = 'failed', error = $3, attempts = attempts + 1, "
        "locked_until = NULL, updated_at = now() WHERE tenant_id = $1 AND conversation_id = $2 RETURNING attempts",
        tenant_id,
        conversation_id,
        error,
    )
    return int(value or 0)
