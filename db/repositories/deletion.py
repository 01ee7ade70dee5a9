"""SQL for deleting conversations and everything that holds their content (app/services/deletion.py).

Run inside one transaction: `lock` first (the conversation rows, FOR UPDATE: an append, a state
write or a close that locks the row waits for us and then finds no conversation), then `delete`.
Children are deleted explicitly (not only by ON DELETE CASCADE) so the counts are exact and the
order is the foreign keys' (sources, messages, state, outbox, then the conversations).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from app.models import Conversation
from db.repositories.records import CONVERSATION_COLUMNS
from db.repositories.records import conversation as to_conversation
from db.session import Connection

#: What a logged action answer becomes when its conversation is deleted: no content, and a replay
#: of that action_id answers NOT_FOUND instead of running again (app/services/actions.py).
DELETED_RESPONSE = {"deleted": True}


@dataclass(frozen=True, slots=True)
class Removed:
    conversations: int = 0
    messages: int = 0
    #: Live keys (tombstones of deleted keys go too, but are not counted).
    state_keys: int = 0
    sources: int = 0
    crm_deliveries: int = 0
    action_answers: int = 0
    dead_letters: int = 0


async def lock_by_ids(conn: Connection, tenant_id: str, ids: list[uuid.UUID]) -> list[Conversation]:
    """The headers of those of `ids` that exist, locked in id order (two deletions of overlapping
    sets cannot deadlock)."""
    rows = await conn.fetch(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = ANY($2::uuid[]) "
        "ORDER BY id FOR UPDATE",
        tenant_id,
        ids,
    )
    return [to_conversation(r) for r in rows]


async def lock_by_user(conn: Connection, tenant_id: str, user_id: str) -> list[Conversation]:
    """Every conversation of the end user (index (tenant_id, user_id)), locked in id order."""
    rows = await conn.fetch(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND user_id = $2 "
        "ORDER BY id FOR UPDATE",
        tenant_id,
        user_id,
    )
    return [to_conversation(r) for r in rows]


async def lock_closed_before(conn: Connection, tenant_id: str, cutoff: datetime, limit: int) -> list[Conversation]:
    """Retention: up to `limit` conversations closed (or archived) before `cutoff`, locked; rows a
    writer holds are skipped (the next run takes them)."""
    rows = await conn.fetch(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations "
        "WHERE tenant_id = $1 AND closed_at IS NOT NULL AND closed_at < $2 AND status <> 'active' "
        "ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
        tenant_id,
        cutoff,
        limit,
    )
    return [to_conversation(r) for r in rows]


def _count(status: str) -> int:
    return int(status.rsplit(maxsplit=1)[-1])


async def delete(conn: Connection, tenant_id: str, ids: list[uuid.UUID]) -> Removed:
    """Delete the (locked) conversations `ids` and every row of theirs; scrub the action log's
    answers that carry their content. Returns what went."""
    if not ids:
        return Removed()
    # clientMessageIds first: a conversation.save_message action's id is its message's key.
    client_ids: list[str] = [
        r["client_message_id"]
        for r in await conn.fetch(
            "SELECT client_message_id FROM messages WHERE tenant_id = $1 AND conversation_id = ANY($2::uuid[]) "
            "AND client_message_id IS NOT NULL",
            tenant_id,
            ids,
        )
    ]
    sources = _count(
        await conn.execute(
            "DELETE FROM message_sources WHERE tenant_id = $1 AND conversation_id = ANY($2::uuid[])", tenant_id, ids
        )
    )
    await conn.execute(
        "DELETE FROM message_embeddings WHERE tenant_id = $1 AND conversation_id = ANY($2::uuid[])", tenant_id, ids
    )
    messages = _count(
        await conn.execute(
            "DELETE FROM messages WHERE tenant_id = $1 AND conversation_id = ANY($2::uuid[])", tenant_id, ids
        )
    )
    state_keys = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM conversation_state WHERE tenant_id = $1 AND conversation_id = ANY($2::uuid[])
               RETURNING deleted)
           SELECT count(*) FILTER (WHERE NOT deleted) FROM gone""",
        tenant_id,
        ids,
    )
    deliveries = _count(
        await conn.execute(
            "DELETE FROM crm_outbox WHERE tenant_id = $1 AND conversation_id = ANY($2::uuid[])", tenant_id, ids
        )
    )
    conversations = _count(
        await conn.execute("DELETE FROM conversations WHERE tenant_id = $1 AND id = ANY($2::uuid[])", tenant_id, ids)
    )
    answers = await scrub_action_log(conn, tenant_id, ids, client_ids)
    # A failed action's envelope can hold the conversation's content: it goes with it (the Redis
    # list of dead letters is capped and keeps only the newest; see docs/decisions.md).
    dead_letters = _count(
        await conn.execute(
            "DELETE FROM dead_letters WHERE tenant_id = $1 AND envelope::text LIKE ANY($2::text[])",
            tenant_id,
            [f'%"{cid}"%' for cid in ids],
        )
    )
    return Removed(
        conversations=conversations,
        messages=messages,
        state_keys=int(state_keys or 0),
        sources=sources,
        crm_deliveries=deliveries,
        action_answers=answers,
        dead_letters=dead_letters,
    )


async def scrub_action_log(
    conn: Connection, tenant_id: str, ids: list[uuid.UUID], client_message_ids: list[str]
) -> int:
    """Logged answers that name one of these conversations (every answer holding content does:
    conversation.create / session_closed carry the conversation, update_state its state entry
    with conversation_id, sync_crm the delivery) and the save_message actions whose id is a
    deleted message's clientMessageId: their answer is replaced by DELETED_RESPONSE. The row
    (action_id, type, payload hash) stays until the log is pruned, so a retry of the action is
    not run again (it would re-create what was erased) but answered NOT_FOUND."""
    patterns = [f'%"{cid}"%' for cid in ids]
    status = await conn.execute(
        """UPDATE action_log SET response = $4::jsonb
           WHERE tenant_id = $1 AND response IS DISTINCT FROM $4::jsonb AND (
               (response IS NOT NULL AND response::text LIKE ANY($2::text[]))
               OR (action_type = 'conversation.save_message' AND action_id = ANY($3::text[])))""",
        tenant_id,
        patterns,
        client_message_ids,
        DELETED_RESPONSE,
    )
    return _count(status)
