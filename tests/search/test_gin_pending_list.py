"""The full-text index keeps a small GIN pending list (migration ac43885c0bbd): every keyword-search
probe scans the whole list, and the append that crosses the limit merges it (docs/decisions.md,
"The GIN pending list"). On Citus every shard's index carries the setting, after a fresh migrate
(the table distributed after its index was altered) and after the migration ran on a table already
distributed (the ALTER INDEX propagated)."""

from __future__ import annotations

import asyncio

from alembic import command

from db.migrate import alembic_config, upgrade_async
from db.session import Database, has_citus
from tests import citus_cluster
from tests.conftest import Servers

INDEX = "ix_messages_search"
OPTIONS = ["fastupdate=on", "gin_pending_list_limit=256"]
#: The revision before ac43885c0bbd: downgrading to it undoes that migration (and any later one).
PREVIOUS = "1fd9a71b989d"


async def _options(db: Database) -> list[str] | None:
    async with db.read() as conn:
        value = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = $1 AND relkind = 'i'", INDEX)
    return list(value) if value is not None else None


async def _shard_options() -> dict[str, list[str] | None]:
    """Each shard index of ix_messages_search on every node: its storage parameters."""
    cluster = citus_cluster.current_cluster()
    assert cluster is not None
    nodes = cluster[0]
    out: dict[str, list[str] | None] = {}
    for port in sorted({nodes.coordinator.port, *(w.port for w in nodes.workers)}):
        async with citus_cluster.shards_on(port, "messages") as (conn, _):
            rows = await conn.fetch(
                "SELECT relname, reloptions FROM pg_class WHERE relkind = 'i' AND relname ~ $1",
                f"^{INDEX}_[0-9]+$",
            )
        out.update({f"{port}/{r['relname']}": list(r["reloptions"]) if r["reloptions"] else None for r in rows})
    return out


async def _citus(db: Database) -> bool:
    async with db.read() as conn:
        return await has_citus(conn)


async def _assert_everywhere(db: Database, expected: list[str] | None) -> None:
    assert await _options(db) == expected
    if await _citus(db):
        shards = await _shard_options()
        assert shards, "no shard of ix_messages_search found on any node"
        assert {name: options for name, options in shards.items() if options != expected} == {}


async def test_the_search_index_has_a_small_pending_list(db: Database) -> None:
    await _assert_everywhere(db, OPTIONS)


async def test_the_migration_downgrades_to_the_defaults_and_upgrades_again(db: Database, servers: Servers) -> None:
    config = alembic_config(servers.database_url)
    # Alembic's env runs its own event loop: a thread keeps it off the test's.
    await asyncio.to_thread(command.downgrade, config, PREVIOUS)
    try:
        await _assert_everywhere(db, None)
    finally:
        await upgrade_async(servers.database_url)
        guard = citus_cluster.current_guard()
        if guard is not None:  # DDL commits on every node (2PC): migrations are allowed to (strict mode)
            guard.skip_to_end()
    await _assert_everywhere(db, OPTIONS)
