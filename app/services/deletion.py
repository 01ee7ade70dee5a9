"""Deleting conversations: deleteConversation, eraseEndUser (GDPR art. 17) and retention purges
all run through `remove` here, so they remove the same things in the same way.

One transaction per call (the caller's UnitOfWork; the service begins it, never commits):
1. the conversations are locked (FOR UPDATE, in id order): appends, state writes and closes that
   lock the row wait, then find no conversation (an append by conversationId answers NOT_FOUND,
   one by sessionId starts a fresh conversation: never half of the old one);
2. their message sources, messages, state keys (tombstones included), CRM deliveries and the
   conversations are deleted, and the action log's answers naming them are scrubbed
   (db/repositories/deletion.py);
3. one audit entry records who did it and the counts (never content; an end user's id only as
   its SHA-256, enough to answer "was this user erased?" for someone who knows the id);
4. one DELETED event per conversation is emitted. After the commit, `Database.run` hands them to
   the hot cache first (it invalidates the entry, drops the sessionId mapping and this process's
   decoded copies; a Redis failure marks the entry dirty until Redis acknowledges, as for every
   write) and then to the live fan-out (messageAdded subscriptions to it complete).

Repeating a deletion removes nothing more and returns zeros; deleteConversation still emits the
event, so a repeat also re-invalidates a cache entry a Redis outage may have left behind.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from app.cache import profiles
from app.cache.scan import StoreConnection as Redis
from app.models import Conversation, DomainEvent, EventType
from app.services import audit
from app.services import limits as check
from app.services.conversations import parse_uuid
from app.services.limits import DEFAULT_LIMITS, Limits
from db.repositories import deletion as repo
from db.session import UnitOfWork

log = logging.getLogger("conversation_service.deletion")

DELETE_CONVERSATION = "deleteConversation"
ERASE_END_USER = "eraseEndUser"
RETENTION_PURGE = "retentionPurge"


@dataclass(frozen=True, slots=True)
class DeletionResult:
    conversations: int = 0
    messages: int = 0
    #: Live state keys (tombstones of keys deleted earlier go too, uncounted).
    state_keys: int = 0


def user_digest(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()


async def remove(uow: UnitOfWork, tenant_id: str, found: list[Conversation]) -> repo.Removed:
    """Delete these locked conversations and everything of theirs; emit their DELETED events.
    Call inside `uow.begin()`'s transaction, after locking them (repo.lock_*)."""
    removed = await repo.delete(uow.conn, tenant_id, [c.id for c in found])
    now = datetime.now(UTC)
    for conversation in found:
        uow.emit(DomainEvent(EventType.DELETED, tenant_id, conversation.id, now, conversation=conversation))
    return removed


def _details(removed: repo.Removed) -> dict[str, int]:
    return {
        "conversations": removed.conversations,
        "messages": removed.messages,
        "stateKeys": removed.state_keys,
        "sources": removed.sources,
        "crmDeliveries": removed.crm_deliveries,
        "actionAnswers": removed.action_answers,
        "deadLetters": removed.dead_letters,
    }


def _result(removed: repo.Removed) -> DeletionResult:
    return DeletionResult(removed.conversations, removed.messages, removed.state_keys)


async def delete_conversation(
    uow: UnitOfWork, tenant_id: str, conversation_id: uuid.UUID | str, actor: str
) -> DeletionResult:
    """Delete one conversation of this tenant. An unknown id (another tenant's, or one deleted
    already) removes nothing and returns zeros: the outcome the caller wants holds either way."""
    check.tenant_id(tenant_id)
    cid = parse_uuid(conversation_id, "id")
    conn = await uow.begin()
    found = await repo.lock_by_ids(conn, tenant_id, [cid])
    removed = await remove(uow, tenant_id, found)
    if not found:
        # Nothing to delete, but a cache entry or a live subscription may have outlived an earlier
        # deletion (Redis down then): the event invalidates and completes them again.
        uow.emit(DomainEvent(EventType.DELETED, tenant_id, cid, datetime.now(UTC)))
    await audit.record(conn, tenant_id, actor, DELETE_CONVERSATION, {"conversationId": str(cid), **_details(removed)})
    return _result(removed)


async def erase_end_user(
    uow: UnitOfWork,
    tenant_id: str,
    user_id: str,
    actor: str,
    *,
    redis: Redis | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> DeletionResult:
    """Every conversation of `user_id` in this tenant, as delete_conversation does for each, in
    one transaction; after the commit, the user's cached CRM profile (when `redis` is given)."""
    check.tenant_id(tenant_id)
    user = check.text(user_id, "userId", limits.max_id_length, required=True)
    assert user is not None
    conn = await uow.begin()
    found = await repo.lock_by_user(conn, tenant_id, user)
    removed = await remove(uow, tenant_id, found)
    await audit.record(conn, tenant_id, actor, ERASE_END_USER, {"userIdSha256": user_digest(user), **_details(removed)})
    if redis is not None:
        store = redis

        async def forget_profile() -> None:
            await profiles.forget_profile(store, tenant_id, user)  # else it expires within CRM_PROFILE_TTL_S

        uow.after_commit(forget_profile)
    return _result(removed)


async def purge_closed(
    uow: UnitOfWork, tenant_id: str, cutoff: datetime, limit: int, actor: str = audit.SYSTEM
) -> list[uuid.UUID]:
    """Retention: up to `limit` conversations closed before `cutoff`, deleted as above (rows locked
    by a writer are skipped: the next run gets them). One audit entry when anything went."""
    conn = await uow.begin()
    found = await repo.lock_closed_before(conn, tenant_id, cutoff, limit)
    if not found:
        return []
    removed = await remove(uow, tenant_id, found)
    await audit.record(
        conn, tenant_id, actor, RETENTION_PURGE, {"closedBefore": cutoff.isoformat(), **_details(removed)}
    )
    return [c.id for c in found]
