"""CRM service: the outbox row in the closing transaction, dispatch after commit, delivery
attempts against a real loopback HTTP server, signatures, status, customer profiles."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.embedded.process import free_port
from app.errors import BadUserInput, NotFound
from app.models import ConversationRef
from app.services import conversations, crm, tenants
from app.services.crm import CrmOptions, CrmSyncStatus
from db.session import Database, UnitOfWork
from tests.factories import add_message, count_rows, create_conversation
from tests.jobs.fake_crm import FakeCrm

SECRET = "s3cret"
FAST = CrmOptions(timeout_s=2, retry_base_s=0.05, retry_max_s=0.1, lease_s=30)


async def _configure(db: Database, tenant: str, settings: dict[str, Any]) -> None:
    async def work(uow: UnitOfWork) -> None:
        await tenants.ensure_tenant(uow, tenant)
        await tenants.update_tenant_settings(uow, tenant, settings)

    await db.run(work)


async def _close(db: Database, tenant: str, conversation_id: uuid.UUID) -> None:
    await db.run(lambda uow: conversations.close(uow, tenant, ConversationRef(id=conversation_id), "bye"))


async def _status(db: Database, tenant: str, conversation_id: uuid.UUID) -> crm.CrmSyncRecord | None:
    async with db.read() as conn:
        return await crm.crm_sync_status(conn, tenant, conversation_id)


def test_signatures_verify_and_refuse_tampering_and_replays() -> None:
    body = b'{"a":1}'
    now = int(time.time())
    signature = crm.sign(SECRET, now, body)
    assert signature.startswith("v1=") and crm.verify(SECRET, str(now), signature, body)
    assert not crm.verify(SECRET, str(now), signature, b'{"a":2}')
    assert not crm.verify("other", str(now), signature, body)
    assert not crm.verify(SECRET, str(now - 301), crm.sign(SECRET, now - 301, body), body)
    assert not crm.verify(SECRET, None, signature, body) and not crm.verify(SECRET, "x", signature, body)


async def test_closing_writes_a_delivery_in_the_same_transaction_only_for_tenants_with_a_crm(
    db: Database, tenant: str, other_tenant: str
) -> None:
    plain = await create_conversation(db, other_tenant)
    await _close(db, other_tenant, plain.id)
    assert await count_rows(db, "crm_outbox", other_tenant) == 0
    assert await _status(db, other_tenant, plain.id) is None

    await _configure(db, tenant, {"crm_webhook_url": "http://127.0.0.1:9/hook", "crm_webhook_secret": SECRET})
    c = await create_conversation(db, tenant)
    await _close(db, tenant, c.id)
    await _close(db, tenant, c.id)  # idempotent: no second delivery
    record = await _status(db, tenant, c.id)
    assert record is not None and record.status is CrmSyncStatus.PENDING and record.attempts == 0
    assert record.trigger == "closed" and record.next_attempt_at is not None
    assert await count_rows(db, "crm_outbox", tenant) == 1

    # A close that rolls back leaves no delivery behind, and nothing is dispatched.
    dispatched: list[tuple[str, uuid.UUID, int]] = []

    async def dispatch(tenant_id: str, outbox_id: uuid.UUID, attempts: int) -> None:
        dispatched.append((tenant_id, outbox_id, attempts))

    crm.set_dispatcher(dispatch)
    try:
        doomed = await create_conversation(db, tenant)

        async def close_then_fail(uow: UnitOfWork) -> None:
            await conversations.close(uow, tenant, ConversationRef(id=doomed.id))
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.run(close_then_fail)
        assert await count_rows(db, "crm_outbox", tenant) == 1 and not dispatched
        await _close(db, tenant, doomed.id)
        (record2,) = [r for r in [await _status(db, tenant, doomed.id)] if r]
        assert dispatched == [(tenant, record2.id, 0)]  # after commit, with the committed row
    finally:
        crm.set_dispatcher(None)


async def test_a_failing_dispatch_does_not_fail_the_close(db: Database, tenant: str) -> None:
    await _configure(db, tenant, {"crm_webhook_url": "http://127.0.0.1:9/hook", "crm_webhook_secret": SECRET})

    async def broken(tenant_id: str, outbox_id: uuid.UUID, attempts: int) -> None:
        raise ConnectionError("redis is down")

    crm.set_dispatcher(broken)
    try:
        c = await create_conversation(db, tenant)
        closed, did = await db.run(lambda uow: conversations.close(uow, tenant, ConversationRef(id=c.id)))
    finally:
        crm.set_dispatcher(None)
    assert did and closed.status.value == "closed"
    assert (await _status(db, tenant, c.id)) is not None  # the sweep will deliver it


async def test_delivery_retries_with_backoff_then_succeeds_keeping_the_last_error(db: Database, tenant: str) -> None:
    with FakeCrm(SECRET, fail_first=1) as fake:
        await _configure(db, tenant, fake.tenant_settings())
        c = await create_conversation(db, tenant, user_id="u1", agent_id="a1", tags=["t"], metadata={"m": 1})
        for i in range(12):
            await add_message(db, tenant, c, content=f"m{i}")
        await _close(db, tenant, c.id)
        record = await _status(db, tenant, c.id)
        assert record is not None
        async with httpx.AsyncClient() as http:
            first = await crm.deliver(db, http, tenant, record.id, FAST)
            assert not first.delivered and first.retry_in_s is not None and 0.04 <= first.retry_in_s <= 0.05
            assert first.record is not None and first.record.attempts == 1
            assert (
                first.record.status is CrmSyncStatus.PENDING
                and first.record.last_error == 'HTTP 500: {"error": "try later"}'
            )
            early = await crm.deliver(db, http, tenant, record.id, FAST)
            assert early.record is None  # not due yet: nothing sent
            await asyncio.sleep(first.retry_in_s + 0.02)
            second = await crm.deliver(db, http, tenant, record.id, FAST)
            assert second.delivered and second.record is not None
            assert second.record.status is CrmSyncStatus.DELIVERED and second.record.attempts == 2
            assert second.record.last_error is not None and second.record.delivered_at is not None
            assert (await crm.deliver(db, http, tenant, record.id, FAST)).record is None  # settled
        (payload,) = fake.accepted.values()
        assert len(fake.calls) == 2 and all(call["key"] == str(record.id) for call in fake.calls)
    conv = payload["conversation"]
    assert payload["tenant_id"] == tenant and payload["attempt"] == 2 and payload["event"] == "conversation.closed"
    assert (
        conv["id"] == str(c.id) and conv["user_id"] == "u1" and conv["tags"] == ["t"] and conv["metadata"] == {"m": 1}
    )
    assert conv["message_count"] == 12 and conv["close_reason"] == "bye"
    assert [m["seq"] for m in payload["last_messages"]] == list(range(3, 13))  # the last 10


async def test_delivery_gives_up_after_the_tenants_attempts(db: Database, tenant: str) -> None:
    port = free_port()  # nobody listens: connection refused
    await _configure(
        db,
        tenant,
        {"crm_webhook_url": f"http://127.0.0.1:{port}/hook", "crm_webhook_secret": SECRET, "crm_max_attempts": 2},
    )
    c = await create_conversation(db, tenant)
    await _close(db, tenant, c.id)
    record = await _status(db, tenant, c.id)
    assert record is not None
    async with httpx.AsyncClient() as http:
        first = await crm.deliver(db, http, tenant, record.id, FAST)
        assert first.retry_in_s is not None
        await asyncio.sleep(first.retry_in_s + 0.02)
        last = await crm.deliver(db, http, tenant, record.id, FAST)
    assert last.retry_in_s is None and last.record is not None
    assert last.record.status is CrmSyncStatus.FAILED and last.record.attempts == 2
    assert last.record.last_error is not None and "ConnectError" in last.record.last_error


async def test_a_webhook_without_a_secret_fails_at_once(db: Database, tenant: str) -> None:
    await _configure(db, tenant, {"crm_webhook_url": "http://127.0.0.1:9/hook"})
    c = await create_conversation(db, tenant)
    await _close(db, tenant, c.id)
    record = await _status(db, tenant, c.id)
    assert record is not None
    async with httpx.AsyncClient() as http:
        result = await crm.deliver(db, http, tenant, record.id, FAST)
    assert result.record is not None and result.record.status is CrmSyncStatus.FAILED
    assert "crm_webhook_secret" in (result.record.last_error or "")


async def test_a_claimed_delivery_is_not_sent_twice_at_once(db: Database, tenant: str) -> None:
    await _configure(db, tenant, {"crm_webhook_url": "http://127.0.0.1:9/hook", "crm_webhook_secret": SECRET})
    c = await create_conversation(db, tenant)
    await _close(db, tenant, c.id)
    record = await _status(db, tenant, c.id)
    assert record is not None
    from db.repositories import crm as repo

    claims = await asyncio.gather(*[db.run(lambda uow: repo.claim(uow.conn, tenant, record.id, 30)) for _ in range(5)])
    assert sum(1 for claim in claims if claim is not None) == 1


async def test_sync_requests(db: Database, tenant: str, other_tenant: str) -> None:
    c = await create_conversation(db, tenant)
    with pytest.raises(BadUserInput):
        await db.run(lambda uow: crm.request_sync(uow, tenant, c.id))
    await _configure(db, tenant, {"crm_webhook_url": "http://127.0.0.1:9/hook", "crm_webhook_secret": SECRET})
    with pytest.raises(NotFound):
        await db.run(lambda uow: crm.request_sync(uow, tenant, uuid.uuid4()))
    with pytest.raises(NotFound):  # another tenant's conversation
        await db.run(lambda uow: crm.request_sync(uow, other_tenant, c.id))
    first = await db.run(lambda uow: crm.request_sync(uow, tenant, c.id))
    again = await db.run(lambda uow: crm.request_sync(uow, tenant, c.id))
    assert first.id == again.id and first.trigger == "manual"  # one pending delivery sends the latest state
    assert await count_rows(db, "crm_outbox", tenant) == 1


async def test_sync_request_by_session_id_is_one_call(db: Database, tenant: str, other_tenant: str) -> None:
    """The sync_crm action's use case: the conversation named by sessionId, looked up and synced
    in one service call; an unknown or foreign sessionId is NOT_FOUND and writes nothing."""
    c = await create_conversation(db, tenant, session_id="s-crm-ref")
    await _configure(db, tenant, {"crm_webhook_url": "http://127.0.0.1:9/hook", "crm_webhook_secret": SECRET})
    with pytest.raises(NotFound):
        await db.run(lambda uow: crm.request_sync_by_ref(uow, tenant, ConversationRef(session_id="nope")))
    with pytest.raises(NotFound):
        await db.run(lambda uow: crm.request_sync_by_ref(uow, other_tenant, ConversationRef(session_id="s-crm-ref")))
    assert await count_rows(db, "crm_outbox", tenant) == 0
    record = await db.run(lambda uow: crm.request_sync_by_ref(uow, tenant, ConversationRef(session_id="s-crm-ref")))
    assert record.conversation_id == c.id and record.trigger == "manual"
    assert await count_rows(db, "crm_outbox", tenant) == 1


async def test_customer_profiles_are_fetched_signed_and_cached(db: Database, redis: Redis, tenant: str) -> None:
    with FakeCrm(SECRET, profiles={"u/1": {"name": "Grace"}}) as fake:
        await _configure(db, tenant, fake.tenant_settings())
        async with db.read() as conn, httpx.AsyncClient() as http:
            profile = await crm.customer_profile(conn, redis, http, tenant, "u/1", FAST)
            assert profile == {"name": "Grace"}
            assert await crm.customer_profile(conn, redis, http, tenant, "u/1", FAST) == profile
            assert fake.lookups == ["u/1"]  # the second came from Redis
            ttl = await redis.ttl(crm.profile_cache_key(tenant, "u/1"))
            assert 0 < ttl <= FAST.profile_ttl_s
            assert await crm.customer_profile(conn, redis, http, tenant, "nobody", FAST) is None
            assert await crm.customer_profile(conn, redis, http, tenant, "nobody", FAST) is None
            assert fake.lookups == ["u/1", "nobody"]  # a 404 is cached too
            assert await crm.customer_profile(conn, redis, http, tenant, None, FAST) is None
    # The CRM is gone: None, and nothing cached.
    await redis.delete(crm.profile_cache_key(tenant, "u/2"))
    async with db.read() as conn, httpx.AsyncClient() as http:
        assert await crm.customer_profile(conn, redis, http, tenant, "u/2", FAST) is None
    assert not await redis.exists(crm.profile_cache_key(tenant, "u/2"))
    cached = json.loads(await redis.get(crm.profile_cache_key(tenant, "u/1")) or b"{}")
    assert cached == {"profile": {"name": "Grace"}}


def test_lookup_urls() -> None:
    assert crm.lookup_request("https://crm/x/{user_id}", "a b") == "https://crm/x/a%20b"
    assert crm.lookup_request("https://crm/x", "a&b") == "https://crm/x?userId=a%26b"
    assert crm.lookup_request("https://crm/x?k=1", "a") == "https://crm/x?k=1&userId=a"
