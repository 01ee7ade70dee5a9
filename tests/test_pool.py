"""LeanPool against a real Postgres: bounded size, waiters, broken connections, leftovers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.errors import ServiceUnavailable
from db.session import LeanPool, create_pool
from tests.conftest import Servers


@pytest.fixture
async def pool(servers: Servers) -> AsyncIterator[LeanPool]:
    lean = await create_pool(servers.database_url, min_size=1, max_size=2)
    yield lean
    await lean.close()


async def test_size_is_bounded_and_waiters_are_served_in_turn(pool: LeanPool) -> None:
    a = await pool.acquire()
    b = await pool.acquire()
    assert pool.get_size() == 2 and pool.get_idle_size() == 0
    waiter = asyncio.create_task(pool._get())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await pool.release(a)
    c = await asyncio.wait_for(waiter, 2)
    assert c is a and pool.get_size() == 2
    await pool.release(b)
    await pool.release(c)
    assert pool.get_idle_size() == 2


async def test_a_cancelled_waiter_loses_no_connection(pool: LeanPool) -> None:
    a, b = await pool.acquire(), await pool.acquire()
    waiter = asyncio.create_task(pool._get())
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await pool.release(a)
    await pool.release(b)
    assert pool.get_idle_size() == 2
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_a_broken_connection_is_replaced(pool: LeanPool) -> None:
    async with pool.acquire() as conn:
        pid = conn.get_server_pid()
        async with pool.acquire() as other:
            await other.execute("SELECT pg_terminate_backend($1)", pid)
        await asyncio.sleep(0.1)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await conn.fetchval("SELECT 1")
    async with pool.acquire() as fresh:
        assert fresh.get_server_pid() != pid
        assert await fresh.fetchval("SELECT 1") == 1
    assert pool.get_size() <= 2


async def test_an_open_transaction_never_survives_a_release(pool: LeanPool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("CREATE TEMP TABLE leftover (x int)")
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT to_regclass('pg_temp.leftover')") is None


async def test_a_full_pool_answers_service_unavailable_after_the_acquire_timeout(servers: Servers) -> None:
    lean = await create_pool(servers.database_url, min_size=1, max_size=1, acquire_timeout_s=0.2)
    try:
        held = await lean.acquire()
        started = asyncio.get_running_loop().time()
        with pytest.raises(ServiceUnavailable, match="no database connection came free"):
            await lean.acquire()
        assert 0.15 < asyncio.get_running_loop().time() - started < 2
        # The timed-out waiter took nothing: the held connection goes back and serves the next caller.
        await lean.release(held)
        assert lean.get_size() == 1 and lean.get_idle_size() == 1
        async with lean.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await lean.close()


async def test_a_connection_that_never_answers_fails_after_the_connect_timeout() -> None:
    # A listening socket that accepts and never speaks: a hung Postgres, not a refusing one.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(TimeoutError):
            await create_pool(f"postgresql://x:y@127.0.0.1:{port}/db", min_size=1, connect_timeout_s=0.3)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
