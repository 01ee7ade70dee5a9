"""asyncpg's type introspection runs once per process, not once per pool connection
(db/type_cache.py): new connections decode our types with the first one's answer."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from db import type_cache
from db.session import create_pool
from tests.conftest import Servers


async def test_a_type_is_introspected_once_for_every_connection_of_the_process(servers: Servers) -> None:
    mood = f"mood_{uuid.uuid4().hex[:8]}"  # a type no connection has seen: its OID is new
    admin = await asyncpg.connect(servers.database_url)
    await admin.execute(f"CREATE TYPE {mood} AS ENUM ('calm', 'busy')")
    before = type_cache.RUN[0]
    pool = await create_pool(servers.database_url, min_size=3, max_size=3)
    try:
        held = [await pool._get() for _ in range(3)]
        try:
            assert len({id(conn) for conn in held}) == 3

            async def use(conn: asyncpg.Connection) -> None:
                row = await conn.fetchrow(
                    f"SELECT 'busy'::{mood} AS m, ARRAY['calm'::{mood}] AS ms, $1::{mood} AS p", "calm"
                )
                assert row is not None and (row["m"], row["ms"], row["p"]) == ("busy", ["calm"], "calm")

            await asyncio.gather(*(use(conn) for conn in held))  # three first uses at once
            await use(held[0])
        finally:
            for conn in held:
                await pool.release(conn)
        # asked once (at pool start, or by the first of the three uses while the others waited)
        assert type_cache.RUN[0] - before == 1
    finally:
        await pool.close()
        await admin.execute(f"DROP TYPE {mood}")
        await admin.close()
