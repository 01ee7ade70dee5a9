"""The worker outlives Redis (issue 9, item 4): a real worker subprocess on a Redis of its own,
Redis SIGKILLed and started again, the worker still alive and running actions."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app import liveness
from app.embedded.redis import start_redis
from db.session import Database
from jobs.client import ActionClient
from tests.conftest import Servers
from tests.factories import count_rows
from tests.jobs.conftest import eventually, wait_ready


async def test_the_worker_survives_a_redis_restart_and_runs_an_action_within_10_s(
    servers: Servers, db: Database, tenant: str, worker_factory: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "redis"
    rd = start_redis(data_dir, persist=False)
    queue = f"cs-test-outage-{uuid.uuid4().hex[:8]}"
    worker = worker_factory(queue, REDIS_URL=rd.url, WORKER_HEARTBEAT_S="0.5")
    try:
        async with Redis.from_url(rd.url) as redis:
            await wait_ready(worker, redis)
        assert rd.process is not None
        rd.process.kill()  # SIGKILL: connections reset, nothing flushed
        rd.stop()
        await asyncio.sleep(3)  # arq's poll fails on every iteration meanwhile
        assert worker.proc.poll() is None, worker.output()
        rd = start_redis(data_dir, persist=False, port=rd.port)
        back = time.monotonic()
        async with await ActionClient.connect(rd.url, queue_name=queue) as client:
            answer = await client.call(
                "conversation.save_message",
                tenant_id=tenant,
                session_id="o",
                data={"role": "user", "content": "after the outage"},
                wait_s=10,
            )
        took = time.monotonic() - back
        assert answer["success"] is True, answer
        assert took < 10, took
        assert worker.proc.poll() is None
        assert await count_rows(db, "messages", tenant) == 1
        async with Redis.from_url(rd.url) as redis:
            # The heartbeat /readyz reads is written again.
            beat = await eventually(lambda: redis.get(liveness.heartbeat_key(queue)))
            assert time.time() - json.loads(beat)["at"] < 5
        output = worker.output()
        assert "reconnecting with backoff" in output and "Redis is back" in output
    finally:
        worker.stop()
        rd.stop()
    assert worker.proc.returncode == 0, worker.output()  # a clean stop, even after the outage


def test_arq_health_records_stay_out_of_info_logs(caplog: pytest.LogCaptureFixture) -> None:
    import jobs.worker  # noqa: F401  (installs the filter)

    arq_log = logging.getLogger("arq.worker")
    with caplog.at_level(logging.INFO, logger="arq.worker"):
        arq_log.info("recording health: %s", "Nov-30 11:23:01 j_complete=3 j_failed=0")
        arq_log.info("  0.00s ← crm.sweep ● {'queued': 0}")
    assert [r.getMessage() for r in caplog.records] == ["  0.00s ← crm.sweep ● {'queued': 0}"]
    with caplog.at_level(logging.DEBUG, logger="arq.worker"):
        arq_log.info("recording health: %s", "j_complete=4")
    assert caplog.records[-1].getMessage() == "recording health: j_complete=4"
