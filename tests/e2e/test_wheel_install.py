"""The project installed the way the Docker image installs it: a built wheel, not editable, in a
fresh virtualenv outside the repository, run from another directory. Its runtime dependencies
must be complete and every runtime file (migrations, trusted documents) must ship inside it.

`migrate` builds a fresh database, `tenant` / `api-key` make a key, `serve` answers a trusted
document by id and delivers a subscription, and `worker` runs one domain action."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from app.api.documents import DocumentRegistry
from app.embedded.process import free_port
from app.settings import PROJECT_ROOT
from jobs.client import ActionClient
from tests.conftest import Servers

pytestmark = pytest.mark.slow

#: What a clean checkout holds; everything else (venvs, data, caches, builds) stays behind.
_IGNORED = shutil.ignore_patterns(
    ".venv",
    ".data",
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "node_modules",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "test-artifacts",
)


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ of a fresh venv holding only the wheel and its declared dependencies."""
    root = tmp_path_factory.mktemp("wheel-install")
    source = root / "source"
    shutil.copytree(PROJECT_ROOT, source, ignore=_IGNORED)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", root / "dist", source], cwd=root)
    wheels = list((root / "dist").glob("conversation_service-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "venv", root / "venv"], cwd=root)
    _run([root / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet", wheels[0]], cwd=root)
    yield root / "venv" / "bin"


@pytest.fixture(scope="module")
def fresh_database(servers: Servers) -> str:
    """A new, empty database on the test server: `migrate` must build it from the wheel alone."""
    name = f"wheel_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(servers.database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base, _, _ = servers.database_url.rpartition("/")
    return f"{base}/{name}"


def _env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR", "TIKTOKEN_CACHE_DIR"}}
    return {**keep, "LOG_LEVEL": "WARNING", **extra}


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the installed service exited"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the installed service did not start")


async def _subscribe_and_add(url: str, key: str, documents: DocumentRegistry) -> dict[str, Any]:
    create, add = documents.by_name("ServiceCreateConversation"), documents.by_name("ServiceAddMessage")
    assert create is not None and add is not None
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        created = (
            await http.post(
                "/graphql", json={"documentId": create.sha256, "variables": {"input": {"sessionId": "wheel-1"}}}
            )
        ).json()
        assert "errors" not in created, created
        conversation_id = created["data"]["createConversation"]["id"]
        ws_url = url.replace("http", "ws") + "/graphql"
        async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            # afterSeq 0: the message below is delivered whether it commits before or after the
            # server has registered the subscription (replay, then live).
            query = "subscription($c: ID) { messageAdded(conversationId: $c, afterSeq: 0) { seq content } }"
            await ws.send(
                json.dumps(
                    {"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"c": conversation_id}}}
                )
            )
            variables = {"input": {"conversationId": conversation_id, "role": "USER", "content": "from the wheel"}}
            added = (await http.post("/graphql", json={"documentId": add.sha256, "variables": variables})).json()
            assert "errors" not in added, added
            async with asyncio.timeout(15):
                while True:
                    message = json.loads(await ws.recv())
                    assert message["type"] in ("next", "ping", "pong"), message
                    if message["type"] == "next":
                        event: dict[str, Any] = message["payload"]["data"]["messageAdded"]
                        return event


def test_the_installed_wheel_migrates_serves_and_works(
    installed: Path, fresh_database: str, servers: Servers, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing may be read from it
    elsewhere.mkdir()
    cli = str(installed / "conversation-service")
    queue = f"wheel-{uuid.uuid4().hex[:8]}"
    env = _env(DATABASE_URL=fresh_database, REDIS_URL=servers.redis_url, ARQ_QUEUE=queue, CRON_ENABLED="false")
    # The installed package is what runs, not this checkout.
    where = _run([installed / "python", "-c", "import app; print(app.__file__)"], cwd=elsewhere, env=env)
    assert str(PROJECT_ROOT) not in where and "site-packages" in where, where

    _run([cli, "migrate"], cwd=elsewhere, env=env)
    _run([cli, "tenant", "create", "wheel"], cwd=elsewhere, env=env)
    key = _run([cli, "api-key", "create", "--tenant", "wheel", "--scopes", "read,write"], cwd=elsewhere, env=env)
    key = key.strip().splitlines()[-1]

    port = free_port()
    api = subprocess.Popen([cli, "serve", "--port", str(port)], cwd=elsewhere, env=env)
    worker = subprocess.Popen([cli, "worker"], cwd=elsewhere, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, api)
        event = asyncio.run(_subscribe_and_add(url, key, DocumentRegistry.load()))
        assert event == {"seq": 1, "content": "from the wheel"}
        # GraphiQL (development) comes from the installed package's data, not a CDN.
        page = httpx.get(f"{url}/graphql", headers={"Accept": "text/html"}, timeout=10)
        assert page.status_code == 200 and "static/graphiql/boot.js" in page.text, page.text[:500]
        for asset in ("graphiql.min.js", "boot.js"):
            served = httpx.get(f"{url}/static/graphiql/{asset}", timeout=10)
            assert served.status_code == 200 and len(served.content) > 1000, (asset, served.status_code)

        async def one_action() -> dict[str, Any]:
            async with await ActionClient.connect(servers.redis_url, queue_name=queue) as client:
                return await client.call(
                    "conversation.save_message",
                    tenant_id="wheel",
                    session_id="wheel-2",
                    data={"role": "user", "content": "through the worker"},
                    wait_s=60,
                )

        answer = asyncio.run(one_action())
        assert answer["success"] is True, answer
        assert answer["data"]["message"]["content"] == "through the worker"
        assert worker.poll() is None and api.poll() is None
    finally:
        for proc in (api, worker):
            proc.terminate()
        for proc in (api, worker):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
