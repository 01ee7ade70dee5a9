"""Conversation state: versioned keys with compare-and-set.

A key's version only goes up: 1 when first written, +1 on every write and on a delete, and a
key written again after a delete continues from there (its tombstone keeps the version), so an
expectedVersion a client read before a delete can never match a later value (no ABA)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from app.errors import BadUserInput, Conflict, NotFound
from app.models import ConversationRef, DomainEvent, EventType, StateEntry
from app.services import limits as check
from app.services.limits import DEFAULT_LIMITS, Limits
from db.repositories import conversations as conversation_repo
from db.repositories import state as repo
from db.session import Connection, UnitOfWork

if TYPE_CHECKING:
    from app.cache.client import HotCache


def _key(key: str, limits: Limits) -> str:
    value = check.text(key, "key", limits.max_state_key_length, required=True)
    assert value is not None
    return value


async def _require_conversation(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> None:
    if await conversation_repo.get(conn, tenant_id, id=conversation_id) is None:
        raise NotFound("conversation not found", conversationId=str(conversation_id))


async def get(
    conn: Connection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    key: str,
    limits: Limits = DEFAULT_LIMITS,
    *,
    cache: HotCache | None = None,
) -> StateEntry | None:
    key = _key(key, limits)
    if cache is not None:
        cached = await cache.state_entries(tenant_id, conversation_id)
        if cached is not None:
            return next((e for e in cached if e.key == key), None)
    return await repo.get(conn, tenant_id, conversation_id, key)


async def list_(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, *, cache: HotCache | None = None
) -> list[StateEntry]:
    """All keys, sorted by key; from the `cache` when it holds them."""
    if cache is not None:
        cached = await cache.state_entries(tenant_id, conversation_id)
        if cached is not None:
            return cached
    return await repo.list_(conn, tenant_id, conversation_id)


async def list_many(
    conn: Connection, tenant_id: str, conversation_ids: list[uuid.UUID], *, cache: HotCache | None = None
) -> dict[uuid.UUID, list[StateEntry]]:
    found = await cache.states(tenant_id, conversation_ids) if cache is not None else {}
    missing = [cid for cid in conversation_ids if cid not in found]
    if missing:
        found.update(await repo.list_many(conn, tenant_id, missing))
    return found


async def set_(
    uow: UnitOfWork,
    tenant_id: str,
    conversation_id: uuid.UUID,
    key: str,
    value: Any,
    *,
    expected_version: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> StateEntry:
    """Write a key: version 1 when first created, +1 on every write (and after a delete);
    expectedVersion 0 means "must not exist" (a deleted key does not)."""
    key = _key(key, limits)
    if expected_version is not None and expected_version < 0:
        raise BadUserInput("expectedVersion must not be negative", field="expectedVersion")
    check.json_value(value, "value", limits.max_state_value_bytes, limits.max_json_depth)
    try:
        entry = await repo.put(uow.conn, tenant_id, conversation_id, key, value, expected_version)
    except asyncpg.ForeignKeyViolationError:
        # The conversation was deleted while this write waited on its row (app/services/deletion.py).
        raise NotFound("conversation not found", conversationId=str(conversation_id)) from None
    if entry is not None:
        uow.emit(
            DomainEvent(
                EventType.STATE_CHANGED, tenant_id, conversation_id, entry.updated_at, state_key=key, state=entry
            )
        )
        return entry
    await _require_conversation(uow.conn, tenant_id, conversation_id)
    current = await repo.get(uow.conn, tenant_id, conversation_id, key)
    raise Conflict(
        f"expectedVersion {expected_version} does not match the current version {current.version if current else 0}",
        expectedVersion=expected_version,
        currentVersion=current.version if current else 0,
    )


async def set_by_ref(
    uow: UnitOfWork,
    tenant_id: str,
    target: ConversationRef,
    key: str,
    value: Any,
    *,
    expected_version: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> StateEntry:
    """`set_` on a conversation named by id or sessionId (the update_state action): one use case,
    so the edge makes one call and the lookup shares the write's transaction."""
    conn = await uow.begin()
    conversation = await conversation_repo.get(conn, tenant_id, id=target.id, session_id=target.session_id)
    if conversation is None:
        raise NotFound("conversation not found", conversationId=str(target.id) if target.id else None)
    return await set_(uow, tenant_id, conversation.id, key, value, expected_version=expected_version, limits=limits)


async def delete(
    uow: UnitOfWork, tenant_id: str, conversation_id: uuid.UUID, key: str, limits: Limits = DEFAULT_LIMITS
) -> bool:
    """True when the key existed (its version goes on from here). NOT_FOUND when the conversation does not."""
    key = _key(key, limits)
    if await repo.delete(uow.conn, tenant_id, conversation_id, key):
        uow.emit(DomainEvent(EventType.STATE_CHANGED, tenant_id, conversation_id, datetime.now(UTC), state_key=key))
        return True
    await _require_conversation(uow.conn, tenant_id, conversation_id)
    return False
