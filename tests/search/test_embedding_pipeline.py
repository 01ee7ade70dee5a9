"""The embedding pipeline end to end (issue 14.2): appends committed through the service reach a
real worker process through the post-commit trigger and the arq queue, which stores their vectors;
`embed-backfill` embeds what exists, with progress, idempotently; the append path only notes the
conversation (its cost is measured in docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from redis.asyncio import Redis

from app.settings import Settings
from db.session import Database
from jobs import embeddings as embedding_jobs
from tests.conftest import Servers
from tests.factories import add_message, create_conversation
from tests.jobs.conftest import WorkerProcess, eventually


async def _count(db: Database, tenant: str) -> int:
    async with db.read() as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM message_embeddings WHERE tenant_id = $1", tenant)
        return n


async def test_appends_are_embedded_by_the_worker_after_commit(
    db: Database, redis: Redis, queue: str, worker: WorkerProcess, tenant: str
) -> None:
    from arq.connections import ArqRedis

    from app.queue import json_deserializer, json_serializer

    arq = ArqRedis(
        connection_pool=redis.connection_pool, job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    trigger = embedding_jobs.install(db, arq, Settings(_env_file=None), queue)
    assert trigger is not None
    try:
        conv = await create_conversation(db, tenant)
        for i in range(12):
            await add_message(db, tenant, conv, content=f"the customer asks about order {i}")
        assert await eventually(lambda: _wait(db, tenant, 12), within_s=20)
        await add_message(db, tenant, conv, content="one more, after the first job ran")
        assert await eventually(lambda: _wait(db, tenant, 13), within_s=20)
    finally:
        db.listeners.remove(trigger)
        await trigger.close()


async def _wait(db: Database, tenant: str, n: int) -> bool:
    return await _count(db, tenant) == n


def _cli(servers: Servers, *args: str, **more_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": servers.database_url, "REDIS_URL": servers.redis_url, **more_env}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def test_embed_backfill_command_reports_progress_and_is_idempotent(
    servers: Servers, db: Database, tenant: str
) -> None:
    conv = await create_conversation(db, tenant)
    for i in range(7):
        await add_message(db, tenant, conv, content=f"backfilled message {i}")
    first = _cli(servers, "embed-backfill", "--tenant", tenant)
    assert first.returncode == 0, first.stderr
    assert f"{tenant}: 7/7 messages embedded (7 now)" in first.stderr
    assert "stored 7 vectors (wordllama-l2-supercat-256)" in first.stdout
    assert await _count(db, tenant) == 7
    again = _cli(servers, "embed-backfill", "--tenant", tenant)
    assert again.returncode == 0 and "stored 0 vectors" in again.stdout
    off = _cli(servers, "embed-backfill", EMBEDDER="none")
    assert off.returncode == 1 and "no embedder is configured" in off.stderr


async def test_the_trigger_hands_over_a_burst_in_one_call(db: Database, tenant: str) -> None:
    from app.services import embeddings

    calls: list[list[tuple[str, object]]] = []

    async def record(conversations: list[tuple[str, Any]]) -> None:
        calls.append(list(conversations))

    trigger = embeddings.Trigger(record, delay_s=1.0)
    db.listen(trigger)
    try:
        convs = [await create_conversation(db, tenant) for _ in range(3)]
        for i in range(15):
            await add_message(db, tenant, convs[i % 3], content=f"burst {i}")
        await eventually(lambda: _called(calls), within_s=5)
    finally:
        db.listeners.remove(trigger)
        await trigger.close()
    assert len(calls) == 1 and sorted(calls[0]) == sorted((tenant, c.id) for c in convs)


async def _called(calls: list[Any]) -> bool:
    return bool(calls)
