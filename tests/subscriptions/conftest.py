"""A real uvicorn (or two) on loopback, and WebSocket helpers speaking graphql-transport-ws."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets

from app.embedded.process import EmbeddedServer, free_port
from app.embedded.redis import start_redis
from app.main import create_app
from app.settings import Settings
from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers


@dataclass
class Server:
    url: str

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql"


async def serve(settings: Settings) -> AsyncIterator[Server]:
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task


def settings_for(servers: Servers, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,
        database_url=servers.database_url,
        redis_url=servers.redis_url,
        ws_init_timeout_s=1.0,
        **overrides,
    )


@pytest.fixture(scope="module")
async def server(servers: Servers) -> AsyncIterator[Server]:
    async for s in serve(settings_for(servers)):
        yield s


@pytest.fixture(scope="module")
async def server_b(servers: Servers) -> AsyncIterator[Server]:
    async for s in serve(settings_for(servers)):
        yield s


@pytest.fixture
async def redis_of_its_own() -> AsyncIterator[EmbeddedServer]:
    """A Redis this test may stop and restart."""
    server = start_redis(Path(tempfile.mkdtemp(prefix="cs-ws-redis-")), persist=False)
    yield server
    server.stop()


@pytest.fixture
async def writer(db: Database, server: Server, tenant: str) -> AsyncIterator[Caller]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        yield await make_caller(db, http, tenant)


class WS:
    """A graphql-transport-ws client that keeps every message it receives."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, url: str, protocol: str = "graphql-transport-ws") -> WS:
        connection = await websockets.connect(url, subprotocols=[protocol])  # type: ignore[list-item]
        return cls(connection)

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def recv(self, wait: float = 5.0) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(self.connection.recv(), wait))
            if message.get("type") == "ping":
                await self.send({"type": "pong"})
                continue
            return message

    async def init(self, key: str) -> dict[str, Any]:
        await self.send({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
        return await self.recv()

    async def subscribe(self, id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        await self.send({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}})

    async def close(self) -> None:
        await self.connection.close()
