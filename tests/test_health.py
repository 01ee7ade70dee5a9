"""/healthz and /readyz against real servers: ok, degraded (Redis down), down (Postgres down)."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from app import liveness
from app.embedded.postgres import start_postgres
from app.embedded.redis import start_redis
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
    rd = start_redis(data, persist=False)
    app = create_app(_settings(), database_url=servers.database_url, redis_url=rd.url)
    async with running(app) as client:
        assert (await client.get("/readyz")).json()["status"] == "ok"
        rd.stop()
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["status"] == "degraded"
        assert r.json()["checks"]["redis"]["ok"] is False and r.json()["checks"]["redis"]["error"]
        rd2 = start_redis(data, persist=False, port=rd.port)
        try:
            assert (await client.get("/readyz")).json()["status"] == "ok"
        finally:
            rd2.stop()


async def test_down_when_postgres_is_gone(servers: Servers) -> None:
    data = Path(tempfile.mkdtemp(prefix="cs-pg-"))
    pg = start_postgres(data, fsync=False)
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


async def test_degraded_when_no_worker_heartbeat_is_fresh(servers: Servers) -> None:
    """Issue 9: with the worker gone, jobs, CRM deliveries and crons stop: /readyz says so."""
    queue = f"cs-test-ready-{uuid.uuid4().hex[:8]}"
    settings = Settings(_env_file=None, readiness_timeout_s=1.0, arq_queue=queue, worker_stale_s=30)
    app = create_app(settings, database_url=servers.database_url, redis_url=servers.redis_url)
    async with running(app) as client, Redis.from_url(servers.redis_url) as redis:
        body = (await client.get("/readyz")).json()
        assert body["status"] == "degraded"
        assert body["checks"]["worker"]["ok"] is False and "no worker heartbeat" in body["checks"]["worker"]["error"]
        await liveness.beat(redis, queue, now=time.time() - 2)
        body = (await client.get("/readyz")).json()
        assert body["status"] == "ok" and body["checks"]["worker"] == {"ok": True, "ageS": pytest.approx(2, abs=1)}
        await liveness.beat(redis, queue, now=time.time() - 95)
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert r.json()["checks"]["worker"]["ok"] is False and r.json()["checks"]["worker"]["ageS"] >= 95
