"""What the crons do: close idle sessions, evict cold cache entries, purge by retention, prune
job records. Every function takes `now`, so a test (or an operator) controls the clock.

Tenant settings used here (`tenants.settings` jsonb; a tenant without a row, or without the key,
gets the server default): `idle_timeout_seconds` (0: never close idle sessions) and
`retention_days` (0: keep closed conversations forever).

Cache eviction goes through the hot store's `app.cache.scan` (its eviction fences in-flight
fills): it lists the conversations that have entries and drops the ones named here; the key
layout is the hot store's alone (app/cache/keys.py). The CLOSED event of an idle close is emitted by `conversations.close` itself.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.cache.scan import StoreConnection as Redis
from app.cache.scan import StoreUnavailable as RedisError
from app.cache.scan import cached_conversations
from app.cache.scan import evict_entries as evict
from app.models import Conversation, ConversationRef, Status
from app.services import conversations, deletion
from app.settings import Settings
from db.repositories import conversations as conversation_repo
from db.repositories import maintenance as repo
from db.session import Database, UnitOfWork

log = logging.getLogger("conversation_service.maintenance")

IDLE_CLOSE_REASON = "idle_timeout"


@dataclass(frozen=True, slots=True)
class MaintenanceOptions:
    default_idle_timeout_s: int = 86_400
    default_retention_days: int = 0
    outbox_retention_days: int = 30
    action_log_retention_days: int = 7
    purge_batch: int = 500

    @classmethod
    def from_settings(cls, s: Settings) -> MaintenanceOptions:
        return cls(
            default_idle_timeout_s=s.default_idle_timeout_s,
            default_retention_days=s.default_retention_days,
            outbox_retention_days=s.outbox_retention_days,
            action_log_retention_days=s.action_log_retention_days,
        )

    def idle_timeout_s(self, tenant_settings: Mapping[str, Any] | None) -> int:
        return _non_negative_int((tenant_settings or {}).get("idle_timeout_seconds"), self.default_idle_timeout_s)

    def retention_days(self, tenant_settings: Mapping[str, Any] | None) -> int:
        return _non_negative_int((tenant_settings or {}).get("retention_days"), self.default_retention_days)


def _non_negative_int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


async def _tenants(db: Database) -> tuple[list[str], dict[str, dict[str, Any]]]:
    async with db.read() as conn:
        tenants = await repo.tenants_with_rows(conn, "conversations")
        return tenants, await repo.tenant_settings(conn, tenants)


# --------------------------------------------------------------------------------------------------
# Idle sessions
# --------------------------------------------------------------------------------------------------


async def close_idle(db: Database, now: datetime, options: MaintenanceOptions | None = None) -> list[Conversation]:
    """Close every active conversation idle (no message, or created with none) for longer than its
    tenant's timeout, through `conversations.close` (the CLOSED event and the CRM delivery)."""
    options = options or MaintenanceOptions()
    tenants, settings = await _tenants(db)
    closed: list[Conversation] = []
    for tenant_id in tenants:
        timeout = options.idle_timeout_s(settings.get(tenant_id))
        if timeout <= 0:
            continue
        cutoff = now - timedelta(seconds=timeout)
        async with db.read() as conn:
            ids = await conversation_repo.idle_before(conn, tenant_id, cutoff)
        for conversation_id in ids:
            result = await db.run(_close_if_idle(tenant_id, conversation_id, cutoff))
            if result is not None:
                closed.append(result)
    return closed


def _close_if_idle(
    tenant_id: str, conversation_id: uuid.UUID, cutoff: datetime
) -> Callable[[UnitOfWork], Awaitable[Conversation | None]]:
    async def work(uow: UnitOfWork) -> Conversation | None:
        conn = await uow.begin()
        # The row lock orders us with appends: one that lands first makes the conversation not idle.
        current = await conversation_repo.get(conn, tenant_id, id=conversation_id, for_update=True)
        if current is None or current.status is not Status.ACTIVE or current.last_activity_at >= cutoff:
            return None
        conversation, did_close = await conversations.close(
            uow, tenant_id, ConversationRef(id=conversation_id), IDLE_CLOSE_REASON
        )
        return conversation if did_close else None

    return work


# --------------------------------------------------------------------------------------------------
# Cache eviction
# --------------------------------------------------------------------------------------------------


async def evict_cold(db: Database, redis: Redis) -> int:
    """One pass over the per-conversation keys: evict the cache entries of conversations that
    are closed, archived or gone. Returns entries evicted."""
    by_tenant: dict[str, set[uuid.UUID]] = defaultdict(set)
    async for tenant_id, conversation_id in cached_conversations(redis):
        by_tenant[tenant_id].add(conversation_id)
    doomed: list[tuple[str, uuid.UUID]] = []
    async with db.read() as conn:
        for tenant_id, found in by_tenant.items():
            ids = list(found)
            for i in range(0, len(ids), 1000):
                batch = ids[i : i + 1000]
                active = await repo.active_among(conn, tenant_id, batch)
                doomed += [(tenant_id, cid) for cid in batch if cid not in active]
    return await evict(redis, doomed) if doomed else 0


# --------------------------------------------------------------------------------------------------
# Retention and pruning
# --------------------------------------------------------------------------------------------------


def _purge_batch(tenant_id: str, cutoff: datetime, limit: int) -> Callable[[UnitOfWork], Awaitable[list[uuid.UUID]]]:
    # The deletion service's path (app/services/deletion.py): the same rows go as with
    # deleteConversation, an audit entry (actor 'system') records the counts, and the DELETED
    # events invalidate cached copies and complete live subscriptions after the commit.
    async def work(uow: UnitOfWork) -> list[uuid.UUID]:
        return await deletion.purge_closed(uow, tenant_id, cutoff, limit)

    return work


@dataclass(slots=True)
class PurgeReport:
    conversations: dict[str, int] = field(default_factory=dict)
    cache_entries: int = 0

    @property
    def total(self) -> int:
        return sum(self.conversations.values())


async def purge_expired(
    db: Database, redis: Redis, now: datetime, options: MaintenanceOptions | None = None
) -> PurgeReport:
    """Delete conversations closed before their tenant's retention cutoff through the deletion
    service (messages, sources, state, CRM deliveries, logged answers; audited), then evict
    their cache keys here too (for a `db` whose process has no hot cache listening)."""
    options = options or MaintenanceOptions()
    tenants, settings = await _tenants(db)
    report = PurgeReport()
    purged: set[tuple[str, uuid.UUID]] = set()
    for tenant_id in tenants:
        days = options.retention_days(settings.get(tenant_id))
        if days <= 0:
            continue
        cutoff = now - timedelta(days=days)
        while True:
            ids = await db.run(_purge_batch(tenant_id, cutoff, options.purge_batch))
            purged.update((tenant_id, i) for i in ids)
            if ids:
                report.conversations[tenant_id] = report.conversations.get(tenant_id, 0) + len(ids)
            if len(ids) < options.purge_batch:
                break
    try:
        report.cache_entries = await evict(redis, purged) if purged else 0
    except RedisError as exc:  # the eviction cron evicts them later (their conversations are gone)
        log.warning("could not evict the cache of purged conversations: %s", exc)
    return report


async def prune_job_records(db: Database, now: datetime, options: MaintenanceOptions | None = None) -> dict[str, int]:
    """Settled CRM deliveries older than outbox_retention_days and action-log entries older than
    action_log_retention_days. Pending deliveries are kept whatever their age."""
    options = options or MaintenanceOptions()
    pruned = {"crm_outbox": 0, "action_log": 0}
    async with db.read() as conn:
        outbox_tenants = await repo.tenants_with_rows(conn, "crm_outbox")
        log_tenants = await repo.tenants_with_rows(conn, "action_log")
    outbox_cutoff = now - timedelta(days=options.outbox_retention_days)
    log_cutoff = now - timedelta(days=options.action_log_retention_days)
    async with db.read() as conn:  # single statements: each is atomic on its own
        for tenant_id in outbox_tenants:
            pruned["crm_outbox"] += await repo.prune_outbox(conn, tenant_id, outbox_cutoff)
        for tenant_id in log_tenants:
            pruned["action_log"] += await repo.prune_action_log(conn, tenant_id, log_cutoff)
    return pruned
