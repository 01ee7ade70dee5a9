"""WebSocket protocol details Strawberry leaves to us: server keepalive pings on
graphql-transport-ws (Strawberry sends none), so dead connections are noticed by both ends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler


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
            if self.connection_acknowledged:
                # A failed send means the socket is gone; the read loop ends the connection.
                with contextlib.suppress(Exception):
                    await self.send_message({"type": "ping", "payload": {"server": True}})
