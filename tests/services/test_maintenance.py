"""The crons against real data, with the clock in the test's hands: idle-close, cache eviction,
retention purge, pruning. The cron job functions run with an in-process worker state whose
clock is the test's; the services they call take `now` too."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from app.cache.keys import conversation_keys, conversation_of_key
from app.models import ConversationRef, DomainEvent, EventType, Role, Source, Status
from app.services import conversations, crm, maintenance, state, tenants
from app.services.maintenance import MaintenanceOptions
from db.session import Database, UnitOfWork
from jobs import maintenance as crons
from tests.conftest import Servers
from tests.factories import add_message, count_rows, create_conversation
from tests.jobs.helpers import worker_state


async def _configure(db: Database, tenant: str, settings: dict[str, Any]) -> None:
    async def work(uow: UnitOfWork) -> None:
        await tenants.ensure_tenant(uow, tenant)
        await tenants.update_tenant_settings(uow, tenant, settings)

    await db.run(work)


async def _get(db: Database, tenant: str, conversation_id: uuid.UUID) -> Any:
    async with db.read() as conn:
        return await conversations.find(conn, tenant, ConversationRef(id=conversation_id))


async def test_idle_sessions_close_on_the_tenants_timeout_with_an_event_and_a_crm_delivery(
    servers: Servers, db: Database, tenant: str, other_tenant: str
) -> None:
    await _configure(
        db,
        tenant,
        {"idle_timeout_seconds": 600, "crm_webhook_url": "http://127.0.0.1:9/x", "crm_webhook_secret": "s"},
    )
    await _configure(db, other_tenant, {"idle_timeout_seconds": 0})  # never closes idle sessions
    empty = await create_conversation(db, tenant)
    talked = await create_conversation(db, tenant)
    await add_message(db, tenant, talked, content="hello")
    keep = await create_conversation(db, other_tenant)
    start = datetime.now(UTC)
    # What the cache and the live fan-out hear after each commit (the worker's Database has them).
    heard: list[DomainEvent] = []
    listening = Database(db.pool)

    async def listener(events: list[DomainEvent]) -> None:
        heard.extend(e for e in events if e.tenant_id == tenant)

    listening.listen(listener)

    # Nine minutes later nothing is idle yet.
    # (Other tests' tenants share this database and may have shorter timeouts: look at ours.)
    async with worker_state(servers, listening, "unused", clock=lambda: start + timedelta(minutes=9)) as ctx:
        await crons.close_idle_sessions(ctx)
    assert (await _get(db, tenant, empty.id)).status is Status.ACTIVE
    assert (await _get(db, tenant, talked.id)).status is Status.ACTIVE
    assert heard == []
    # Eleven minutes later both of the tenant's are, the other tenant's never.
    async with worker_state(servers, listening, "unused", clock=lambda: start + timedelta(minutes=11)) as ctx:
        result = await crons.close_idle_sessions(ctx)
    assert result["closed"] >= 2
    for c in (empty, talked):
        closed = await _get(db, tenant, c.id)
        assert closed.status is Status.CLOSED and closed.close_reason == maintenance.IDLE_CLOSE_REASON
        async with db.read() as conn:
            record = await crm.crm_sync_status(conn, tenant, c.id)
        assert record is not None and record.trigger == "closed"
    assert sorted((e.type, e.conversation_id) for e in heard) == sorted(
        [(EventType.CLOSED, empty.id), (EventType.CLOSED, talked.id)]
    )
    assert (await _get(db, other_tenant, keep.id)).status is Status.ACTIVE


async def test_a_conversation_that_became_active_again_is_not_closed(db: Database, tenant: str) -> None:
    c = await create_conversation(db, tenant)
    await add_message(db, tenant, c)
    fresh = await _get(db, tenant, c.id)
    # The scan saw it idle with a cutoff just before its latest message: the locked re-check wins.
    cutoff = fresh.last_activity_at - timedelta(microseconds=1)
    assert await db.run(maintenance._close_if_idle(tenant, c.id, cutoff)) is None
    assert (await _get(db, tenant, c.id)).status is Status.ACTIVE


async def _cache_entry(redis: Redis, tenant: str, conversation_id: uuid.UUID) -> None:
    """A cached conversation as app/cache/ lays it out (header hash, message list, state hash)."""
    hdr, msgs, state_key = conversation_keys(tenant, conversation_id)
    await redis.hset(hdr, mapping={"v": 1, "b": "boot", "c": "{}", "s": 1, "n": 1})  # type: ignore[misc]
    await redis.rpush(msgs, "[]")  # type: ignore[misc]
    await redis.hset(state_key, "\0", "1")  # type: ignore[misc]


async def _cached(redis: Redis, tenant: str, conversation_id: uuid.UUID) -> bool:
    hdr, msgs, _ = conversation_keys(tenant, conversation_id)
    return bool(await redis.hexists(hdr, "c")) and bool(await redis.exists(msgs))  # type: ignore[misc]


async def test_eviction_drops_the_cache_of_closed_and_gone_conversations_only(
    servers: Servers, db: Database, redis: Redis, tenant: str
) -> None:
    active = await create_conversation(db, tenant)
    closed = await create_conversation(db, tenant)
    await db.run(lambda uow: conversations.close(uow, tenant, ConversationRef(id=closed.id)))
    gone = uuid.uuid4()
    for cid in (active.id, closed.id, gone):
        await _cache_entry(redis, tenant, cid)
    tenant_wide = f"cs:{{{tenant}}}:crm:customer:abc"
    await redis.set(tenant_wide, "1")
    async with worker_state(servers, db, "unused") as ctx:
        result = await crons.evict_cold_cache(ctx)
    assert result["evicted"] >= 2
    assert await _cached(redis, tenant, active.id)
    assert not await _cached(redis, tenant, closed.id) and not await _cached(redis, tenant, gone)
    assert await redis.exists(tenant_wide)
    await redis.delete(tenant_wide, *conversation_keys(tenant, active.id))


def test_conversation_keys_are_recognised_by_their_hash_tag() -> None:
    cid = uuid.uuid4()
    assert conversation_of_key(f"cs:{{acme:eu:{cid}}}:m") == ("acme:eu", cid)
    assert conversation_of_key(f"cs:{{acme:{cid}}}".encode()) == ("acme", cid)
    assert conversation_of_key("cs:{acme}:crm:customer:x") is None
    assert conversation_of_key(f"arq:{{acme:{cid}}}") is None
    assert conversation_of_key("cs:{acme:not-a-uuid}:x") is None


async def test_retention_purges_conversations_closed_before_the_cutoff_with_everything_they_own(
    servers: Servers, db: Database, redis: Redis, tenant: str, other_tenant: str
) -> None:
    await _configure(
        db, tenant, {"retention_days": 30, "crm_webhook_url": "http://127.0.0.1:9/x", "crm_webhook_secret": "s"}
    )
    old = await create_conversation(db, tenant)
    await add_message(db, tenant, old, role=Role.ASSISTANT, content="cited", sources=[Source(document_id="d")])
    await db.run(lambda uow: state.set_(uow, tenant, old.id, "k", {"v": 1}))
    await db.run(lambda uow: conversations.close(uow, tenant, ConversationRef(id=old.id)))
    open_one = await create_conversation(db, tenant)
    await add_message(db, tenant, open_one)
    untouched = await create_conversation(db, other_tenant)  # no retention: kept forever
    await db.run(lambda uow: conversations.close(uow, other_tenant, ConversationRef(id=untouched.id)))
    await _cache_entry(redis, tenant, old.id)
    start = datetime.now(UTC)

    async with worker_state(servers, db, "unused", clock=lambda: start + timedelta(days=29)) as ctx:
        assert (await crons.purge_expired(ctx))["conversations"] == 0
    assert await count_rows(db, "messages", tenant) == 2

    async with worker_state(servers, db, "unused", clock=lambda: start + timedelta(days=31)) as ctx:
        result = await crons.purge_expired(ctx)
    assert result["conversations"] >= 1 and result["cache_entries"] >= 1
    assert await _get(db, tenant, old.id) is None
    for table in ("messages", "message_sources", "conversation_state", "crm_outbox"):
        remaining = await count_rows(db, table, tenant)
        assert remaining == (1 if table == "messages" else 0), table
    assert await _get(db, tenant, open_one.id) is not None
    assert await _get(db, other_tenant, untouched.id) is not None
    assert not await _cached(redis, tenant, old.id)


async def test_retention_purges_in_batches(db: Database, redis: Redis, tenant: str) -> None:
    await _configure(db, tenant, {"retention_days": 1})
    for _ in range(5):
        c = await create_conversation(db, tenant)
        await db.run(functools.partial(conversations.close, tenant_id=tenant, target=ConversationRef(id=c.id)))
    report = await maintenance.purge_expired(
        db, redis, datetime.now(UTC) + timedelta(days=2), MaintenanceOptions(purge_batch=2)
    )
    assert report.conversations[tenant] == 5
    assert await count_rows(db, "conversations", tenant) == 0


async def test_pruning_keeps_pending_deliveries_and_recent_records(servers: Servers, db: Database, tenant: str) -> None:
    await _configure(db, tenant, {"crm_webhook_url": "http://127.0.0.1:9/x"})
    settled = await create_conversation(db, tenant)
    pending = await create_conversation(db, tenant)
    for c in (settled, pending):
        await db.run(functools.partial(conversations.close, tenant_id=tenant, target=ConversationRef(id=c.id)))
    async with db.read() as conn:
        await conn.execute(
            "UPDATE crm_outbox SET status = 'delivered' WHERE tenant_id = $1 AND conversation_id = $2",
            tenant,
            settled.id,
        )
        await conn.execute(
            "INSERT INTO action_log (tenant_id, action_id, action_type, response) VALUES ($1, 'a1', 't', '{}')",
            tenant,
        )
    start = datetime.now(UTC)
    async with worker_state(servers, db, "unused", clock=lambda: start + timedelta(days=6)) as ctx:
        await crons.prune_job_records(ctx)
    assert await count_rows(db, "crm_outbox", tenant) == 2 and await count_rows(db, "action_log", tenant) == 1
    async with worker_state(servers, db, "unused", clock=lambda: start + timedelta(days=31)) as ctx:
        result = await crons.prune_job_records(ctx)
    assert result["crm_outbox"] >= 1 and result["action_log"] >= 1
    assert await count_rows(db, "crm_outbox", tenant) == 1  # the pending one stays
    assert await count_rows(db, "action_log", tenant) == 0
