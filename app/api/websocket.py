"""The WebSocket protocol handlers: Strawberry's two (graphql-transport-ws and legacy
graphql-ws) with what it leaves to us.

- Server keepalive pings on graphql-transport-ws (Strawberry sends none), so dead connections
  are noticed by both ends.
- Each connection is registered with the process's ConnectionRegistry once connection_init
  is accepted (caps; closed 4403 when its key is revoked or its credentials fail a re-check)
  and released on every way out (`handle`'s finally).
- Each operation counts against the tenant's subscription cap until its task ends.
- Trusted documents: `documentId` / Apollo's persisted-query hash name a document in graphql/;
  with TRUSTED_DOCUMENTS_ONLY nothing else runs, as over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from graphql import GraphQLError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage, SubscribeMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.types import StartMessage

from app import metrics
from app.api.documents import DocumentRefused, DocumentRegistry
from app.api.ws_connections import ConnectionRefused, LiveConnection
from app.errors import DomainError, ErrorCode


def _refusal(refused: DocumentRefused) -> GraphQLError:
    return GraphQLError(refused.message, extensions={"code": ErrorCode.BAD_USER_INPUT.value, "reason": refused.reason})


def trusted_query(documents: DocumentRegistry | None, payload: dict[str, Any]) -> str | None:
    """The query text to run for a subscribe/start payload (DocumentRegistry.resolve)."""
    query = payload.get("query")
    if documents is None:
        return query if isinstance(query, str) else None
    return documents.resolve(query, payload.get("documentId"), payload.get("extensions"))


def _live(context: Any) -> LiveConnection | None:
    live = getattr(context, "live", None)
    return live if isinstance(live, LiveConnection) else None


def _release(context: Any) -> None:
    live = _live(context)
    if live is not None:
        live.registry.release(live)


class KeepaliveTransportWSHandler(BaseGraphQLTransportWSHandler[Any, Any]):
    keepalive_s: float = 15.0

    async def handle(self) -> Any:
        live = _live(self.context)
        if live is not None:
            live.stop_operations = self._stop_operations
        pinger = asyncio.create_task(self._ping_forever())
        try:
            return await super().handle()
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pinger
            _release(self.context)

    async def _stop_operations(self) -> None:
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            if not self.connection_acknowledged:
                continue
            # A failed send means the socket is gone; the read loop ends the connection.
            with contextlib.suppress(Exception):
                await self.send_message({"type": "ping", "payload": {"server": True}})

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except ConnectionRefused as refused:
            metrics.WS_CLOSED.labels("cap").inc()
            with contextlib.suppress(Exception):
                await self.websocket.close(code=refused.code, reason=refused.reason)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        live = _live(self.context)
        if not self.connection_acknowledged or message["id"] in self.operations or live is None:
            await super().handle_subscribe(message)  # Strawberry's protocol errors (4401, 4409)
            return
        operation_id = message["id"]

        async def start(payload: dict[str, Any]) -> asyncio.Task[Any] | None:
            await BaseGraphQLTransportWSHandler.handle_subscribe(self, {**message, "payload": payload})  # type: ignore[typeddict-item]
            operation = self.operations.get(operation_id)
            return operation.task if operation is not None else None

        async def refuse(error: GraphQLError) -> None:
            await self._refuse(operation_id, error)

        await _start_counted(self.view, live, message.get("payload"), start, refuse)

    async def _refuse(self, operation_id: str, error: GraphQLError) -> None:
        await self.send_message({"id": operation_id, "type": "error", "payload": [error.formatted]})


class LegacyWSHandler(BaseGraphQLWSHandler[Any, Any]):
    """Legacy graphql-ws (subscriptions-transport-ws), with the same registry and documents."""

    async def handle(self) -> None:
        live = _live(self.context)
        if live is not None:
            live.stop_operations = self.cleanup
        try:
            await super().handle()
        finally:
            _release(self.context)

    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except ConnectionRefused as refused:
            metrics.WS_CLOSED.labels("cap").inc()
            with contextlib.suppress(Exception):
                await self.send_message({"type": "connection_error", "payload": {"message": refused.reason}})
                await self.websocket.close(code=refused.code, reason=refused.reason)

    async def handle_start(self, message: StartMessage) -> None:
        live = _live(self.context)
        if not self.connection_acknowledged or live is None:
            await super().handle_start(message)
            return
        operation_id = message["id"]
        if operation_id in self.tasks:
            await self.cleanup_operation(operation_id)  # a reused id replaces its operation

        async def start(payload: dict[str, Any]) -> asyncio.Task[Any] | None:
            await BaseGraphQLWSHandler.handle_start(self, {**message, "payload": payload})  # type: ignore[typeddict-item]
            return self.tasks.get(operation_id)

        async def refuse(error: GraphQLError) -> None:
            await self.send_message({"type": "error", "id": operation_id, "payload": error.formatted})

        await _start_counted(self.view, live, message.get("payload"), start, refuse)


async def _start_counted(
    view: Any,
    live: LiveConnection,
    raw_payload: Any,
    start: Callable[[dict[str, Any]], Awaitable[asyncio.Task[Any] | None]],
    refuse: Callable[[GraphQLError], Awaitable[None]],
) -> None:
    """Both protocols' subscribe: resolve the trusted document, count the operation against the
    tenant's cap, start it, and uncount it when its task ends (or at once if it never started)."""
    registry = live.registry
    payload: dict[str, Any] = dict(raw_payload or {})
    try:
        query = trusted_query(getattr(view, "documents", None), payload)
        registry.begin_operation(live)
    except DocumentRefused as refused:
        await refuse(_refusal(refused))
        return
    except DomainError as exc:
        await refuse(_coded(exc))
        return
    if query is not None:
        payload["query"] = query
    task: asyncio.Task[Any] | None = None
    try:
        task = await start(payload)
    finally:
        if task is None:
            registry.end_operation(live)
        else:
            task.add_done_callback(lambda _: registry.end_operation(live))


def _coded(exc: DomainError) -> GraphQLError:
    return GraphQLError(exc.message, extensions={"code": exc.code.value, **exc.details})
