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
from app.api.documents import DocumentRegistry
from app.api.ws_connections import ConnectionRefused, LiveConnection
from app.errors import DomainError, ErrorCode


class DocumentRefused(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def error(self) -> GraphQLError:
        return GraphQLError(self.message, extensions={"code": ErrorCode.BAD_USER_INPUT.value, "reason": self.reason})


def trusted_query(documents: DocumentRegistry | None, payload: dict[str, Any]) -> str | None:
    """The query text to run for a subscribe/start payload (a documentId or persisted-query
    hash is replaced by its document), or DocumentRefused."""
    query = payload.get("query")
    extensions = payload.get("extensions")
    document_id = payload.get("documentId")
    if document_id is None and isinstance(extensions, dict):
        persisted = extensions.get("persistedQuery")
        if isinstance(persisted, dict):
            document_id = persisted.get("sha256Hash")
    if documents is None:
        return query if isinstance(query, str) else None
    if document_id is not None:
        document = documents.by_id(str(document_id))
        if document is None:
            metrics.HTTP_REJECTED.labels("unknown_document").inc()
            raise DocumentRefused("no trusted document has that id", "PERSISTED_QUERY_NOT_FOUND")
        if query is not None and query != document.text:
            raise DocumentRefused("the query does not match its document id", "DOCUMENT_MISMATCH")
        return document.text
    if documents.trusted_only and (not isinstance(query, str) or not documents.is_trusted(query)):
        metrics.HTTP_REJECTED.labels("untrusted_document").inc()
        raise DocumentRefused("only trusted documents are accepted here: send a documentId", "UNTRUSTED_DOCUMENT")
    return query if isinstance(query, str) else None


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
        registry = live.registry
        payload: dict[str, Any] = dict(message.get("payload") or {})
        try:
            query = trusted_query(getattr(self.view, "documents", None), payload)
            registry.begin_operation(live)
        except DocumentRefused as refused:
            await self._refuse(message["id"], refused.error())
            return
        except DomainError as exc:
            await self._refuse(message["id"], _coded(exc))
            return
        started = False
        try:
            if query is not None:
                payload["query"] = query
            await super().handle_subscribe({**message, "payload": payload})  # type: ignore[typeddict-item]
            operation = self.operations.get(message["id"])
            if operation is not None and operation.task is not None:
                operation.task.add_done_callback(lambda _: registry.end_operation(live))
                started = True
        finally:
            if not started:
                registry.end_operation(live)

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
        registry = live.registry
        payload: dict[str, Any] = dict(message.get("payload") or {})
        try:
            query = trusted_query(getattr(self.view, "documents", None), payload)
            registry.begin_operation(live)
        except DocumentRefused as refused:
            await self.send_message({"type": "error", "id": operation_id, "payload": refused.error().formatted})
            return
        except DomainError as exc:
            await self.send_message({"type": "error", "id": operation_id, "payload": _coded(exc).formatted})
            return
        started = False
        try:
            if query is not None:
                payload["query"] = query
            await super().handle_start({**message, "payload": payload})  # type: ignore[typeddict-item]
            task = self.tasks.get(operation_id)
            if task is not None:
                task.add_done_callback(lambda _: registry.end_operation(live))
                started = True
        finally:
            if not started:
                registry.end_operation(live)


def _coded(exc: DomainError) -> GraphQLError:
    return GraphQLError(exc.message, extensions={"code": exc.code.value, **exc.details})
