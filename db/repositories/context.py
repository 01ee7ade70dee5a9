"""SQL for context windows: the window's prelude and newest-first keyset chunks.

A window must cost O(window), not O(history): `newest` is a backward scan of the
messages primary key (tenant_id, conversation_id, seq) bounded on both sides, and
`prelude` reads the two state keys and the first SYSTEM message of a seq range in one
round trip.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.models import Message, StateEntry
from db.repositories import records
from db.repositories.records import MESSAGE_COLUMNS, prefixed
from db.session import Connection

SYSTEM_PROMPT_KEY = "system_prompt"
SUMMARY_KEY = "summary"


@dataclass(slots=True)
class Prelude:
    """What a window needs besides its messages."""

    #: The `system_prompt` state entry, as stored (the service validates its value).
    system_prompt: StateEntry | None
    #: The `summary` state entry, as stored.
    summary: StateEntry | None
    #: The first SYSTEM message in the range searched.
    first_system: Message | None


#: The first SYSTEM message is searched in a short first stretch (where a system prompt lives)
#: before the rest of the range, so the common case never plans a scan of the whole conversation.
FIRST_STRETCH = 16

_PRELUDE = f"""
SELECT sp.value AS sp_value, sp.version AS sp_version, sp.updated_at AS sp_updated_at,
       su.value AS su_value, su.version AS su_version, su.updated_at AS su_updated_at,
       {prefixed(MESSAGE_COLUMNS, "m")}
FROM (SELECT 1) AS one
LEFT JOIN conversation_state sp
       ON sp.tenant_id = $1 AND sp.conversation_id = $2 AND NOT sp.deleted AND sp.key = '{SYSTEM_PROMPT_KEY}'
LEFT JOIN conversation_state su
       ON su.tenant_id = $1 AND su.conversation_id = $2 AND NOT su.deleted AND su.key = '{SUMMARY_KEY}'
LEFT JOIN LATERAL (
    -- Append runs its branches in order and LIMIT stops it at the first row: the second branch
    -- (the rest of the range) runs only when the first stretch holds no SYSTEM message, and the
    -- partial index ix_messages_system makes that branch O(log n) too.
    SELECT * FROM (
        (SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE tenant_id = $1 AND conversation_id = $2 AND role = 'system'
           AND seq >= $3 AND seq <= LEAST($4, $3 + {FIRST_STRETCH - 1})
         ORDER BY seq LIMIT 1)
        UNION ALL
        (SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE tenant_id = $1 AND conversation_id = $2 AND role = 'system'
           AND seq > $3 + {FIRST_STRETCH - 1} AND seq <= $4
         ORDER BY seq LIMIT 1)
    ) AS first_system
    LIMIT 1
) AS m ON true
"""

_NEWEST = f"""
SELECT {MESSAGE_COLUMNS} FROM messages
WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3 AND seq < $4
ORDER BY seq DESC
LIMIT $5
"""


async def prelude(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, *, from_seq: int = 1, up_to_seq: int
) -> Prelude:
    """The `system_prompt` and `summary` state entries and the first SYSTEM message with
    from_seq <= seq <= up_to_seq (one statement; an empty range skips the message search)."""
    row = await conn.fetchrow(_PRELUDE, tenant_id, conversation_id, from_seq, up_to_seq)
    assert row is not None  # FROM (SELECT 1) always yields one row
    entries: list[StateEntry | None] = []
    for prefix, key in (("sp", SYSTEM_PROMPT_KEY), ("su", SUMMARY_KEY)):
        version = row[f"{prefix}_version"]
        entries.append(
            None
            if version is None
            else StateEntry(
                conversation_id=conversation_id,
                key=key,
                value=row[f"{prefix}_value"],
                version=version,
                updated_at=row[f"{prefix}_updated_at"],
            )
        )
    return Prelude(
        system_prompt=entries[0],
        summary=entries[1],
        first_system=records.message(row) if row["seq"] is not None else None,
    )


async def newest(
    conn: Connection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    *,
    after_seq: int,
    before_seq: int,
    limit: int,
) -> list[Message]:
    """Up to `limit` messages with after_seq < seq < before_seq, newest first (keyset on seq)."""
    if limit < 1 or before_seq - after_seq <= 1:
        return []
    rows = await conn.fetch(_NEWEST, tenant_id, conversation_id, after_seq, before_seq, limit)
    return [records.message(r) for r in rows]
