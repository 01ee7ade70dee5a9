"""Optional OpenTelemetry tracing: off unless `OTEL_TRACING` or `OTEL_EXPORTER_OTLP_ENDPOINT`.

When off, nothing here imports opentelemetry (an optional dependency, the `[otel]` extra, and
a startup cost); every helper is then a no-op. When on, each process (API, worker) exports its
spans over OTLP/HTTP in batches: the API's HTTP and WebSocket requests (Starlette
instrumentation), every asyncpg query, and a span per job. A request's trace reaches the jobs
it enqueues through the W3C `traceparent` carried in the job (the action envelope's
`traceparent`, a CRM delivery's payload), and the worker continues that trace.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from app.settings import Settings

log = logging.getLogger("conversation_service.tracing")

_configured: dict[str, bool] = {"active": False}


def active() -> bool:
    return _configured["active"]


def setup(settings: Settings, role: str) -> bool:
    """Install the tracer provider and the asyncpg instrumentation, once per process. False when
    tracing is off (nothing imported)."""
    if not settings.tracing_enabled:
        return False
    if _configured["active"]:
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "tracing is configured (OTEL_TRACING / OTEL_EXPORTER_OTLP_ENDPOINT) but OpenTelemetry is not "
            "installed: pip install 'conversation-service[otel]'"
        ) from exc
    endpoint = settings.otel_exporter_otlp_endpoint
    # An explicit endpoint is a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is for the SDK.
    exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces") if endpoint else OTLPSpanExporter()
    resource = Resource.create({"service.name": settings.otel_service_name, "conversation_service.role": role})
    # The provider flushes its batch at interpreter exit (SIGTERM ends both processes normally).
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    _configured["active"] = True
    log.info("OpenTelemetry tracing on (%s, OTLP/HTTP to %s)", role, endpoint or "the OTEL_* environment")
    return True


def instrument_app(app: Starlette, settings: Settings) -> None:
    """The API: a server span per HTTP request and WebSocket connection (not per WebSocket
    message, which would be a span per streamed event)."""
    if not setup(settings, "api"):
        return
    # The ASGI middleware itself (what the Starlette instrumentation adds), for `exclude_spans`.
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(OpenTelemetryMiddleware, exclude_spans=["receive", "send"], default_span_details=_span_details)


_ROUTES = frozenset({"/graphql", "/healthz", "/readyz", "/metrics"})


def _span_details(scope: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """`POST /graphql`, `WS /graphql`: named by route, so unknown paths do not make new span names."""
    path = scope.get("path", "")
    route = path if path in _ROUTES else "/static/graphiql" if path.startswith("/static/graphiql/") else "other"
    method = scope.get("method", "WS") if scope.get("type") == "http" else "WS"
    return f"{method} {route}", {"http.route": route}


def current_traceparent() -> str | None:
    """The W3C traceparent of the span running now, for a job about to be enqueued. A producer
    process that set up OpenTelemetry itself (not through `setup`) gets its context carried too;
    one that never imported it pays nothing."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def annotate_request(operation_type: str, operation_name: str, codes: list[str], tenant: str | None) -> None:
    """The GraphQL operation on the request's server span (its name stays the route's)."""
    from opentelemetry import trace

    attributes: dict[str, str | list[str]] = {
        "graphql.operation.type": operation_type,
        "graphql.operation.name": operation_name,
    }
    if tenant is not None:
        attributes["conversation_service.tenant"] = tenant
    if codes:
        attributes["conversation_service.error_codes"] = codes
    trace.get_current_span().set_attributes(attributes)


@contextmanager
def job_span(name: str, traceparent: Any, attributes: dict[str, str]) -> Iterator[None]:
    """A consumer span around one job try, the child of the enqueuing span when the job carries
    its `traceparent` (a malformed one starts a new trace: tracing never fails a job)."""
    if not _configured["active"]:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = (
        TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if isinstance(traceparent, str) else None
    )
    tracer = trace.get_tracer("conversation_service.jobs")
    with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes):
        yield
