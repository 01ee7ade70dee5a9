"""The arq worker: one settings factory, JSON (never pickle), a named queue, a typed startup state.

    conversation-service worker          # what `run` starts; DATABASE_URL / REDIS_URL or embedded

Functions: the domain actions (jobs/actions.py, named by action type), `crm.deliver`
(jobs/crm.py) and `ping`; crons in jobs/maintenance.py. docs/jobs.md describes all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import arq.worker
import httpx
from arq.connections import RedisSettings
from arq.worker import Function, func

from app import tokens
from app.resources import Resources
from app.services import crm
from app.services.crm import CrmOptions
from app.services.maintenance import MaintenanceOptions
from app.settings import Settings, get_settings
from jobs import actions
from jobs import crm as crm_jobs
from jobs import maintenance as maintenance_jobs
from jobs.client import json_deserializer, json_serializer
from jobs.context import WorkerState, state

log = logging.getLogger("conversation_service.worker")


async def ping(ctx: dict[str, Any], payload: Any = None) -> dict[str, Any]:
    """Round-trip check for the queue: answers with what it was given."""
    return {"pong": True, "payload": payload}


async def startup(ctx: dict[str, Any]) -> None:
    """Open what every job uses (ctx["state"]); the arq pool is ctx["redis"].

    The database comes from `Resources.open`, as in the API: its listeners keep the hot cache
    and the live event fan-out in step with what jobs write (a message saved by an action
    reaches subscribers like one saved through GraphQL)."""
    settings: Settings = ctx["settings"]
    tokens.warm_up()
    resources = await Resources.open(settings, ctx["database_url"], ctx["redis_url"])
    st = WorkerState(
        settings=settings,
        db=resources.db,
        redis=ctx["redis"],
        http=httpx.AsyncClient(timeout=settings.crm_timeout_s, follow_redirects=False),
        queue_name=ctx["queue_name"],
        limits=resources.limits,
        crm=CrmOptions.from_settings(settings),
        maintenance=MaintenanceOptions.from_settings(settings),
        resources=resources,
    )
    ctx["state"] = st
    crm.set_dispatcher(crm_jobs.dispatcher(st.redis, st.queue_name))
    log.info("worker ready on queue %s", st.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "state" not in ctx:
        return
    st = state(ctx)
    crm.set_dispatcher(None)
    await st.http.aclose()
    if st.resources is not None:
        await st.resources.close()


def worker_settings(
    settings: Settings | None = None, *, database_url: str, redis_url: str, queue_name: str | None = None
) -> dict[str, Any]:
    """The WorkerSettings, as the keyword arguments of arq's Worker."""
    settings = settings or get_settings()
    queue = queue_name or settings.arq_queue
    functions: list[Function] = [
        func(ping, name="ping"),
        *actions.functions(settings.arq_keep_result_s),
        *crm_jobs.functions(),
    ]
    return {
        "functions": functions,
        "cron_jobs": maintenance_jobs.cron_jobs(settings.arq_job_timeout_s) if settings.cron_enabled else [],
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": queue,
        "health_check_key": f"{queue}:health-check",
        "job_serializer": json_serializer,
        "job_deserializer": json_deserializer,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings, "database_url": database_url, "redis_url": redis_url, "queue_name": queue},
        "max_jobs": settings.arq_max_jobs,
        "poll_delay": settings.arq_poll_delay_s,
        "job_timeout": settings.arq_job_timeout_s,
        "max_tries": settings.arq_max_tries,
        "keep_result": settings.arq_keep_result_s,
        "handle_signals": True,
    }


class Worker(arq.worker.Worker):
    """arq's Worker, minus one waste: on every poll with free slots arq re-checks each queued job
    with three Redis round trips (WATCH, EXISTS, ZSCORE), including the jobs this very worker is
    running (they stay in the queue until they finish): with tens of jobs in flight and a 10 ms
    poll, thousands of useless round trips a second. Jobs this worker runs are skipped here
    without asking Redis (docs/jobs.md, "Throughput")."""

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        await super().start_jobs([j for j in job_ids if j.decode() not in self.tasks])


def create_worker(
    settings: Settings | None = None, *, database_url: str, redis_url: str, queue_name: str | None = None
) -> Worker:
    settings = settings or get_settings()
    # uvloop where installed (uvicorn[standard] brings it), as the API runs: a worker is mostly
    # event-loop and socket work, and uvloop does that in C. arq takes the loop at construction.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop(uvloop.new_event_loop())
    worker = Worker(**worker_settings(settings, database_url=database_url, redis_url=redis_url, queue_name=queue_name))
    # arq keeps a started job locked for (longest timeout + 10 s); after that another worker runs
    # the job of a worker that died. The grace is a setting so a dead worker's job comes back sooner.
    worker.in_progress_timeout_s = settings.arq_job_timeout_s + settings.arq_in_progress_grace_s
    return worker
