"""What every job gets: the worker's typed state (made at startup) and the retry policy."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import redis.exceptions
from arq import Retry
from arq.connections import ArqRedis

from app.errors import RetryTransaction, ServiceUnavailable
from app.resources import Resources
from app.services.actions import KnownTenants
from app.services.crm import CrmOptions
from app.services.limits import Limits
from app.services.maintenance import MaintenanceOptions
from app.settings import Settings
from db.session import Database


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class WorkerState:
    """Created by the worker's on_startup, closed by its on_shutdown; jobs read it as ctx["state"]."""

    settings: Settings
    db: Database
    redis: ArqRedis
    http: httpx.AsyncClient
    queue_name: str
    limits: Limits
    crm: CrmOptions
    maintenance: MaintenanceOptions
    #: The crons' clock (tests may replace it).
    clock: Callable[[], datetime] = field(default=_utc_now)
    #: The process wiring `db` belongs to (cache write-through and event fan-out listen to it);
    #: the worker closes it at shutdown.
    resources: Resources | None = None
    #: ACTION_SIGNING_KEYS parsed (jobs/signing.py); empty: envelopes need no signature.
    signing_keys: dict[str, bytes] = field(default_factory=dict)
    #: Tenants already seen to exist (app/services/actions.py).
    known_tenants: KnownTenants = field(default_factory=KnownTenants)


def state(ctx: dict[str, Any]) -> WorkerState:
    value = ctx["state"]
    assert isinstance(value, WorkerState)
    return value


#: Failures that say "a server is unreachable or busy", not "this job is wrong": the job is run
#: again with backoff. Domain errors and bugs are never retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused or reset connections; TimeoutError is an OSError
    asyncpg.PostgresConnectionError,  # class 08, and a connection lost mid-statement
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, cannot connect now, statement timeout
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # 40: serialization failure, deadlock
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    RetryTransaction,  # a race retried Database.max_attempts times
    ServiceUnavailable,  # no pooled connection came free within DB_ACQUIRE_TIMEOUT_S
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    # asyncpg reports a pooled connection that died while idle this way.
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


def backoff_s(settings: Settings, job_try: int) -> float:
    """~base, 2·base, 4·base, … capped, with jitter so retries of many jobs spread out."""
    delay = min(settings.arq_retry_base_s * (1 << min(max(job_try - 1, 0), 30)), settings.arq_retry_max_s)
    return delay * random.uniform(0.8, 1.0)


def retry_later(ctx: dict[str, Any]) -> Retry | None:
    """A Retry with backoff when this job has tries left, else None (the caller gives up)."""
    s = state(ctx).settings
    job_try = int(ctx.get("job_try", 1))
    if job_try >= s.arq_max_tries:
        return None
    return Retry(defer=backoff_s(s, job_try))
