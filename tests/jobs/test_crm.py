"""CRM sync end to end: sessions closed through a real worker, delivered to a fake CRM (a real
HTTP server on loopback) that fails the first calls; enrichment into context windows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.models import ConversationRef
from app.services import conversations, crm, tenants
from app.services.crm import CrmSyncStatus
from db.session import Database
from jobs.client import ActionClient
from jobs.crm import crm_sweep
from tests.conftest import Servers
from tests.jobs.conftest import WorkerProcess, eventually, start_worker, wait_ready
from tests.jobs.fake_crm import FakeCrm
from tests.jobs.helpers import worker_state

SECRET = "whsec-test-secret"
PROFILE = {"name": "Ada Lovelace", "plan": "enterprise", "segment": "VIP"}


@pytest.fixture(scope="module")
def fake_crm() -> Any:
    with FakeCrm(SECRET, fail_first=3, profiles={"u-ada": PROFILE}) as fake:
        yield fake


@pytest.fixture(scope="module")
async def crm_worker(servers: Servers, redis: Redis, queue: str, log_dir: Any) -> AsyncIterator[WorkerProcess]:
    process = start_worker(
        servers, queue, log_dir, CRM_RETRY_BASE_S="0.2", CRM_RETRY_MAX_S="1", CRM_TIMEOUT_S="2", CRM_PROFILE_TTL_S="60"
    )
    try:
        await wait_ready(process, redis)
        yield process
    finally:
        process.stop()


async def _configure(db: Database, tenant: str, settings: dict[str, Any]) -> None:
    async def work(uow: Any) -> None:
        await tenants.ensure_tenant(uow, tenant)
        await tenants.update_tenant_settings(uow, tenant, settings)

    await db.run(work)


async def _status(db: Database, tenant: str, conversation_id: str) -> crm.CrmSyncRecord | None:
    async with db.read() as conn:
        return await crm.crm_sync_status(conn, tenant, uuid.UUID(conversation_id))


async def test_each_closed_conversation_is_delivered_exactly_once_despite_crm_failures(
    crm_worker: WorkerProcess, client: ActionClient, fake_crm: FakeCrm, db: Database, tenant: str
) -> None:
    await _configure(db, tenant, fake_crm.tenant_settings())
    ids = []
    for i in range(3):
        for text in ("hi", "I need help with my invoice", "sure, here it is"):
            saved = await client.call(
                "conversation.save_message",
                tenant_id=tenant,
                session_id=f"s-{i}",
                data={"role": "user", "content": text, "user_id": f"u-{i}", "agent_id": "a-1"},
            )
            assert saved["success"], saved
        closed = await client.call(
            "conversation.session_closed", tenant_id=tenant, session_id=f"s-{i}", data={"reason": "done"}
        )
        ids.append(closed["data"]["conversation"]["id"])
        # Closing again is idempotent and writes no second delivery.
        again = await client.call("conversation.session_closed", tenant_id=tenant, session_id=f"s-{i}", data={})
        assert again["data"]["conversation"]["status"] == "closed"

    async def all_delivered() -> bool:
        statuses = [await _status(db, tenant, cid) for cid in ids]
        return all(s is not None and s.status is CrmSyncStatus.DELIVERED for s in statuses)

    await eventually(all_delivered, within_s=20)
    records = [await _status(db, tenant, cid) for cid in ids]
    assert fake_crm.bad_signatures == 0 and all(c["signature_ok"] for c in fake_crm.calls)
    for cid, record in zip(ids, records, strict=True):
        assert record is not None and record.delivered_at is not None and record.trigger == "closed"
        (delivery,) = fake_crm.deliveries_for(cid)  # exactly one accepted delivery per conversation
        assert delivery["event"] == "conversation.closed" and delivery["delivery_id"] == str(record.id)
        c = delivery["conversation"]
        assert c["status"] == "closed" and c["close_reason"] == "done" and c["message_count"] == 3
        assert c["user_id"].startswith("u-") and c["agent_id"] == "a-1" and c["token_count"] > 0
        assert c["closed_at"] and c["duration_seconds"] is not None
        assert [m["content"] for m in delivery["last_messages"]] == [
            "hi",
            "I need help with my invoice",
            "sure, here it is",
        ]
    # The CRM failed its first three calls: those attempts are counted and their error kept.
    assert sum(r.attempts for r in records if r) == 3 + 3
    assert any(r.last_error and r.last_error.startswith("HTTP 500") for r in records if r)

    # syncCrm: one more, manual delivery of the same conversation.
    synced = await client.call("conversation.sync_crm", tenant_id=tenant, conversation_id=ids[0], data={})
    assert synced["success"] and synced["data"]["crm_sync"]["status"] == "pending"

    async def manual_delivered() -> bool:
        record = await _status(db, tenant, ids[0])
        return record is not None and record.trigger == "manual" and record.status is CrmSyncStatus.DELIVERED

    await eventually(manual_delivered, within_s=10)
    events = sorted(d["event"] for d in fake_crm.deliveries_for(ids[0]))
    assert events == ["conversation.closed", "conversation.sync"]


async def test_the_sweep_delivers_what_no_job_was_asked_for(
    crm_worker: WorkerProcess, fake_crm: FakeCrm, servers: Servers, db: Database, queue: str, tenant: str
) -> None:
    """Closed in a process without a dispatcher (no arq pool): only the sweep can deliver it."""
    await _configure(db, tenant, fake_crm.tenant_settings())
    created = await db.run(lambda uow: conversations.create(uow, tenant, session_id="swept"))
    await db.run(lambda uow: conversations.close(uow, tenant, ConversationRef(id=created.id)))
    record = await _status(db, tenant, str(created.id))
    assert record is not None and record.status is CrmSyncStatus.PENDING and record.attempts == 0
    async with worker_state(servers, db, queue) as ctx:
        swept = await crm_sweep(ctx)
    assert swept["queued"] >= 1

    async def delivered() -> bool:
        r = await _status(db, tenant, str(created.id))
        return r is not None and r.status is CrmSyncStatus.DELIVERED

    await eventually(delivered, within_s=10)
    assert len(fake_crm.deliveries_for(str(created.id))) == 1


async def test_context_windows_carry_the_customer_profile_when_asked(
    crm_worker: WorkerProcess, client: ActionClient, fake_crm: FakeCrm, db: Database, tenant: str
) -> None:
    await _configure(db, tenant, fake_crm.tenant_settings(crm_customer_note=True))
    await client.call(
        "conversation.save_message",
        tenant_id=tenant,
        session_id="e",
        data={"role": "system", "content": "You are a helpful agent.", "user_id": "u-ada"},
    )
    await client.call(
        "conversation.save_message", tenant_id=tenant, session_id="e", data={"role": "user", "content": "hi"}
    )
    lookups_before = len(fake_crm.lookups)
    window = (
        await client.call("conversation.get_context", tenant_id=tenant, session_id="e", data={"max_tokens": 500})
    )["data"]
    note = window["customer_note"]
    assert note is not None and "Ada Lovelace" in note["content"]
    roles = [(m["role"], m["content"][:20]) for m in window["openai_messages"]]
    assert roles[0] == ("system", "You are a helpful ag") and roles[1][0] == "system" and roles[2] == ("user", "hi")
    assert window["total_tokens"] == 3 + sum(m["token_count"] for m in window["messages"]) + note["token_count"]
    assert window["total_tokens"] <= 500

    # Cached in Redis: a second window does not ask the CRM again; include_customer=false leaves it out.
    again = (await client.call("conversation.get_context", tenant_id=tenant, session_id="e", data={"max_tokens": 500}))[
        "data"
    ]
    assert again["customer_note"] == note
    assert len(fake_crm.lookups) == lookups_before + 1
    without = (
        await client.call(
            "conversation.get_context",
            tenant_id=tenant,
            session_id="e",
            data={"max_tokens": 500, "include_customer": False},
        )
    )["data"]
    assert without["customer_note"] is None and len(without["openai_messages"]) == 2
    # A budget too small for the note: the window goes without it rather than over the budget.
    tight = (await client.call("conversation.get_context", tenant_id=tenant, session_id="e", data={"max_tokens": 40}))[
        "data"
    ]
    assert tight["customer_note"] is None and tight["total_tokens"] <= 40
