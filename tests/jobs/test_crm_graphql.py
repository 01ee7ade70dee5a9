"""CRM sync seen through GraphQL: a real API (uvicorn), a real worker on the same queue, and a
fake CRM (a real HTTP server on loopback) that fails its first calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.services import tenants
from db.session import Database
from tests.api.conftest import make_caller
from tests.conftest import Servers
from tests.jobs.conftest import WorkerProcess, eventually, start_worker, wait_ready
from tests.jobs.fake_crm import FakeCrm
from tests.subscriptions.conftest import Server, serve, settings_for

QUICK = {"CRM_RETRY_BASE_S": "0.2", "CRM_RETRY_MAX_S": "1", "CRM_TIMEOUT_S": "2"}


@pytest.fixture(scope="module")
async def crm_worker(servers: Servers, redis: Redis, queue: str, log_dir: Path) -> AsyncIterator[WorkerProcess]:
    process = start_worker(servers, queue, log_dir, **QUICK)
    try:
        await wait_ready(process, redis)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def api_server(servers: Servers, queue: str) -> AsyncIterator[Server]:
    async for server in serve(settings_for(servers, arq_queue=queue, crm_retry_base_s=0.2, crm_retry_max_s=1)):
        yield server


async def test_close_delivers_once_and_graphql_shows_it(
    api_server: Server, crm_worker: WorkerProcess, db: Database, tenant: str
) -> None:
    with FakeCrm("s3cret", fail_first=2, profiles={"u-9": {"name": "Ana", "tier": "gold"}}) as fake:
        await db.run(lambda uow: tenants.ensure_tenant(uow, tenant))
        await db.run(lambda uow: tenants.update_tenant_settings(uow, tenant, fake.tenant_settings()))
        async with httpx.AsyncClient(base_url=api_server.url) as http:
            api = await make_caller(db, http, tenant)
            created = await api.data(
                'mutation { addMessage(input: {sessionId: "crm-1", userId: "u-9", role: USER, content: "hola"}) '
                "{ conversation { id } } }"
            )
            cid = created["addMessage"]["conversation"]["id"]
            q = "query($id: ID!) { conversation(id: $id) { crmSync { status attempts lastError deliveredAt } customer } }"
            before = (await api.data(q, {"id": cid}))["conversation"]
            assert before["crmSync"] is None and before["customer"] == {"name": "Ana", "tier": "gold"}
            await api.data('mutation { closeSession(sessionId: "crm-1", reason: "done") { status } }')

            async def delivered() -> dict[str, Any] | None:
                sync = (await api.data(q, {"id": cid}))["conversation"]["crmSync"]
                return sync if sync and sync["status"] == "DELIVERED" else None

            sync = await eventually(delivered, within_s=20)
            assert sync["attempts"] == 3 and sync["deliveredAt"] and "500" in (sync["lastError"] or "500")
            assert len(fake.deliveries_for(cid)) == 1 and fake.bad_signatures == 0

            manual = await api.data(
                "mutation($id: ID!) { syncCrm(conversationId: $id) { status attempts } }", {"id": cid}
            )
            assert manual["syncCrm"]["status"] == "PENDING"
            await eventually(lambda: _count(fake, cid, 2), within_s=20)


async def _count(fake: FakeCrm, cid: str, n: int) -> bool:
    return len(fake.deliveries_for(cid)) >= n


async def test_sync_without_a_webhook_is_bad_input(api_server: Server, db: Database, tenant: str) -> None:
    async with httpx.AsyncClient(base_url=api_server.url) as http:
        api = await make_caller(db, http, tenant)
        created = await api.data('mutation { createConversation(input: {sessionId: "no-crm"}) { id } }')
        code = await api.error_code(
            "mutation($id: ID!) { syncCrm(conversationId: $id) { status } }",
            {"id": created["createConversation"]["id"]},
        )
        assert code == "BAD_USER_INPUT"
