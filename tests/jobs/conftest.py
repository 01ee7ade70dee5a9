"""Real worker processes (`python -m app.cli worker`) on the test servers, one queue per module."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.embedded.process import die_with_parent
from app.services import tenants
from db.session import Database
from jobs.client import ActionClient
from tests.conftest import Servers

#: Fast retries and short locks, so failure paths take a second, not a minute.
FAST = {
    "CRON_ENABLED": "false",
    "ARQ_RETRY_BASE_S": "0.1",
    "ARQ_RETRY_MAX_S": "0.5",
    "ARQ_POLL_DELAY_S": "0.02",
    "LOG_LEVEL": "INFO",
}


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    queue: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def start_worker(servers: Servers, queue: str, log_dir: Path, **env: str) -> WorkerProcess:
    full_env = {
        **os.environ,
        "DATABASE_URL": servers.database_url,
        "REDIS_URL": servers.redis_url,
        "ARQ_QUEUE": queue,
        **FAST,
        **env,
    }
    log = log_dir / f"worker-{queue}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - no imports or locks in it
        )
    return WorkerProcess(proc=proc, queue=queue, log=log, env=env)


async def wait_ready(worker: WorkerProcess, redis: Redis, within_s: float = 30.0) -> None:
    """arq writes the health-check key on its first poll, after on_startup finished."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            pytest.fail(f"worker exited with {worker.proc.returncode}:\n{worker.output()}")
        if await redis.exists(f"{worker.queue}:health-check"):
            return
        await asyncio.sleep(0.02)
    worker.stop()
    pytest.fail(f"worker not ready within {within_s} s:\n{worker.output()}")


async def eventually(check: Any, within_s: float = 10.0, interval: float = 0.05) -> Any:
    """Await `check()` until it returns something truthy."""
    deadline = time.monotonic() + within_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within_s} s (last value {value!r})")
        await asyncio.sleep(interval)


async def pop_answer(redis: Redis, queue: str, within_s: float = 10.0) -> dict[str, Any]:
    item = await redis.brpop([queue], timeout=math.ceil(within_s))  # type: ignore[misc]
    assert item is not None, f"no answer on {queue} within {within_s} s"
    answer: dict[str, Any] = json.loads(item[1])
    return answer


async def create_tenant(db: Database, prefix: str = "t") -> str:
    tenant_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    await db.run(lambda uow: tenants.ensure_tenant(uow, tenant_id, None))
    return tenant_id


@pytest.fixture
async def tenant(db: Database) -> str:
    """A fresh tenant that exists: actions refuse tenants that do not."""
    return await create_tenant(db)


@pytest.fixture
async def other_tenant(db: Database) -> str:
    return await create_tenant(db, "o")


@pytest.fixture(scope="module")
def queue(request: pytest.FixtureRequest) -> str:
    return f"cs-test-{request.module.__name__.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="module")
async def worker(servers: Servers, redis: Redis, queue: str, log_dir: Path) -> AsyncIterator[WorkerProcess]:
    """One worker for the module, on the module's queue."""
    process = start_worker(servers, queue, log_dir)
    try:
        await wait_ready(process, redis)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def client(servers: Servers, queue: str) -> AsyncIterator[ActionClient]:
    async with await ActionClient.connect(servers.redis_url, queue_name=queue) as c:
        yield c


@pytest.fixture
def worker_factory(servers: Servers, log_dir: Path) -> Iterator[Any]:
    """Start extra workers in a test; all are stopped at its end."""
    started: list[WorkerProcess] = []

    def start(queue: str, **env: str) -> WorkerProcess:
        process = start_worker(servers, queue, log_dir, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
