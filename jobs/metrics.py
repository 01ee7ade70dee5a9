"""The worker's metrics, in the process registry (app/metrics.py); with WORKER_METRICS_PORT the
worker serves them on its own /metrics (`start`). Per-job metrics are counted as jobs run; the
queue depth and the CRM outbox are sampled every WORKER_METRICS_INTERVAL_S by one task, never per
job, so a busy worker adds no query per action."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from arq.connections import ArqRedis
from prometheus_client import Counter, Gauge, Histogram

from app import metrics as app_metrics
from app.metrics import REGISTRY
from app.services import crm
from db.session import Database

log = logging.getLogger("conversation_service.worker")

LAST_POLL = Gauge(
    "worker_last_poll_timestamp_seconds", "Unix time of the worker's last successful queue poll.", registry=REGISTRY
)
REDIS_OUTAGES = Counter(
    "worker_redis_outages_total", "Times the worker lost Redis and started reconnecting.", registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "worker_dead_letters_total", "Jobs recorded as dead letters, by kind.", ["kind"], registry=REGISTRY
)
ACTIONS = Counter(
    "worker_actions_total",
    "Domain actions finished, by action type and outcome (ok, retry, or the dead-letter kind).",
    ["action", "outcome"],
    registry=REGISTRY,
)
ACTION_LATENCY = Histogram(
    "worker_action_duration_seconds",
    "Time one try of a domain action took, by action type.",
    ["action"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RETRIES = Counter(
    "worker_action_retries_total",
    "Tries of domain actions that met a transient failure and were retried.",
    ["action"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "worker_queue_depth", "Jobs waiting in the arq queue (queued and deferred), sampled.", registry=REGISTRY
)
CRM_DELIVERIES = Gauge(
    "crm_deliveries",
    "CRM outbox deliveries not delivered yet, across tenants, by state (pending, retrying, failed), sampled.",
    ["state"],
    registry=REGISTRY,
)
CRM_DELIVERED = Counter(
    "crm_deliveries_delivered",
    "CRM deliveries this worker delivered (the CRM answered 2xx).",
    registry=REGISTRY,
)
CRM_OLDEST_UNDELIVERED = Gauge(
    "crm_oldest_undelivered_age_seconds",
    "Age of the oldest CRM delivery not delivered yet (pending or given up); 0 when none, sampled.",
    registry=REGISTRY,
)


@dataclass
class WorkerMetrics:
    """The /metrics server and the sampling task of one worker."""

    server: app_metrics.MetricsServer
    sampler: asyncio.Task[None]

    async def stop(self) -> None:
        self.sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sampler
        await asyncio.to_thread(self.server.stop)


async def sample(redis: ArqRedis, queue_name: str, db: Database) -> None:
    """One sample of the queue depth (ZCARD of arq's queue) and of the CRM outbox."""
    QUEUE_DEPTH.set(await redis.zcard(queue_name))
    stats = await crm.delivery_stats(db)
    for state, count in stats.by_state.items():
        CRM_DELIVERIES.labels(state).set(count)
    CRM_OLDEST_UNDELIVERED.set(stats.oldest_undelivered_s)


async def _sample_forever(redis: ArqRedis, queue_name: str, db: Database, interval_s: float) -> None:
    while True:
        try:
            await sample(redis, queue_name, db)
        except Exception as exc:  # a server down: the next sample tries again; metrics keep their last value
            log.debug("worker metrics sample failed: %r", exc)
        await asyncio.sleep(interval_s)


def start(
    host: str, port: int, token: str | None, redis: ArqRedis, queue_name: str, db: Database, interval_s: float
) -> WorkerMetrics:
    server = app_metrics.serve(host, port, token)
    sampler = asyncio.create_task(_sample_forever(redis, queue_name, db, interval_s), name="worker-metrics")
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return WorkerMetrics(server, sampler)
