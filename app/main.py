"""The ASGI application: factory and lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from arq.connections import ArqRedis, RedisSettings
from arq.connections import create_pool as create_arq_pool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from app import metrics, tokens, tracing
from app.api.documents import DocumentRegistry
from app.api.error_guard import JsonErrorGuard, http_exception_as_json
from app.api.graphiql import assets_mount
from app.api.http import GraphQLView
from app.api.schema import build_schema
from app.api.websocket import KeepaliveTransportWSHandler
from app.api.ws_connections import ConnectionRegistry
from app.auth import Authenticator
from app.events import KEY_REVOKED_CHANNEL
from app.middleware import BodyReadTimeout, BodySizeLimit, TenantCORS
from app.resources import Resources
from app.services import crm, summaries
from app.settings import Settings, get_settings

log = logging.getLogger("conversation_service")


async def healthz(request: Request) -> JSONResponse:
    """Alive while the process runs; says nothing about its dependencies (that is /readyz)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    resources: Resources = request.app.state.resources
    report = await resources.readiness()
    return JSONResponse(report, status_code=503 if report["status"] == "down" else 200)


async def metrics_endpoint(request: Request) -> Response:
    token: str | None = request.app.state.metrics_token
    if not metrics.authorized(request.headers.get("authorization"), token):
        return Response("metrics need Authorization: Bearer <METRICS_TOKEN>", status_code=401)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _crm_dispatch(settings: Settings, redis_url: str) -> ArqRedis | None:
    """CRM deliveries written by this process go to the worker right after commit. With Redis
    down at start the worker's sweep picks them up instead (within seconds), so start anyway."""
    from app.queue import json_deserializer, json_serializer
    from jobs.crm import dispatcher

    try:
        redis_settings = RedisSettings.from_dsn(redis_url)
        redis_settings.conn_retries = 0
        arq = await create_arq_pool(
            redis_settings,
            job_serializer=json_serializer,
            job_deserializer=json_deserializer,
            default_queue_name=settings.arq_queue,
            retry=0,
        )
    except (RedisError, OSError) as exc:
        log.warning("no arq pool for CRM dispatch (%s); the worker's sweep will deliver", exc)
        return None
    crm.set_dispatcher(dispatcher(arq, settings.arq_queue))
    return arq


def create_app(
    settings: Settings | None = None, *, database_url: str | None = None, redis_url: str | None = None
) -> Starlette:
    """Build the app. URLs default to the settings'; the CLI passes the embedded servers' URLs."""
    settings = settings or get_settings()
    db_url = database_url or settings.database_url
    cache_url = redis_url or settings.redis_url
    if not db_url or not cache_url:
        raise RuntimeError(
            "create_app needs DATABASE_URL and REDIS_URL (use `conversation-service run` for embedded servers)"
        )
    graphql = GraphQLView(
        documents=DocumentRegistry.load(
            trusted_only=settings.trusted_documents_only,
            apq_bytes=settings.apq_cache_bytes,
            apq_max_query_bytes=settings.max_cached_document_bytes,
        ),
        max_query_bytes=settings.max_query_bytes,
        schema=build_schema(settings),
        graphql_ide=None if settings.is_production else "graphiql",
        allow_queries_via_get=True,
        connection_init_wait_timeout=timedelta(seconds=settings.ws_init_timeout_s),
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
        keep_alive=True,  # legacy graphql-ws: "ka" messages
        keep_alive_interval=settings.ws_keepalive_s,
        # Auth rides in connection_init, never in cookies, so any origin may open a socket unless
        # CORS_ALLOWED_ORIGINS names the browser origins allowed (then the same list as for HTTP).
        allowed_origins=settings.cors_origins or ("*",),
    )
    keepalive_s = settings.ws_keepalive_s

    class TransportWSHandler(KeepaliveTransportWSHandler):
        pass

    TransportWSHandler.keepalive_s = keepalive_s
    graphql.graphql_transport_ws_handler_class = TransportWSHandler

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tokens.warm_up()
        resources = await Resources.open(settings, db_url, cache_url)
        app.state.resources = resources
        app.state.authenticator = Authenticator(resources.db, settings.auth_mode)
        metrics.watch_pool(resources.db.pool)
        metrics_server = (
            metrics.serve(settings.host, settings.metrics_port, settings.metrics_token)
            if settings.metrics_port is not None
            else None
        )
        app.state.ws_connections = connections = ConnectionRegistry(
            app.state.authenticator,
            max_connections=settings.max_ws_connections,
            max_per_tenant=settings.max_ws_connections_per_tenant,
            max_per_key=settings.max_ws_connections_per_key,
            max_subscriptions_per_tenant=settings.max_subscriptions_per_tenant,
            recheck_s=settings.ws_auth_recheck_s,
        )
        await resources.hub.listen(KEY_REVOKED_CHANNEL, connections.on_key_revoked, connections.recheck_now)
        connections.start()
        arq = await _crm_dispatch(settings, cache_url)
        embedding_trigger = None
        if arq is not None:
            from jobs import summaries as summary_jobs

            summary_jobs.install(resources.db, arq, settings, settings.arq_queue)
            from jobs import embeddings as embedding_jobs

            embedding_trigger = embedding_jobs.install(resources.db, arq, settings, settings.arq_queue)
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.stop()
            await connections.stop()
            if arq is not None:
                crm.set_dispatcher(None)
                summaries.set_enqueuer(None)
                if embedding_trigger is not None:
                    await embedding_trigger.close()
                await arq.aclose()
            await resources.close()

    # With METRICS_PORT, /metrics lives on that port only (a private interface, say).
    metrics_routes = [Route("/metrics", metrics_endpoint)] if settings.metrics_port is None else []
    # GraphiQL's scripts, served only where GraphiQL is (development), from package data.
    ide_routes: list[BaseRoute] = [] if settings.is_production else [assets_mount()]
    app = Starlette(
        debug=False,
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *metrics_routes,
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            *ide_routes,
        ],
        middleware=[
            # Outermost: whatever escapes below is still answered as JSON with a code.
            Middleware(JsonErrorGuard),
            # Then CORS, so preflights are answered (or refused) before anything reads a body.
            Middleware(
                TenantCORS,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Tenant-ID", "X-Request-ID"],
                expose_headers=["X-Request-ID"],
                max_age=600,
            ),
            Middleware(BodyReadTimeout, timeout_s=settings.body_read_timeout_s),
            Middleware(BodySizeLimit, max_bytes=settings.max_request_bytes),
        ],
        exception_handlers={HTTPException: http_exception_as_json},
        lifespan=lifespan,
    )
    app.state.metrics_token = settings.metrics_token
    tracing.instrument_app(app, settings)  # a no-op (nothing imported) unless tracing is configured
    return app
