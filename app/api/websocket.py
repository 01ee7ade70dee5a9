"""WebSocket protocol details Strawberry leaves to us: server keepalive pings on
graphql-transport-ws (Strawberry sends none), so dead connections are noticed by both ends; and
with each ping the connection's credentials are checked again, so a revoked key does not keep a
live stream open (closed 4403, like a refused connection_init)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler

from app.errors import DomainError


class KeepaliveTransportWSHandler(BaseGraphQLTransportWSHandler[Any, Any]):
    keepalive_s: float = 15.0

    async def handle(self) -> Any:
        pinger = asyncio.create_task(self._ping_forever())
        try:
            return await super().handle()
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pinger

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            if not self.connection_acknowledged:
                continue
            if not await self._still_authorized():
                with contextlib.suppress(Exception):
                    await self.websocket.close(code=4403, reason="Forbidden")
                return
            # A failed send means the socket is gone; the read loop ends the connection.
            with contextlib.suppress(Exception):
                await self.send_message({"type": "ping", "payload": {"server": True}})

    async def _still_authorized(self) -> bool:
        context = self.context
        authenticator = getattr(context, "authenticator", None)
        params = getattr(context, "connection_params", None)
        if authenticator is None or not isinstance(params, dict):
            return True
        headers = {str(k).lower(): str(v) for k, v in params.items() if isinstance(v, str)}
        try:
            await authenticator.authenticate(headers)
        except DomainError:
            return False
        except Exception:  # the key store unreachable: not a reason to drop live streams
            return True
        return True
