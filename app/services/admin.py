"""Admin operations on the caller's own tenant: API keys, dead letters, CRM deliveries.
Every change writes its audit entry in its own transaction (app/services/audit.py).
Tenant settings: app/services/tenant_settings.py."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app import models
from app.errors import BadUserInput, NotFound
from app.services import audit, crm, cursors, tenants
from app.services import limits as check
from app.services.tenants import ApiKey, KeyRevoked
from db.repositories import admin as repo
from db.repositories import conversations as conversation_repo
from db.repositories import tenants as tenant_repo
from db.session import Connection, Database, UnitOfWork

log = logging.getLogger("conversation_service.admin")

# --- API keys --------------------------------------------------------------------------------------


async def create_key(
    uow: UnitOfWork,
    tenant_id: str,
    actor: str,
    *,
    scopes: list[str],
    name: str | None,
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    parsed = tenants.parse_scopes(scopes)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise BadUserInput("expiresAt needs a time zone (e.g. 2027-01-01T00:00:00Z)", field="expiresAt")
        if expires_at <= datetime.now(UTC):
            raise BadUserInput("expiresAt must be in the future", field="expiresAt")
    await uow.begin()
    key, secret = await tenants.create_api_key(uow, tenant_id, parsed, name, expires_at)
    details = {"keyId": str(key.id), "name": key.name, "scopes": [s.value for s in key.scopes]}
    await audit.record(uow.conn, tenant_id, actor, "createApiKey", details | {"expiresAt": _iso(expires_at)})
    return key, secret


async def list_keys(conn: Connection, tenant_id: str, *, include_revoked: bool) -> list[ApiKey]:
    keys = await tenants.list_api_keys(conn, tenant_id)
    return [k for k in keys if include_revoked or k.revoked_at is None]


async def revoke_key(
    uow: UnitOfWork, tenant_id: str, actor: str, key_id: str, *, announce: KeyRevoked | None = None
) -> ApiKey:
    """Revoke one of the tenant's keys (idempotent); after commit `announce` closes its live
    connections and drops it from every API process's key cache."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise BadUserInput("id is not an API key id", field="id") from None
    conn = await uow.begin()
    row = await tenant_repo.revoke_tenant_key(conn, tenant_id, parsed)
    if row is None:
        raise NotFound("api key not found", id=key_id)
    key = tenants.key_of(row)
    await audit.record(conn, tenant_id, actor, "revokeApiKey", {"keyId": key_id, "name": key.name})
    if announce is not None:
        uow.after_commit(lambda: announce(key))
    return key


# --- dead letters ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: uuid.UUID
    kind: str
    action_type: str | None
    action_id: str | None
    correlation_id: str | None
    error: Any
    failed_at: datetime
    envelope: Any
    replayed_at: datetime | None


def _letter(row: asyncpg.Record) -> DeadLetter:
    return DeadLetter(**{k: v for k, v in row.items() if k != "tenant_id"})


def dead_letter_id(job_id: str, enqueue_time: Any) -> uuid.UUID:
    """One id per run of a job: a retried answer records nothing twice, a replay's failure is new."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"cs-dead-letter:{job_id}:{enqueue_time}")


async def record_dead_letter(db: Database, letter: dict[str, Any], letter_id: uuid.UUID) -> None:
    """Keep the letter for its tenant, when it names one that exists (best effort: the Redis
    dead-letter list has every letter anyway)."""
    tenant_id = letter.get("tenant_id")
    if not isinstance(tenant_id, str) or letter.get("kind") in ("unauthenticated", "undecodable"):
        return  # no tenant to trust: a forged or unreadable envelope stays out of tenant views
    raw = letter.get("envelope")
    stored = {**letter, "envelope": json.loads(raw) if isinstance(raw, str) else None}
    try:
        await db.run(lambda uow: repo.insert_dead_letter(uow.conn, tenant_id, letter_id, stored))
    except Exception as exc:
        log.warning("dead letter %s not kept in Postgres (it is in the Redis list): %r", letter_id, exc)


def _at_cursor(at: datetime, id: uuid.UUID) -> str:
    return cursors.conversation_cursor(at, id)


async def dead_letters(
    conn: Connection, tenant_id: str, first: int | None, after: str | None, limits: check.Limits
) -> models.Page[DeadLetter]:
    limit = check.page_size(first, limits, "first") or 20
    position = cursors.parse_conversation_cursor(after) if after else None
    rows = await repo.dead_letter_page(conn, tenant_id, limit + 1, position)
    items = [_letter(r) for r in rows[:limit]]
    return models.Page(
        items=items,
        cursor_of=lambda d: _at_cursor(d.failed_at, d.id),
        has_next_page=len(rows) > limit,
        has_previous_page=position is not None,
        total_count=len(items),
    )


Enqueue = Callable[[str, dict[str, Any], str], Awaitable[None]]
"""Puts (arq function, envelope, job id) on the queue again, replacing a kept result of that job id."""


async def replay_dead_letter(
    uow: UnitOfWork, tenant_id: str, actor: str, letter_id: str, enqueue: Enqueue
) -> DeadLetter:
    """Enqueue the letter's envelope again under its own action_id. The action log (and, for
    save_message, the clientMessageId) makes a replayed action apply at most once, however often
    it is replayed. The enqueue happens before commit: if it fails nothing is marked."""
    try:
        parsed = uuid.UUID(letter_id)
    except ValueError:
        raise BadUserInput("id is not a dead letter id", field="id") from None
    conn = await uow.begin()
    row = await repo.dead_letter_for_update(conn, tenant_id, parsed)
    if row is None:
        raise NotFound("dead letter not found", id=letter_id)
    letter = _letter(row)
    envelope, action_id = letter.envelope, letter.action_id
    if not isinstance(envelope, dict) or not letter.action_type or not action_id:
        raise BadUserInput("this dead letter kept no envelope to replay (too large or unreadable)", field="id")
    await enqueue(letter.action_type, envelope, action_id)
    marked = _letter(await repo.mark_replayed(conn, tenant_id, parsed))
    details = {"deadLetterId": letter_id, "actionType": letter.action_type, "actionId": action_id}
    await audit.record(conn, tenant_id, actor, "replayDeadLetter", details)
    return marked


# --- CRM deliveries --------------------------------------------------------------------------------


async def deliveries(
    conn: Connection,
    tenant_id: str,
    status: crm.CrmSyncStatus | None,
    first: int | None,
    after: str | None,
    limits: check.Limits,
) -> models.Page[crm.CrmSyncRecord]:
    limit = check.page_size(first, limits, "first") or 20
    position = cursors.parse_conversation_cursor(after) if after else None
    rows = await repo.delivery_page(conn, tenant_id, status.value if status else None, limit + 1, position)
    items = [crm.record_of(r) for r in rows[:limit]]
    return models.Page(
        items=items,
        cursor_of=lambda d: _at_cursor(d.created_at, d.id),
        has_next_page=len(rows) > limit,
        has_previous_page=position is not None,
        total_count=len(items),
    )


async def redeliver(uow: UnitOfWork, tenant_id: str, actor: str, conversation_id: str) -> crm.CrmSyncRecord:
    """Send the conversation to the CRM again, now. Idempotent: the newest delivery is made due
    again (a failed one with its attempts from zero); a new one only when the newest was delivered."""
    try:
        parsed = uuid.UUID(conversation_id)
    except ValueError:
        raise BadUserInput("conversationId is not a conversation id", field="conversationId") from None
    conn = await uow.begin()
    if await conversation_repo.get(conn, tenant_id, id=parsed) is None:
        raise NotFound("conversation not found", conversationId=conversation_id)
    latest = await crm.crm_sync_status(conn, tenant_id, parsed)
    if latest is None or latest.status is crm.CrmSyncStatus.DELIVERED:
        record = await crm.request_sync(uow, tenant_id, parsed)
    else:
        record = crm.record_of(await repo.requeue_delivery(conn, tenant_id, latest.id))
        crm.dispatch_after_commit(uow, tenant_id, record.id)
    details = {"conversationId": conversation_id, "deliveryId": str(record.id)}
    await audit.record(conn, tenant_id, actor, "redeliverCrmSync", details)
    return record


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
