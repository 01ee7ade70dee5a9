"""asyncpg's type introspection, run once per process instead of once per connection.

A statement whose parameters or columns use a type asyncpg has no built-in codec for (our enums,
arrays of them, `vector`, composite results) makes asyncpg run its introspection query on that
connection before the statement's first use. That query walks every type of the database: with a
row type per table it costs ~0.5 s of server CPU here (PG 18; 1.5 s on a loaded Citus
coordinator), and each new pool connection paid it for every such statement. Eight writers
starting together on two fresh API processes stalled 2-5 s behind it (tests/test_citus_rebalance.py,
the longest write outside the move; pg_stat_activity showed the coordinator busy with nothing else).

The answer depends only on the database and the type OIDs, so the process keeps it: every type
row asyncpg was given, by OID, and one query in flight per set of OIDs (concurrent first uses
wait for it instead of each asking). `prime` asks once, at pool start, for every type of the
service's schema, so requests never wait for it at all.

This overrides `Connection._introspect_types`, a private method of asyncpg (pinned `<0.33` in
pyproject.toml); tests/test_type_cache.py fails if a new asyncpg version stops calling it.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import asyncpg

log = logging.getLogger("conversation_service.db")

#: (host, port, database) -> {type OID: the rows of the answer that described it (it and the
#: types it is made of)}. OIDs are not reused by a live database in practice; a migration that
#: creates types gives new OIDs, which are simply asked for.
_KNOWN: dict[tuple[Any, ...], dict[int, list[Any]]] = {}
_IN_FLIGHT: dict[tuple[Any, ...], asyncio.Future[list[Any]]] = {}
#: Stands for the introspection statement not run: a named one, so asyncpg keeps the anonymous
#: statement it prepared before asking (it re-prepares only when the anonymous one was replaced).
_NOT_RUN = SimpleNamespace(name="shared-type-introspection")
#: How many introspection queries this process actually ran (tests, and the reason for this module).
RUN = [0]

#: The service schema's enums, domains and extension base types (pgvector's `vector`), with their
#: arrays, and the arrays of Postgres' own base types (asyncpg introspects `int4[]` and `uuid[]`
#: too): what our statements' parameters and columns use. Not the tables' row types (composites):
#: asyncpg refuses some of them (a `vector` attribute has no binary composite codec) and no
#: statement returns one; a composite a statement does use is asked for at its first use, once.
_SCHEMA_TYPES = """
SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_type elem ON elem.oid = t.typelem AND t.typcategory = 'A'
WHERE t.typisdefined AND t.typtype IN ('b', 'd', 'e') AND coalesce(elem.typtype, t.typtype) <> 'c'
  AND (n.nspname = current_schema() OR (n.nspname = 'pg_catalog' AND t.typcategory = 'A'))
"""


def _database(conn: asyncpg.Connection) -> tuple[Any, ...]:
    return (getattr(conn, "_addr"), getattr(conn, "_params").database)  # noqa: B009 (private, untyped)


def _known_rows(database: tuple[Any, ...], typeoids: Any) -> list[Any] | None:
    known = _KNOWN.get(database, {})
    if not all(oid in known for oid in typeoids):
        return None
    rows: dict[int, Any] = {}
    for oid in typeoids:
        for row in known[oid]:
            rows[row["oid"]] = row
    return list(rows.values())


class SharedTypesConnection(asyncpg.Connection):
    async def _introspect_types(self, typeoids: Any, timeout: Any) -> tuple[Any, Any]:  # noqa: ASYNC109 (asyncpg's signature)
        database = _database(self)
        rows = _known_rows(database, typeoids)
        if rows is not None:
            return rows, _NOT_RUN
        flight_key = (*database, tuple(sorted(typeoids)))
        flight = _IN_FLIGHT.get(flight_key)
        if flight is not None:
            return await asyncio.shield(flight), _NOT_RUN
        flight = _IN_FLIGHT[flight_key] = asyncio.get_running_loop().create_future()
        try:
            RUN[0] += 1
            types, statement = await super()._introspect_types(typeoids, timeout)  # type: ignore[misc]
            answer = list(types)
            known = _KNOWN.setdefault(database, {})
            for row in answer:
                known[row["oid"]] = answer
            flight.set_result(answer)
            return answer, statement
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: nobody may be waiting
            raise
        finally:
            del _IN_FLIGHT[flight_key]

    async def reload_schema_state(self) -> None:
        # A type changed under us (asyncpg calls this on an OutdatedSchemaCacheError): forget the
        # shared answers too, so this and every other connection ask the database again.
        _KNOWN.pop(_database(self), None)
        await super().reload_schema_state()


async def prime(conn: asyncpg.Connection) -> None:
    """Learn every type of the schema in one query, before any request needs one."""
    if not isinstance(conn, SharedTypesConnection) or _KNOWN.get(_database(conn)):
        return
    try:
        oids = [row["oid"] for row in await conn.fetch(_SCHEMA_TYPES)]
        if oids:
            await conn._introspect_types(oids, None)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Only a head start: without it each type is still asked once, at its first use.
        log.warning("could not learn the schema's types at pool start (%s); asyncpg asks at first use", exc)
