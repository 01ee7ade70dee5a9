"""Where the servers are: configured URLs, or embedded ones in DATA_DIR (running, or started now)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from app.settings import Settings

if TYPE_CHECKING:
    from app.embedded.process import EmbeddedServer

log = logging.getLogger("conversation_service")


@dataclass(slots=True)
class Endpoints:
    database_url: str
    redis_url: str
    #: Servers this process started (and stops on exit); attached ones are not listed.
    started: list[EmbeddedServer] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop()
        self.started.clear()


class NoServers(Exception):
    """No URL configured and no embedded server's data under DATA_DIR (and none may be created)."""


def resolve(settings: Settings, *, need_redis: bool = True, start: bool = True) -> Endpoints:
    """The configured URLs, else the embedded servers in DATA_DIR: the ones `run` started
    if they are up, otherwise started here (and stopped when this process exits).
    ``start=False`` (admin commands) starts only servers whose data is already in DATA_DIR, never
    creates one: a mistyped DATA_DIR would otherwise initdb an empty database and the command
    would quietly work on it."""
    started: list[EmbeddedServer] = []
    try:
        return _resolve(settings, started, need_redis=need_redis, start=start)
    except BaseException:
        # Postgres started here must not outlive a Redis that failed (or was refused).
        Endpoints("", "", started).stop()
        raise


def _resolve(settings: Settings, started: list[EmbeddedServer], *, need_redis: bool, start: bool) -> Endpoints:
    data_dir = settings.resolved_data_dir
    database_url = settings.database_url
    if not database_url and settings.cluster == "citus":
        database_url = _citus(settings, started, start=start)
    if not database_url:
        from app.embedded.postgres import running_postgres, start_postgres

        pg = running_postgres(data_dir / "postgres")
        if pg is None:
            if not start and not (data_dir / "postgres" / "PG_VERSION").is_file():
                raise NoServers(_nothing_running(settings, "DATABASE_URL"))
            pg = start_postgres(data_dir / "postgres", fsync=True, port=settings.embedded_postgres_port)
            started.append(pg)
            log.info("started embedded Postgres on port %s (data in %s)", pg.port, pg.data_dir)
        database_url = pg.url
    redis_url = settings.redis_url
    if not redis_url:
        if need_redis:
            from app.embedded.redis import running_redis, start_redis

            rd = running_redis(data_dir / "redis")
            if rd is None:
                if not start and not (data_dir / "redis").is_dir():
                    raise NoServers(_nothing_running(settings, "REDIS_URL"))
                rd = start_redis(data_dir / "redis", persist=True, port=settings.embedded_redis_port)
                started.append(rd)
                log.info("started embedded Redis on port %s", rd.port)
            redis_url = rd.url
        else:
            redis_url = ""
    return Endpoints(database_url=database_url, redis_url=redis_url, started=started)


def _citus(settings: Settings, started: list[EmbeddedServer], *, start: bool) -> str:
    """CLUSTER=citus: the local Citus cluster in DATA_DIR/citus (dev tooling, imported lazily)."""
    from app.embedded.citus import running_citus, start_citus_cluster

    root = settings.resolved_data_dir / "citus"
    url = running_citus(root)
    if url is not None:
        return url
    if not start and not (root / "coordinator" / "PG_VERSION").is_file():
        raise NoServers(_nothing_running(settings, "DATABASE_URL"))
    cluster = start_citus_cluster(root, fsync=True)
    started.extend([cluster.coordinator, *cluster.workers])
    log.info(
        "started a local Citus cluster: coordinator on port %s, workers on %s",
        cluster.coordinator.port,
        ", ".join(str(w.port) for w in cluster.workers),
    )
    return cluster.url


def _nothing_running(settings: Settings, variable: str) -> str:
    return (
        f"no {variable} set and no service data under DATA_DIR {settings.resolved_data_dir}: "
        f"start the service there (`conversation-service run`), fix DATA_DIR, or set {variable}"
    )


def running_redis_url(settings: Settings) -> str | None:
    """The service's Redis if one is up: REDIS_URL, or the embedded one `run` started. Never
    starts one (for CLI commands that only tell the running service something)."""
    if settings.redis_url:
        return settings.redis_url
    from app.embedded.redis import running_redis

    running = running_redis(settings.resolved_data_dir / "redis")
    return running.url if running is not None else None


def admin_endpoints(settings: Settings) -> Endpoints:
    """The database for an admin command: DATABASE_URL, or the embedded one in DATA_DIR (never a
    new one: runtime.NoServers). An embedded one is migrated first (its `run` may be older than
    this code); a configured one is left alone: production schema changes are `migrate`'s job."""
    endpoints = resolve(settings, need_redis=False, start=False)
    if not settings.database_url:
        from db.migrate import upgrade  # alembic and SQLAlchemy: ~0.7 s of every CLI start otherwise

        upgrade(endpoints.database_url)
    return endpoints


_T = TypeVar("_T")


async def with_db(database_url: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
    """Run `work(Database)` on a small pool of its own (CLI commands), closing it after."""
    from db.session import Database, create_pool

    db = Database(await create_pool(database_url, min_size=1, max_size=2))
    try:
        return await work(db)
    finally:
        await db.close()
