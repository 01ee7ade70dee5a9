"""Real API processes (`python -m app.cli serve`) on the test servers, for the tests that need
several of them (the many-process and rebalance tests on the clusters).

In a `--cluster citus` session the environment already carries REDIS_CLUSTER_NODES, so each
process's hot store is the session's Redis Cluster, as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.embedded.process import die_with_parent, free_port
from app.services import tenants
from db.session import Database
from tests.conftest import Servers


@dataclass
class ApiProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_api(servers: Servers, log_dir: Path, **env: str) -> ApiProcess:
    port = free_port()
    full_env = {
        **os.environ,
        "DATABASE_URL": servers.database_url,
        "REDIS_URL": servers.redis_url,
        "LOG_LEVEL": "WARNING",
        "WORKER_STALE_S": "0",  # no worker check in /readyz: some tests run APIs alone
        **env,
    }
    log = log_dir / f"api-{port}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - no imports or locks in it
        )
    return ApiProcess(proc=proc, port=port, log=log)


def wait_ready(apis: list[ApiProcess], within_s: float = 60.0) -> None:
    """uvicorn answers only once the app's lifespan (pools, hub, cache) has started."""
    deadline = time.monotonic() + within_s
    pending = list(apis)
    while pending:
        api = pending[0]
        if api.proc.poll() is not None:
            pytest.fail(f"API exited with {api.proc.returncode}:\n{api.output()}")
        try:
            if httpx.get(f"{api.url}/readyz", timeout=2).status_code == 200:
                pending.pop(0)
                continue
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            for a in apis:
                a.stop()
            pytest.fail(f"API not ready within {within_s} s:\n{api.output()}")
        time.sleep(0.1)


async def api_key(db: Database, tenant_id: str) -> str:
    """A read/write key of a tenant that exists."""

    async def setup(uow: Any) -> str:
        await tenants.ensure_tenant(uow, tenant_id)
        _, secret = await tenants.create_api_key(uow, tenant_id, tenants.parse_scopes("read,write"))
        return secret

    secret: str = await db.run(setup)
    return secret
