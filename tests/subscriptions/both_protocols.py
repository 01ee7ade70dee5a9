"""A WebSocket client speaking either graphql-transport-ws or legacy graphql-ws, for tests that
must hold on both."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import websockets

TRANSPORT = "graphql-transport-ws"
LEGACY = "graphql-ws"
PROTOCOLS = (TRANSPORT, LEGACY)


class Client:
    def __init__(self, connection: Any, protocol: str) -> None:
        self.connection = connection
        self.protocol = protocol

    @classmethod
    async def open(cls, url: str, protocol: str, headers: dict[str, str] | None = None) -> Client:
        connection = await websockets.connect(
            url,
            subprotocols=[protocol],  # type: ignore[list-item]
            additional_headers=headers,
        )
        return cls(connection, protocol)

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def recv(self, wait: float = 5.0) -> dict[str, Any]:
        """The next protocol message, answering pings and skipping keepalives."""
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(self.connection.recv(), wait))
            if message.get("type") == "ping":
                await self.send({"type": "pong"})
                continue
            if message.get("type") == "ka":
                continue
            return message

    async def init(self, payload: dict[str, Any]) -> dict[str, Any]:
        await self.send({"type": "connection_init", "payload": payload})
        return await self.recv()

    async def init_key(self, key: str) -> dict[str, Any]:
        return await self.init({"Authorization": f"Bearer {key}"})

    async def subscribe(self, id: str, payload: dict[str, Any]) -> None:
        kind = "subscribe" if self.protocol == TRANSPORT else "start"
        await self.send({"id": id, "type": kind, "payload": payload})

    async def complete(self, id: str) -> None:
        await self.send({"id": id, "type": "complete" if self.protocol == TRANSPORT else "stop"})

    async def data(self, wait: float = 5.0) -> dict[str, Any]:
        """The next result's payload (`next` / `data`); anything else fails the test."""
        message = await self.recv(wait)
        assert message["type"] in ("next", "data"), message
        payload: dict[str, Any] = message["payload"]
        return payload

    async def error(self, wait: float = 5.0) -> dict[str, Any]:
        """The next operation error as one GraphQL error object (both protocols' shapes)."""
        message = await self.recv(wait)
        assert message["type"] == "error", message
        payload = message["payload"]
        first: dict[str, Any] = payload[0] if isinstance(payload, list) else payload
        return first

    async def closed_within(self, seconds: float) -> tuple[int | None, float]:
        """Read until the server closes the socket: (close code, seconds it took); fails if the
        socket is still open after `seconds` (plus a generous margin to see what came)."""
        started = time.monotonic()
        deadline = started + seconds + 3.0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"still open {seconds + 3.0:.1f} s later")
                try:
                    await self.recv(wait=remaining)
                except TimeoutError:
                    continue
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            return code, time.monotonic() - started

    async def close(self) -> None:
        await self.connection.close()
