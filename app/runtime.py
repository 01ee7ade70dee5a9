"""Where the servers are: configured URLs, or embedded ones in DATA_DIR (running, or started now)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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


def resolve(settings: Settings, *, need_redis: bool = True) -> Endpoints:
    """The configured URLs, else the embedded servers in DATA_DIR: the ones `run` started
    if they are up, otherwise started here (and stopped when this process exits)."""
    started: list[EmbeddedServer] = []
    data_dir = settings.resolved_data_dir
    database_url = settings.database_url
    if not database_url:
        from app.embedded.postgres import running_postgres, start_postgres

        pg = running_postgres(data_dir / "postgres")
        if pg is None:
            pg = start_postgres(data_dir / "postgres", fsync=True)
            started.append(pg)
            log.info("started embedded Postgres on port %s (data in %s)", pg.port, pg.data_dir)
        database_url = pg.url
    redis_url = settings.redis_url
    if not redis_url:
        if need_redis:
            from app.embedded.redis import running_redis, start_redis

            rd = running_redis(data_dir / "redis")
            if rd is None:
                rd = start_redis(data_dir / "redis", persist=True)
                started.append(rd)
                log.info("started embedded Redis on port %s", rd.port)
            redis_url = rd.url
        else:
            redis_url = ""
    return Endpoints(database_url=database_url, redis_url=redis_url, started=started)


def running_redis_url(settings: Settings) -> str | None:
    """The service's Redis if one is up: REDIS_URL, or the embedded one `run` started. Never
    starts one (for CLI commands that only tell the running service something)."""
    if settings.redis_url:
        return settings.redis_url
    from app.embedded.redis import running_redis

    running = running_redis(settings.resolved_data_dir / "redis")
    return running.url if running is not None else None
