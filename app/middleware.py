"""ASGI middleware that refuses oversized or slow request bodies before anything runs."""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics


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
