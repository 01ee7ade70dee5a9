"""Run Alembic migrations programmatically (the only way the schema is made)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

# Alembic registers its plugins when first imported, with an INFO line each ("setup plugin …"):
# seven lines of no news at every start. Warnings still pass.
logging.getLogger("alembic.runtime.plugins").addFilter(lambda record: record.levelno >= logging.WARNING)

from alembic import command  # noqa: E402 - after the filter above
from alembic.config import Config  # noqa: E402

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


log = logging.getLogger("conversation_service")

#: Alembic's loggers that write a page of INFO lines at every start ("Context impl …",
#: "Will assume transactional DDL", one "Running upgrade …" per revision).
_CHATTY = ("alembic.runtime.migration",)


class _QuietAlembic(logging.Filter):
    """Drops alembic's INFO lines and counts the revisions applied, for one summary line."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.msg == "Running %s" and record.args:
            self.applied.append(str(record.args[0] if isinstance(record.args, tuple) else record.args))
        return False


def upgrade(database_url: str, revision: str = "head") -> None:
    quiet = _QuietAlembic()
    for name in _CHATTY:
        logging.getLogger(name).addFilter(quiet)
    try:
        command.upgrade(alembic_config(database_url), revision)
    finally:
        for name in _CHATTY:
            logging.getLogger(name).removeFilter(quiet)
    if revision == "head":
        # On Citus, tables the migrations just made (whoever wrote them) are distributed by tenant;
        # a no-op on plain Postgres. Alembic's env ran its own loop in this thread and closed it.
        from db.distribute import distribute_url

        asyncio.run(distribute_url(database_url))
    if quiet.applied:
        # A step reads "upgrade <from> -> <to>, <message>".
        head = quiet.applied[-1].split(",", 1)[0].rsplit(" ", 1)[-1]
        log.info("database migrated: %d revisions applied, now at %s", len(quiet.applied), head)
    else:
        log.debug("database schema is up to date")


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """Alembic's env runs its own event loop; keep it off ours."""
    await asyncio.to_thread(upgrade, database_url, revision)
