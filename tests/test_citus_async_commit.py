"""A Citus node that commits asynchronously is named when a process starts (Citus only).

Why it matters: a shard move with logical replication (Citus' default transfer mode) waits for the
target to reach the source's WAL *write* position; an asynchronous commit can still sit in the WAL
buffers past it, so the move switches without it and an acknowledged write stays behind on the old
placement (docs/scaling.md, "Moves need synchronous_commit"; tests/test_citus_move_writes.py).
The setting is checked as new sessions of the service's user see it on every node, so a role's
`ALTER ROLE ... SET synchronous_commit = off` stands in here for a node configured that way.
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from app.resources import Resources
from app.settings import Settings
from db.repositories import cluster
from db.session import Database, create_pool
from tests import citus_cluster
from tests.conftest import Servers


async def test_nodes_committing_asynchronously_are_named_at_startup(
    db: Database, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    nodes = [current[0].coordinator, *current[0].workers]
    role = f"async_{uuid.uuid4().hex[:8]}"
    async with db.read() as conn:
        assert await cluster.nodes_with_async_commit(conn) == []
        # Citus propagates both to every node.
        await conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        await conn.execute(f"ALTER ROLE {role} SET synchronous_commit = off")
    url = _as_user(servers.database_url, role)
    try:
        as_role = Database(await create_pool(url, min_size=1, max_size=1))
        try:
            async with as_role.read() as conn:
                named = await cluster.nodes_with_async_commit(conn)
        finally:
            await as_role.pool.close()
        assert sorted(named) == sorted(f"127.0.0.1:{n.port}" for n in nodes)

        settings = Settings(_env_file=None, database_url=url, redis_url=servers.redis_url)
        with caplog.at_level(logging.WARNING, logger="conversation_service"):
            resources = await Resources.open(settings, url, servers.redis_url)
            await resources.close()
        warnings = [r.getMessage() for r in caplog.records if "synchronous_commit=off" in r.getMessage()]
        assert len(warnings) == 1 and all(f":{n.port}" in warnings[0] for n in nodes)

        caplog.clear()
        plain = Settings(_env_file=None, database_url=servers.database_url, redis_url=servers.redis_url)
        with caplog.at_level(logging.WARNING, logger="conversation_service"):
            resources = await Resources.open(plain, servers.database_url, servers.redis_url)
            await resources.close()
        assert not [r for r in caplog.records if "synchronous_commit" in r.getMessage()]
    finally:
        async with db.read() as conn:
            await conn.execute(f"DROP ROLE {role}")


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))
