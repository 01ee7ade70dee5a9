"""The outermost guard: whatever escapes the app still answers JSON with a code, never
Starlette's bare text/plain "Internal Server Error"."""

from __future__ import annotations

import logging
import uuid

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app import metrics
from app.errors import ErrorCode
from app.middleware import StartTracker

log = logging.getLogger("conversation_service.api")


def error_body(message: str, code: ErrorCode, **extensions: object) -> bytes:
    return orjson.dumps({"errors": [{"message": message, "extensions": {"code": code.value, **extensions}}]})


class JsonErrorGuard:
    """Catches an exception escaping the app before the response started and answers
    {"errors":[{"message":"Internal error","extensions":{"code":"INTERNAL","requestId":…}}]}
    with status 500. The exception is logged with that request id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = StartTracker(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            request_id = _request_id(scope)
            log.exception("unhandled error answering %s", scope.get("path"), extra={"request_id": request_id})
            if tracked.started:
                raise  # part of a response is out: nothing clean can follow
            metrics.ERRORS.labels(ErrorCode.INTERNAL.value).inc()
            body = error_body("Internal error", ErrorCode.INTERNAL, requestId=request_id)
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


def _request_id(scope: Scope) -> str:
    """The id the request's GraphQL context logged with, if it got that far."""
    state = scope.get("state")
    context = state.get("graphql_context") if isinstance(state, dict) else None
    known = getattr(context, "request_id", None)
    if isinstance(known, str) and known:
        return known
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id" and value:
            return bytes(value).decode("latin-1")[:64]
    return uuid.uuid4().hex


async def http_exception_as_json(request: Request, exc: Exception) -> Response:
    """Routing's own refusals (unknown path, method not allowed) as JSON with a code."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = ErrorCode.NOT_FOUND if status == 404 else ErrorCode.BAD_USER_INPUT
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else None
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal error"
    return Response(error_body(detail, code), status_code=status, headers=headers, media_type="application/json")
