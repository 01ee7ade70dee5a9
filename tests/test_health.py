"""/healthz and /readyz against real servers: ok, degraded (Redis down), down (Postgres down)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette

from app import embedded
from app.main import create_app
from app.settings import Settings
from tests.conftest import Servers


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _settings() -> Settings:
    return Settings(_env_file=None, readiness_timeout_s=1.0)


async def test_ready_when_both_answer(servers: Servers) -> None:
    app = create_app(_settings(), database_url=servers.database_url, redis_url=servers.redis_url)
    async with running(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        r = await client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["checks"]["postgres"]["latencyMs"] >= 0


async def test_degraded_when_redis_stops_and_ok_again_when_it_returns(servers: Servers) -> None:
    data = Path(tempfile.mkdtemp(prefix="cs-redis-"))
    rd = embedded.start_redis(data, persist=False)
    app = create_app(_settings(), database_url=servers.database_url, redis_url=rd.url)
    async with running(app) as client:
        assert (await client.get("/readyz")).json()["status"] == "ok"
        rd.stop()
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["status"] == "degraded"
        assert r.json()["checks"]["redis"]["ok"] is False and r.json()["checks"]["redis"]["error"]
        rd2 = embedded.start_redis(data, persist=False, port=rd.port)
        try:
            assert (await client.get("/readyz")).json()["status"] == "ok"
        finally:
            rd2.stop()


async def test_down_when_postgres_is_gone(servers: Servers) -> None:
    data = Path(tempfile.mkdtemp(prefix="cs-pg-"))
    pg = embedded.start_postgres(data, fsync=False)
    app = create_app(_settings(), database_url=pg.url, redis_url=servers.redis_url)
    try:
        async with running(app) as client:
            pg.stop()
            r = await client.get("/readyz")
            assert r.status_code == 503
            assert r.json()["status"] == "down" and r.json()["checks"]["postgres"]["ok"] is False
            assert (await client.get("/healthz")).status_code == 200
    finally:
        pg.stop()
