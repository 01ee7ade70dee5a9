"""Prometheus metrics of this process (served at /metrics)."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

REGISTRY = CollectorRegistry(auto_describe=True)

#: The operation label of every operation that is not a trusted document's (app/api/http.py).
OTHER_OPERATION = "other"

OPERATIONS = Counter(
    "graphql_operations_total",
    "GraphQL operations by name, type and outcome.",
    ["operation", "type", "outcome"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "graphql_operation_duration_seconds",
    "GraphQL operation latency.",
    ["operation", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
ERRORS = Counter("graphql_errors_total", "GraphQL errors by extensions.code.", ["code"], registry=REGISTRY)
DB_POOL_SIZE = Gauge("db_pool_connections", "Connections in the asyncpg pool.", registry=REGISTRY)
DB_POOL_IDLE = Gauge("db_pool_idle_connections", "Idle connections in the asyncpg pool.", registry=REGISTRY)
SUBSCRIBERS = Gauge("graphql_active_subscriptions", "Live subscriptions in this process.", registry=REGISTRY)
EVENTS_PUBLISHED = Counter("events_published_total", "Domain events published to Redis.", registry=REGISTRY)
EVENTS_DROPPED = Counter(
    "events_dropped_total", "Events not published (Redis away); subscribers backfill them.", registry=REGISTRY
)
EVENTS_DELIVERED = Counter("events_delivered_total", "Subscription payloads sent.", ["subscription"], registry=REGISTRY)
BACKFILLS = Counter("subscription_backfills_total", "Storage reads to close a gap or resync.", registry=REGISTRY)
IDLE_CHECKS = Counter(
    "subscription_idle_checks_total",
    "Idle messageAdded streams that asked storage for lastSeq; 'behind' means an event had been lost.",
    ["result"],
    registry=REGISTRY,
)
EVENT_EXECUTIONS = Counter(
    "subscription_event_executions_total", "Subscription selection sets executed for an event.", registry=REGISTRY
)
SHARED_EVENT_RESULTS = Counter(
    "subscription_shared_results_total", "Subscription results reused from another subscriber.", registry=REGISTRY
)
HUB_CONNECTS = Counter("event_hub_connects_total", "Pub/sub (re)connections of this process.", registry=REGISTRY)
HTTP_REJECTED = Counter(
    "http_requests_rejected_total", "Requests refused before GraphQL ran.", ["reason"], registry=REGISTRY
)
# The hot cache (app/cache/). kind: history, header, state, window, range.
CACHE_HITS = Counter("cache_hits_total", "Hot-cache reads answered from Redis.", ["kind"], registry=REGISTRY)
CACHE_MISSES = Counter(
    "cache_misses_total",
    "Hot-cache reads that went to Postgres (not cached, or Redis unavailable).",
    ["kind"],
    registry=REGISTRY,
)
CACHE_FILLS = Counter("cache_fills_total", "Cache entries written from Postgres after a miss.", registry=REGISTRY)
CACHE_INVALIDATIONS = Counter(
    "cache_invalidations_total",
    "Cache entries dropped: an event not provably in order, a failed write repaired, an eviction.",
    registry=REGISTRY,
)
CACHE_ERRORS = Counter(
    "cache_errors_total", "Redis errors the hot cache met (the request went on from Postgres).", registry=REGISTRY
)
# Entries of another codec format (app/codec.py STAMP): a rolling deploy, read as a miss / a gap.
CACHE_UNKNOWN_FORMAT = Counter(
    "cache_unknown_format_total", "Hot-cache entries of another format, read as a miss.", registry=REGISTRY
)
EVENTS_UNKNOWN_FORMAT = Counter(
    "events_unknown_format_total", "Events of another format; their subscribers re-read Postgres.", registry=REGISTRY
)


def authorized(header: str | None, token: str | None) -> bool:
    """METRICS_TOKEN unset: open. Set: `Authorization: Bearer <token>`, compared in constant time."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def watch_pool(pool: Any) -> None:
    """The pool gauges read the pool at scrape time, whichever port serves the scrape."""
    DB_POOL_SIZE.set_function(pool.get_size)
    DB_POOL_IDLE.set_function(pool.get_idle_size)


class MetricsServer:
    """/metrics on its own port (METRICS_PORT): prometheus_client's threaded WSGI server, so a
    scrape never waits on the API's event loop, with the METRICS_TOKEN check in front."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(host: str, port: int, token: str | None) -> MetricsServer:
    exposition = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"metrics need Authorization: Bearer <METRICS_TOKEN>"]
        return exposition(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    return MetricsServer(server, thread)


# WebSocket connections and their operations (app/api/ws_connections.py).
WS_CONNECTIONS = Gauge("ws_connections", "Admitted WebSocket connections in this process.", registry=REGISTRY)
WS_OPERATIONS = Gauge(
    "ws_operations", "Operations running on WebSocket connections in this process.", registry=REGISTRY
)
WS_CLOSED = Counter(
    "ws_closed_total", "WebSocket connections closed by the server, by reason.", ["reason"], registry=REGISTRY
)
ENGINE_UNPLANNED = Counter(
    "graphql_engine_unplanned_total",
    "Operations the GraphQL engine did not execute by plan (answered by the ordinary path), by reason.",
    ["reason"],
    registry=REGISTRY,
)
