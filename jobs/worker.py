"""The arq worker: one settings factory, JSON (never pickle), a named queue, a typed startup state.

    conversation-service worker          # what `run` starts; DATABASE_URL / REDIS_URL or embedded

Functions: the domain actions (jobs/actions.py, named by action type), `crm.deliver`
(jobs/crm.py) and `ping`; crons in jobs/maintenance.py. docs/jobs.md describes all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import arq.worker
import httpx
import redis.exceptions
from arq.connections import RedisSettings, create_pool
from arq.utils import poll
from arq.worker import Function, func

from app import liveness, tokens, tracing
from app.queue import json_serializer
from app.resources import Resources
from app.services import crm, summaries
from app.services.crm import CrmOptions
from app.services.maintenance import MaintenanceOptions
from app.settings import Settings, get_settings
from jobs import actions, metrics, signing, undecodable
from jobs import crm as crm_jobs
from jobs import embeddings as embedding_jobs
from jobs import maintenance as maintenance_jobs
from jobs import summaries as summary_jobs
from jobs.context import WorkerState, is_transient, state

log = logging.getLogger("conversation_service.worker")


class _HealthAtDebug(logging.Filter):
    """arq logs "recording health" at INFO whenever its counters moved since the last record; with
    the heartbeat every few seconds and a cron every 15 s that is a line every 15 s. The heartbeat's
    age is in /readyz and the metrics: keep the line for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith("recording health"):
            return logging.getLogger("arq.worker").isEnabledFor(logging.DEBUG)
        return True


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
        signing_keys=signing.parse_keys(settings.action_signing_keys),
    )
    ctx["state"] = st
    crm.set_dispatcher(crm_jobs.dispatcher(st.redis, st.queue_name))
    summary_jobs.install(st.db, st.redis, settings, st.queue_name)
    ctx["embedding_trigger"] = embedding_jobs.install(st.db, st.redis, settings, st.queue_name)
    if settings.worker_metrics_port is not None:
        ctx["metrics"] = metrics.start(
            settings.host,
            settings.worker_metrics_port,
            settings.metrics_token,
            st.redis,
            st.queue_name,
            st.db,
            settings.worker_metrics_interval_s,
        )
    log.info("worker ready on queue %s", st.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "state" not in ctx:
        return
    st = state(ctx)
    crm.set_dispatcher(None)
    summaries.set_enqueuer(None)
    trigger = ctx.pop("embedding_trigger", None)
    if trigger is not None:
        await trigger.close()
    served = ctx.pop("metrics", None)
    if isinstance(served, metrics.WorkerMetrics):
        await served.stop()
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
        func(actions.undecodable_job, name=undecodable.UNDECODABLE, keep_result=settings.arq_keep_result_s),
        *actions.functions(settings.arq_keep_result_s),
        *crm_jobs.functions(),
        *summary_jobs.functions(settings),
        *embedding_jobs.functions(settings),
    ]
    cron_jobs = maintenance_jobs.cron_jobs(settings.arq_job_timeout_s) if settings.cron_enabled else []
    cron_jobs += embedding_jobs.cron_jobs(settings) if settings.cron_enabled else []
    return {
        "functions": functions,
        "cron_jobs": cron_jobs,
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": queue,
        "health_check_key": f"{queue}:health-check",
        "health_check_interval": settings.worker_heartbeat_s,
        "job_serializer": json_serializer,
        "job_deserializer": undecodable.worker_deserializer([f.name for f in functions] + [c.name for c in cron_jobs]),
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


#: What an unreachable (restarting, partitioned) Redis raises; the worker waits it out.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


class Worker(arq.worker.Worker):
    """arq's Worker, made to outlive Redis and to waste fewer round trips.

    - arq's poll loop lets a Redis ConnectionError escape and the process exits (issue 9): here
      the loop reconnects with capped, jittered backoff instead, for as long as it takes, and
      logs the outage once and its end once. Startup waits for Redis (and Postgres) the same way.
    - arq counts a job slot before asking Redis about the job and never gives it back if Redis
      fails in between: after `max_jobs` such failures the worker would poll for ever and run
      nothing. The slot is returned here.
    - Each heartbeat also writes `<queue>:worker-heartbeat` (app/liveness.py) for /readyz, and
      each successful poll sets the `worker_last_poll_timestamp_seconds` gauge.
    - On every poll with free slots arq re-checks each queued job with three Redis round trips
      (WATCH, EXISTS, ZSCORE), including the jobs this very worker is running: with tens of jobs
      in flight and a 10 ms poll, thousands of useless round trips a second. Jobs this worker
      runs are skipped without asking Redis (docs/jobs.md, "Throughput").
    """

    reconnect_max_s: float = 2.0
    _down_since: float | None = None
    _reconnects: int = 0

    async def main(self) -> None:
        await self._start_when_reachable()
        async for _ in poll(self.poll_delay_s):
            try:
                await self._poll_iteration()
            except REDIS_DOWN as exc:
                await self._wait_out(exc)
                continue
            if self._down_since is not None:
                log.warning("Redis is back after %.1f s; polling again", time.monotonic() - self._down_since)
                self._down_since, self._reconnects = None, 0
            metrics.LAST_POLL.set(time.time())

    async def _start_when_reachable(self) -> None:
        """arq's main() up to its poll loop, retried while Redis or Postgres cannot be reached."""
        while True:
            try:
                if self._pool is None:
                    self._pool = await create_pool(
                        self.redis_settings,
                        job_deserializer=self.job_deserializer,
                        job_serializer=self.job_serializer,
                        default_queue_name=self.queue_name,
                        expires_extra_ms=self.expires_extra_ms,
                    )
                log.info("Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
                self.ctx["redis"] = self.pool
                if self.on_startup:
                    await self.on_startup(self.ctx)
                return
            except Exception as exc:
                if not (isinstance(exc, REDIS_DOWN) or is_transient(exc)):
                    raise
                await self._wait_out(exc)

    async def _wait_out(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            metrics.REDIS_OUTAGES.inc()
            log.warning("a server is unreachable (%s: %s); reconnecting with backoff", type(exc).__name__, exc)
        else:
            log.debug("still unreachable: %r", exc)
        delay = min(0.1 * (1 << min(self._reconnects, 10)), self.reconnect_max_s)
        self._reconnects += 1
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id_b in job_ids:
            job_id = job_id_b.decode()
            if job_id in self.tasks:
                continue
            try:
                await super().start_jobs([job_id_b])
            except REDIS_DOWN:
                if job_id not in self.tasks:  # arq took the slot, then Redis failed: give it back
                    self._release_sem_dec_counter_on_complete()
                raise

    async def record_health(self) -> None:
        due = time.time() - self._last_health_check >= self.health_check_interval
        await super().record_health()
        if due:
            await liveness.beat(self.pool, self.queue_name)

    async def close(self) -> None:
        """arq's close, except that Redis being down at shutdown is no error (and on_shutdown runs)."""
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(*REDIS_DOWN):
            await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.close(close_connection_pool=True)
        self._pool = None


logging.getLogger("arq.worker").addFilter(_HealthAtDebug())


def create_worker(
    settings: Settings | None = None, *, database_url: str, redis_url: str, queue_name: str | None = None
) -> Worker:
    settings = settings or get_settings()
    tracing.setup(settings, "worker")  # a no-op (nothing imported) unless tracing is configured
    # uvloop where installed (uvicorn[standard] brings it), as the API runs: a worker is mostly
    # event-loop and socket work, and uvloop does that in C. arq takes the loop at construction.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop(uvloop.new_event_loop())
    worker = Worker(**worker_settings(settings, database_url=database_url, redis_url=redis_url, queue_name=queue_name))
    # arq keeps a started job locked for (longest timeout + 10 s); after that another worker runs
    # the job of a worker that died. The grace is a setting so a dead worker's job comes back sooner.
    worker.in_progress_timeout_s = settings.arq_job_timeout_s + settings.arq_in_progress_grace_s
    worker.reconnect_max_s = settings.worker_reconnect_max_s
    return worker
