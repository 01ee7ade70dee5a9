"""Failures a real worker meets: Postgres unreachable mid-action (retried with backoff, no
duplicate), and a worker SIGKILLed mid-job (another runs the job again, no duplicate)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from redis.asyncio import Redis

from db.session import Database, asyncpg_dsn, on_citus
from jobs.client import ActionClient
from tests.conftest import Servers
from tests.factories import count_rows, create_conversation
from tests.jobs.conftest import eventually, wait_ready


class TcpProxy:
    """A loopback TCP proxy the test can cut (every connection dropped, new ones closed at once)
    and restore: Postgres 'unreachable' for the worker only."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.cut_off = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()
        self._writers.discard(dst)

    def cut(self) -> None:
        self.cut_off = True
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _via(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(asyncpg_dsn(url))
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@contextlib.asynccontextmanager
async def row_locked(servers: Servers, tenant: str, conversation_id: uuid.UUID) -> AsyncIterator[None]:
    """Hold the conversation's row lock: an append to it waits, in Postgres, until we let go."""
    conn = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "SELECT 1 FROM conversations WHERE tenant_id = $1 AND id = $2 FOR UPDATE", tenant, conversation_id
        )
        try:
            yield
        finally:
            await tx.commit()
    finally:
        await conn.close()


async def _append_waits_on_lock(db: Database) -> bool:
    async with db.read() as conn:
        if on_citus():
            # The lock wait is on the worker holding the shard, where the statement is the function's
            # own UPDATE; Citus' cluster-wide view names the coordinator's statement that waits.
            waiting = await conn.fetchval(
                "SELECT count(*) FROM citus_lock_waits WHERE blocked_statement LIKE '%append_message(%'"
            )
        else:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND (query LIKE '%WITH target AS%' OR query LIKE '%append_message(%')"
            )
    return bool(waiting)


async def test_postgres_unreachable_mid_action_is_retried_with_backoff_without_a_duplicate(
    servers: Servers, db: Database, redis: Redis, tenant: str, worker_factory: Any
) -> None:
    pg = urllib.parse.urlsplit(asyncpg_dsn(servers.database_url))
    proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    await proxy.start()
    queue = f"cs-test-proxy-{uuid.uuid4().hex[:8]}"
    worker = worker_factory(queue, DATABASE_URL=_via(servers.database_url, proxy.port), ARQ_MAX_TRIES="20")
    try:
        await wait_ready(worker, redis)
        conversation = await create_conversation(db, tenant, session_id="p")
        async with await ActionClient.connect(servers.redis_url, queue_name=queue) as client:
            action_id = f"act-{uuid.uuid4().hex}"
            async with row_locked(servers, tenant, conversation.id):
                call = asyncio.create_task(
                    client.call(
                        "conversation.save_message",
                        tenant_id=tenant,
                        session_id="p",
                        data={"role": "user", "content": "through the outage"},
                        action_id=action_id,
                        wait_s=30,
                    )
                )
                await eventually(lambda: _append_waits_on_lock(db))
                proxy.cut()  # the worker's connection dies while its statement waits in Postgres
            # The lock is gone: the orphaned statement commits. The worker cannot know; it retries.

            async def tries() -> bool:
                value = await redis.get(f"arq:retry:{action_id}")
                return value is not None and int(value) >= 3

            await eventually(tries)  # retried with backoff while Postgres stays unreachable
            assert not call.done()
            proxy.restore()
            answer = await call
    finally:
        await proxy.close()
    assert answer["success"] is True, answer
    # The first try's transaction (action log claim + append) died with its connection, or
    # committed before the answer was lost: either way one message, never a second one.
    assert await count_rows(db, "messages", tenant) == 1
    assert "retrying" in worker.output()


async def test_a_worker_killed_mid_job_is_replaced_and_the_job_runs_once(
    servers: Servers, db: Database, redis: Redis, tenant: str, worker_factory: Any
) -> None:
    queue = f"cs-test-kill-{uuid.uuid4().hex[:8]}"
    quick_lock = {"ARQ_JOB_TIMEOUT_S": "3", "ARQ_IN_PROGRESS_GRACE_S": "0.5", "CRM_TIMEOUT_S": "1"}
    first = worker_factory(queue, **quick_lock)
    await wait_ready(first, redis)
    conversation = await create_conversation(db, tenant, session_id="k")
    async with await ActionClient.connect(servers.redis_url, queue_name=queue) as client:
        action_id = f"act-{uuid.uuid4().hex}"
        async with row_locked(servers, tenant, conversation.id):
            call = asyncio.create_task(
                client.call(
                    "conversation.save_message",
                    tenant_id=tenant,
                    session_id="k",
                    data={"role": "user", "content": "survives a crash"},
                    action_id=action_id,
                    wait_s=30,
                )
            )
            await eventually(lambda: _append_waits_on_lock(db))
            assert await redis.exists(f"arq:in-progress:{action_id}")
            first.kill()  # SIGKILL: no cleanup, the job stays locked in progress
        await redis.delete(f"{queue}:health-check")
        second = worker_factory(queue, **quick_lock)
        await wait_ready(second, redis)
        answer = await call
    assert answer["success"] is True, answer
    assert await count_rows(db, "messages", tenant) == 1  # whether or not the killed try committed
    assert "try=2" in second.output()
    assert answer["action_id"] == action_id
