"""The batched import (issue 11): many lines of one tenant in one transaction, written set-based.

The rules are those of `transfer.import_conversation` (its docstring), line by line: the same
conversation lookup by sessionId, the same id choice, the same message planning
(`transfer.plan_messages`), the same clientMessageId check, the same state rule. Only the
statements differ: a batch costs about ten statements whatever its size, the messages are COPY'd.
A batch holds each sessionId once (the caller starts a new batch on a repeat), so the lines of a
batch are independent of one another and the batch equals the lines imported one after another.

A batch is all or nothing: when one of its lines is refused (IDEMPOTENCY_KEY_REUSED, found only
in the database) nothing of the batch is written, and the caller imports its lines one by one to
say which line it was and to keep "the lines before it are imported".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.errors import RetryTransaction
from app.models import Conversation, DomainEvent, EventType, Message, Status
from app.services import limits as check
from app.services import messages, transfer
from app.services.limits import DEFAULT_LIMITS, Limits
from app.services.transfer import ConversationLine, ImportResult
from db.repositories import bulk_import as repo
from db.repositories.transfer import ImportedMessage
from db.session import Connection, UnitOfWork


@dataclass(slots=True)
class _Planned:
    line: ConversationLine
    session_id: str
    conversation: Conversation | None = None
    created: bool = False
    new: list[ImportedMessage] | None = None
    skipped: int = 0
    last_at: datetime | None = None


def _new_row(p: _Planned, wanted: uuid.UUID, now: datetime) -> dict[str, Any]:
    c = p.line.conversation
    created_at = transfer.as_utc(c.created_at) or now
    closed = c.status is not Status.ACTIVE
    closed_at = transfer.as_utc(c.closed_at) if closed else None
    return {
        "id": str(wanted),
        "session_id": p.session_id,
        "user_id": c.user_id,
        "agent_id": c.agent_id,
        "channel": c.channel,
        "title": c.title,
        "status": c.status.value,
        "tags": list(c.tags),
        "metadata": dict(c.metadata),
        "created_at": created_at.isoformat(),
        "updated_at": (transfer.as_utc(c.updated_at) or created_at).isoformat(),
        "closed_at": closed_at.isoformat() if closed_at is not None else None,
        "close_reason": c.close_reason if closed else None,
    }


async def _check_reused_keys(
    conn: Connection, tenant_id: str, reused: dict[uuid.UUID, list[transfer.MessageRecord]]
) -> None:
    """transfer.check_reused_keys for the whole batch: the originals in two statements (not two per
    conversation: a re-run reuses every key), compared in line order as one line after another would."""
    pairs = [(c, m.client_message_id) for c, lines in reused.items() for m in lines if m.client_message_id is not None]
    if not pairs:
        return
    stored = await messages.with_sources(conn, tenant_id, await repo.stored_by_client_ids(conn, tenant_id, pairs))
    originals: dict[uuid.UUID, dict[str | None, Message]] = {}
    for m in stored:
        originals.setdefault(m.conversation_id, {})[m.client_message_id] = m
    for conversation_id, lines in reused.items():
        transfer.check_replays(lines, originals.get(conversation_id, {}))


async def import_batch(
    uow: UnitOfWork, tenant_id: str, lines: list[ConversationLine], limits: Limits = DEFAULT_LIMITS
) -> list[ImportResult]:
    """Write `lines` (distinct sessionIds) into `tenant_id` in one transaction; results in line order."""
    check.tenant_id(tenant_id)
    planned = [_Planned(line, transfer.checked_session_id(line, limits)) for line in lines]
    if len({p.session_id for p in planned}) != len(planned):
        raise ValueError("a batch holds each sessionId once")  # the caller's contract, not input
    conn = await uow.begin()
    # The rollups are upserted set-based as the last statement (repo.rollup_batch), not by the insert
    # triggers at the first: concurrent batches of one tenant then wait for a commit, not a batch.
    deferred = await repo.defer_rollups(conn)
    now = datetime.now(UTC)

    existing = {c.session_id: c for c in await repo.lock_by_session(conn, tenant_id, [p.session_id for p in planned])}
    missing = [p for p in planned if p.session_id not in existing]
    wanted_ids = [p.line.conversation.id for p in missing if p.line.conversation.id is not None]
    taken = await repo.ids_taken(conn, tenant_id, wanted_ids) if wanted_ids else set()
    rows = []
    for p in missing:
        wanted = p.line.conversation.id
        if wanted is None or wanted in taken:
            wanted = uuid.uuid4()
        taken.add(wanted)  # two lines of the batch asking for one id: the second gets a new one
        rows.append(_new_row(p, wanted, now))
    inserted = {c.session_id: c for c in await repo.insert_conversations(conn, tenant_id, rows)}
    if len(inserted) != len(missing):  # another import created one of them a moment ago
        raise RetryTransaction
    for p in planned:
        p.created = p.session_id in inserted
        p.conversation = existing.get(p.session_id) or inserted[p.session_id]

    # Only conversations that were there can hold messages already.
    keys = await repo.message_keys(conn, tenant_id, [c.id for c in existing.values()])
    ordered = [transfer.ordered_messages(p.line) for p in planned]
    reused: dict[uuid.UUID, list[transfer.MessageRecord]] = {}  # in line order
    for p, in_order in zip(planned, ordered, strict=True):
        assert p.conversation is not None
        client_ids, _ = keys.get(p.conversation.id, (set(), set()))
        if client_ids:
            reused[p.conversation.id] = [m for m in in_order if m.client_message_id in client_ids]
    await _check_reused_keys(conn, tenant_id, reused)
    for p, in_order in zip(planned, ordered, strict=True):
        assert p.conversation is not None
        client_ids, ids = keys.get(p.conversation.id, (set(), set()))
        p.new, p.skipped, p.last_at = transfer.plan_messages(p.conversation, in_order, client_ids, ids, now)

    batch = [(p.conversation.id, p.new) for p in planned if p.new and p.conversation is not None]
    if batch:
        wanted_count = sum(len(new) for _, new in batch)
        try:
            inserted_count = await repo.insert_messages(conn, tenant_id, batch)
        except asyncpg.UniqueViolationError as exc:
            raise RetryTransaction from exc  # a writer slipped in (it cannot while we hold the rows): read again
        if inserted_count != wanted_count:
            raise RetryTransaction
        moved = await repo.advance(
            conn,
            tenant_id,
            [
                (p.conversation.id, len(p.new), sum(m.token_count for m in p.new), p.last_at)
                for p in planned
                if p.new and p.conversation is not None and p.last_at is not None
            ],
        )
        by_id = {c.id: c for c in moved}
        for p in planned:
            assert p.conversation is not None
            p.conversation = by_id.get(p.conversation.id, p.conversation)

    state = [
        (p.conversation.id, s.key, s.value, s.version, transfer.as_utc(s.updated_at) or now)
        for p in planned
        if p.conversation is not None
        for s in p.line.state
    ]
    state_added = await repo.insert_state(conn, tenant_id, state)
    if deferred:
        await repo.rollup_batch(conn, tenant_id, [p.conversation.id for p in planned if p.created and p.conversation])

    results = []
    for p in planned:
        assert p.conversation is not None and p.new is not None
        added_state = state_added.get(p.conversation.id, 0)
        if p.created or p.new or added_state:
            # Caches drop their copy (an import can insert below a cached tail); subscribers ignore UPDATED.
            uow.emit(DomainEvent(EventType.UPDATED, tenant_id, p.conversation.id, now, conversation=p.conversation))
        results.append(
            ImportResult(
                conversation=p.conversation,
                created=p.created,
                messages_added=len(p.new),
                messages_skipped=p.skipped,
                state_added=added_state,
            )
        )
    return results
