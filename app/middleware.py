"""ASGI middleware: oversized or slow request bodies refused before anything runs; CORS per tenant."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence

import orjson
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics

log = logging.getLogger("conversation_service.cors")


class StartTracker:
    """Wraps `send`, noting whether the response has started: after that no error answer fits."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """413 for a Content-Length over the limit; a chunked body is counted as it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = True
                if too_large:
                    await self._refuse(send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        tracked = StartTracker(send)

        try:
            await self.app(scope, limited_receive, tracked)
        except BodyTooLarge:
            if not tracked.started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        metrics.HTTP_REJECTED.labels("body_too_large").inc()
        await _send_error(send, 413, f"request body over the {self.max_bytes}-byte limit", "PAYLOAD_TOO_LARGE")


class BodyTimedOut(Exception):
    pass


class BodyReadTimeout:
    """408 for a request whose body has not fully arrived `timeout_s` after its headers (a slow
    loris holds a connection and a task open for as long as it trickles). Only the body is
    timed: once it is in, waiting for a disconnect is not limited."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimedOut from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        tracked = StartTracker(send)

        try:
            await self.app(scope, timed_receive, tracked)
        except BodyTimedOut:
            if not tracked.started:
                metrics.HTTP_REJECTED.labels("body_timeout").inc()
                await _send_error(
                    send, 408, f"the request body did not arrive within {self.timeout_s:g} s", "BAD_USER_INPUT"
                )


async def _send_error(send: Send, status: int, message: str, code: str) -> None:
    """A refusal before GraphQL ran, shaped like every other: a JSON error with a code. The
    connection is closed: what is left of the body is never read."""
    body = orjson.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TenantCORS(CORSMiddleware):
    """CORS for the server-wide origins (CORS_ALLOWED_ORIGINS) and every tenant's `corsOrigins`.

    A preflight carries no credentials, so it is granted for the union of the server-wide list
    and all tenants' origins (read from Postgres at most every TENANT_ORIGINS_TTL_S). The actual
    request then carries its key: an origin that only tenants allow is served only to callers of
    one of those tenants; anyone else gets 403 FORBIDDEN before anything runs."""

    TENANT_ORIGINS_TTL_S = 5.0

    def __init__(
        self,
        app: ASGIApp,
        allow_origins: Sequence[str] = (),
        allow_methods: Sequence[str] = ("GET",),
        allow_headers: Sequence[str] = (),
        expose_headers: Sequence[str] = (),
        max_age: int = 600,
    ) -> None:
        super().__init__(
            app,
            allow_origins=allow_origins,
            allow_methods=allow_methods,
            allow_headers=allow_headers,
            expose_headers=expose_headers,
            max_age=max_age,
        )
        self._server = frozenset(self.allow_origins)
        self._tenants: dict[str, frozenset[str]] = {}
        self._loaded_at = -math.inf
        self._lock = asyncio.Lock()

    def is_allowed_origin(self, origin: str) -> bool:
        return super().is_allowed_origin(origin) or origin in self._tenants

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None or origin in self._server or super().is_allowed_origin(origin):
            await super().__call__(scope, receive, send)
            return
        await self._refresh(scope)
        tenants = self._tenants.get(origin)
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if tenants is not None and not preflight and not await self._caller_in(scope, headers, tenants):
            metrics.HTTP_REJECTED.labels("cors_origin").inc()
            await _send_error(send, 403, f"origin {origin} is not allowed for this caller's tenant", "FORBIDDEN")
            return
        await super().__call__(scope, receive, send)

    async def _refresh(self, scope: Scope) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._loaded_at < self.TENANT_ORIGINS_TTL_S:
            return
        async with self._lock:
            if loop.time() - self._loaded_at < self.TENANT_ORIGINS_TTL_S:
                return
            from app.services import tenant_settings

            resources = getattr(scope["app"].state, "resources", None)
            if resources is None:
                return
            try:
                async with resources.db.read() as conn:
                    self._tenants = await tenant_settings.cors_origins_by_tenant(conn)
            except Exception as exc:  # keep the last known origins; try again next time
                log.warning("could not read tenants' CORS origins: %r", exc)
            self._loaded_at = loop.time()

    @staticmethod
    async def _caller_in(scope: Scope, headers: Headers, tenants: frozenset[str]) -> bool:
        """True when the request's credentials belong to one of `tenants`. A request whose
        credentials fail passes on: all it can read is GraphQL's UNAUTHENTICATED."""
        from app.errors import DomainError

        try:
            principal = await scope["app"].state.authenticator.authenticate(headers)
        except DomainError:
            return True
        return bool(principal.tenant_id in tenants)
