"""The worker's own /metrics (WORKER_METRICS_PORT) under a small load: queue depth, per-action
latency and outcome, and a failing CRM endpoint as failed deliveries with an oldest-undelivered
age; the action's correlation_id in its structured log lines."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from app.embedded.process import free_port
from app.services import tenants
from db.session import Database
from jobs.client import ActionClient
from tests.conftest import Servers
from tests.jobs.conftest import eventually, wait_ready
from tests.jobs.fake_crm import FakeCrm


@pytest.fixture
def failing_crm() -> Iterator[FakeCrm]:
    with FakeCrm("whsec-metrics", fail_first=10_000) as fake:  # every webhook call is HTTP 500
        yield fake


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_worker_metrics_show_load_and_failing_crm(
    servers: Servers,
    redis: Redis,
    client: ActionClient,
    db: Database,
    tenant: str,
    failing_crm: FakeCrm,
    worker_factory: Any,
    queue: str,
) -> None:
    async def configure(uow: Any) -> None:
        await tenants.update_tenant_settings(uow, tenant, failing_crm.tenant_settings())

    await db.run(configure)
    port = free_port()
    worker = worker_factory(
        queue,
        WORKER_METRICS_PORT=str(port),
        WORKER_METRICS_INTERVAL_S="0.1",
        CRM_RETRY_BASE_S="0.1",
        CRM_RETRY_MAX_S="0.2",
        CRM_MAX_ATTEMPTS="2",
        CRM_TIMEOUT_S="2",
    )
    await wait_ready(worker, redis)

    # Queue depth: jobs deferred a minute wait in the queue's sorted set.
    for _ in range(5):
        await client.redis.enqueue_job("ping", None, _queue_name=queue, _defer_by=60)

    async def depth() -> float:
        return _value(await _scrape(port), "worker_queue_depth") >= 5

    await eventually(depth)

    # A small load: ten messages, then a close whose CRM delivery keeps failing.
    answers = await asyncio.gather(
        *(
            client.call(
                "conversation.save_message",
                tenant_id=tenant,
                session_id="m-1",
                data={"role": "user", "content": f"m{i}"},
            )
            for i in range(10)
        )
    )
    assert all(a["success"] for a in answers), answers
    closed = await client.call("conversation.session_closed", tenant_id=tenant, session_id="m-1", data={})
    assert closed["success"], closed
    # A refused action: its log line carries the correlation_id it was sent with.
    correlation = f"corr-{uuid.uuid4().hex[:8]}"
    missing = await client.call(
        "conversation.get_history", tenant_id=tenant, session_id="nope", data={}, correlation_id=correlation
    )
    assert missing["error"]["code"] == "NOT_FOUND"

    # The caller hears the answer before the job's outcome is counted (arq records it after the
    # function returns): read until the refused action is counted, briefly.
    samples = await _scrape(port)
    for _ in range(50):
        if _value(samples, "worker_actions_total", action="conversation.get_history", outcome="domain_error"):
            break
        await asyncio.sleep(0.1)
        samples = await _scrape(port)
    action = "conversation.save_message"
    assert _value(samples, "worker_action_duration_seconds_count", action=action) >= 10
    assert _value(samples, "worker_action_duration_seconds_sum", action=action) > 0
    assert _value(samples, "worker_actions_total", action=action, outcome="ok") >= 10
    assert _value(samples, "worker_actions_total", action="conversation.get_history", outcome="domain_error") >= 1
    assert _value(samples, "worker_dead_letters_total", kind="domain_error") >= 1

    async def crm_failed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        s = await _scrape(port)
        # The gauge is across tenants (an earlier test's given-up delivery counts too): wait for
        # this test's own two attempts as well.
        if len(failing_crm.calls) < 2:
            return None
        return s if _value(s, "crm_deliveries", state="failed") >= 1 else None

    failed = await eventually(crm_failed)
    assert _value(failed, "crm_oldest_undelivered_age_seconds") > 0
    assert len(failing_crm.calls) >= 2  # both attempts reached the CRM and failed

    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    tagged = [line for line in lines if line.get("correlation_id") == correlation]
    assert tagged and tagged[0]["action_type"] == "conversation.get_history", lines[-5:]
