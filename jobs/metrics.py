"""The worker's liveness gauges, in the process registry (app/metrics.py) for whatever serves it."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from app.metrics import REGISTRY

LAST_POLL = Gauge(
    "worker_last_poll_timestamp_seconds", "Unix time of the worker's last successful queue poll.", registry=REGISTRY
)
REDIS_OUTAGES = Counter(
    "worker_redis_outages_total", "Times the worker lost Redis and started reconnecting.", registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "worker_dead_letters_total", "Jobs recorded as dead letters, by kind.", ["kind"], registry=REGISTRY
)
