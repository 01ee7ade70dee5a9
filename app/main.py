"""The ASGI application: factory and lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app import tokens
from app.resources import Resources
from app.settings import Settings, get_settings

log = logging.getLogger("conversation_service")


async def healthz(request: Request) -> JSONResponse:
    """Alive while the process runs; says nothing about its dependencies (that is /readyz)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    resources: Resources = request.app.state.resources
    report = await resources.readiness()
    return JSONResponse(report, status_code=503 if report["status"] == "down" else 200)


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

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tokens.warm_up()
        resources = await Resources.open(settings, db_url, cache_url)
        app.state.resources = resources
        try:
            yield
        finally:
            await resources.close()

    return Starlette(
        debug=False,
        routes=[Route("/healthz", healthz), Route("/readyz", readyz)],
        lifespan=lifespan,
    )
