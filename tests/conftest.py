"""Real servers for the whole session: an embedded Postgres and Redis in a temp dir
(or TEST_DATABASE_URL / TEST_REDIS_URL), schema built by `alembic upgrade head`.
Every test gets a fresh random tenant, so tests never see each other's data."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.embedded.postgres import start_postgres
from app.embedded.process import EmbeddedServer
from app.embedded.redis import start_redis

# The suite's APIs run without a worker; tests of the worker check in /readyz set their own.
os.environ.setdefault("WORKER_STALE_S", "0")
from db.migrate import upgrade
from db.session import Database, create_pool

pytest_plugins = ["tests.citus_cluster"]


@dataclass
class Servers:
    database_url: str
    redis_url: str


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    root = Path(tempfile.mkdtemp(prefix="cs-tests-"))
    started: list[EmbeddedServer] = []
    try:
        from tests import citus_cluster  # registered as a plugin above: imported once pytest has

        if not database_url and citus_cluster.cluster_requested(request.config):
            database_url = citus_cluster.start(root / "citus", started)
        if not database_url:
            pg = start_postgres(root / "postgres", fsync=False)
            started.append(pg)
            database_url = pg.url
        if not redis_url:
            rd = start_redis(root / "redis", persist=False)
            started.append(rd)
            redis_url = rd.url
        upgrade(database_url)
        yield Servers(database_url=database_url, redis_url=redis_url)
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def db(servers: Servers) -> AsyncIterator[Database]:
    database = Database(await create_pool(servers.database_url, min_size=2, max_size=40))
    yield database
    await database.close()


@pytest.fixture(scope="session")
async def redis(servers: Servers) -> AsyncIterator[Redis]:
    client = Redis.from_url(servers.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other_tenant() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"
