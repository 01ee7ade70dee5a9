"""The GraphQL endpoint: Strawberry's ASGI view with our context, auth, trusted documents,
error codes, metrics and structured logs."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import SchemaExtension
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app import metrics
from app.api.compiled import CompiledOperations
from app.api.context import RequestContext
from app.api.documents import DocumentRegistry
from app.api.websocket import KeepaliveTransportWSHandler, LegacyWSHandler
from app.api.ws_connections import ConnectionRegistry, LiveConnection, auth_headers
from app.auth import Authenticator, Principal
from app.errors import DomainError
from app.resources import Resources

log = logging.getLogger("conversation_service.api")


class OperationRecorder(SchemaExtension):
    """Copies the operation's name and type into the request context for metrics and logs."""

    def on_operation(self) -> Iterator[None]:
        yield
        context = self.execution_context.context
        if isinstance(context, RequestContext):
            context.operation_name = self.execution_context.operation_name
            try:
                context.operation_type = self.execution_context.operation_type.value
            except Exception:  # no operation could be selected (a syntax error, say)
                context.operation_type = "unknown"


_POST_OPERATIONS = frozenset({OperationType.QUERY, OperationType.MUTATION})


class GraphQLView(GraphQL[RequestContext, None]):
    graphql_transport_ws_handler_class = KeepaliveTransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, documents: DocumentRegistry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.documents = documents
        cache = getattr(self.schema, "document_cache", None)
        self.compiled = CompiledOperations(self.schema, cache) if cache is not None else None

    async def on_ws_connect(self, context: RequestContext) -> dict[str, object] | None:
        """Authenticate in connection_init: its payload carries the HTTP header names and values
        ({"Authorization": "Bearer <key>", "X-Tenant-ID": "<tenant>"}); refused → close 4403.
        An empty payload keeps the upgrade request's Authorization, if it authenticated. The
        credentials used are kept for re-checks; over a connection cap → ConnectionRefused (4429)."""
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        headers = {str(k).lower(): str(v) for k, v in params.items() if isinstance(v, str)}
        live = context.live
        credentials = auth_headers(headers)
        if headers or context.principal is None:
            try:
                context.principal = await context.authenticator.authenticate(headers)
            except DomainError as exc:
                raise ConnectionRejectionError({"code": exc.code.value, "message": exc.message}) from exc
        elif live is not None:
            credentials = live.upgrade_headers
        if live is not None:
            live.registry.admit(live, context.principal, credentials)
        return None

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> RequestContext:
        resources: Resources = request.app.state.resources
        authenticator: Authenticator = request.app.state.authenticator
        principal: Principal | None = None
        auth_error: DomainError | None = None
        try:
            principal = await authenticator.authenticate(request.headers)
        except DomainError as exc:
            auth_error = exc
        context = RequestContext(
            resources=resources,
            authenticator=authenticator,
            request_id=(request.headers.get("x-request-id") or uuid.uuid4().hex)[:64],
            principal=principal,
            auth_error=auth_error,
            started=time.perf_counter(),
            long_lived=isinstance(request, WebSocket),
        )
        if isinstance(request, WebSocket):
            registry: ConnectionRegistry = request.app.state.ws_connections
            context.live = LiveConnection(registry, request, auth_headers(request.headers))
        request.state.graphql_context = context
        return context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A single JSON operation over POST (nearly all traffic) takes a short path straight to
        the schema; GET, batches, GraphiQL and WebSockets go through Strawberry's view."""
        if scope["type"] == "http" and scope["method"] == "POST":
            request = Request(scope, receive)
            if "application/json" in request.headers.get("content-type", ""):
                response = await self._post(request)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _post(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return PlainTextResponse("the body is not valid JSON", status_code=400)
        try:
            if isinstance(body, list):
                return await self._post_batch(request, body)
            data = self._request_data(body)
        except HTTPException as exc:
            return PlainTextResponse(exc.reason, status_code=exc.status_code)
        context = await self.get_context(request, request)  # type: ignore[arg-type]
        if not data.query:
            return PlainTextResponse("No GraphQL query found in the request", status_code=400)
        operations = self.compiled
        compiled = operations.get(data.query, data.operation_name, data.variables) if operations else None
        if operations is not None and compiled is not None:
            answer = await compiled.run(operations.core_schema, context, data.variables)
            if answer is not None:
                context.operation_name = compiled.operation_name
                context.operation_type = "mutation" if compiled.mutation else "query"
                codes = [str(e["extensions"]["code"]) for e in answer.get("errors", ())]
                self._record(context, codes)
                return Response(orjson.dumps(answer), media_type="application/json")
        try:
            result = await self.schema.execute(
                data.query,
                variable_values=data.variables,
                context_value=context,
                operation_name=data.operation_name,
                allowed_operation_types=_POST_OPERATIONS,
                operation_extensions=data.extensions,
            )
        except InvalidOperationTypeError:
            return PlainTextResponse("subscriptions are served over WebSocket", status_code=400)
        except CannotGetOperationTypeError as exc:
            return PlainTextResponse(exc.as_http_error_reason(), status_code=400)
        return Response(orjson.dumps(await self.process_result(request, result)), media_type="application/json")

    async def _post_batch(self, request: Request, body: list[Any]) -> Response:
        limit = self.schema.config.batching_config
        if not body or limit is None or len(body) > limit["max_operations"]:
            raise HTTPException(400, f"a batch holds 1 to {limit['max_operations'] if limit else 0} operations")
        responses = []
        for item in body:
            data = self._request_data(item)
            context = await self.get_context(request, request)  # type: ignore[arg-type]
            result = await self.schema.execute(
                data.query or "",
                variable_values=data.variables,
                context_value=context,
                operation_name=data.operation_name,
                allowed_operation_types=_POST_OPERATIONS,
                operation_extensions=data.extensions,
            )
            responses.append(await self.process_result(request, result))
        return Response(orjson.dumps(responses), media_type="application/json")

    def should_render_graphql_ide(self, request: Any) -> bool:
        """GraphiQL for a browser's plain GET; a GET naming a documentId is an operation."""
        return super().should_render_graphql_ide(request) and request.query_params.get("documentId") is None

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "GET":
            params = dict(request.query_params)
            for key in ("variables", "extensions"):
                raw = params.get(key)
                if isinstance(raw, str):
                    try:
                        params[key] = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        raise HTTPException(400, f"`{key}` is not valid JSON") from None
            return self._request_data(params)
        if "application/json" not in (request.content_type or ""):
            raise HTTPException(415, "send application/json")
        try:
            body = orjson.loads(await request.get_body())
        except orjson.JSONDecodeError:
            raise HTTPException(400, "the body is not valid JSON") from None
        if isinstance(body, list):
            limit = self.schema.config.batching_config
            if not body or limit is None or len(body) > limit["max_operations"]:
                raise HTTPException(400, f"a batch holds 1 to {limit['max_operations'] if limit else 0} operations")
            return [self._request_data(item) for item in body]
        return self._request_data(body)

    def _request_data(self, data: Any) -> GraphQLRequestData:
        if not isinstance(data, dict):
            raise HTTPException(400, "a GraphQL request is a JSON object")
        query, variables, extensions = data.get("query"), data.get("variables"), data.get("extensions")
        if not isinstance(query, str | None):
            raise HTTPException(400, "`query` must be a string")
        if not isinstance(variables, dict | None):
            raise HTTPException(400, "`variables` must be an object")
        if not isinstance(extensions, dict | None):
            raise HTTPException(400, "`extensions` must be an object")
        query = self._trusted_query(query, data.get("documentId"), extensions or {})
        return GraphQLRequestData(
            query=query,
            variables=variables,
            operation_name=data.get("operationName"),
            extensions=extensions,
            protocol="http",
        )

    def _trusted_query(self, query: str | None, document_id: Any, extensions: dict[str, Any]) -> str | None:
        """documentId, or Apollo's persistedQuery hash, names a trusted document in graphql/."""
        persisted = extensions.get("persistedQuery")
        if document_id is None and isinstance(persisted, dict):
            document_id = persisted.get("sha256Hash")
        if document_id is not None:
            document = self.documents.by_id(str(document_id))
            if document is None:
                metrics.HTTP_REJECTED.labels("unknown_document").inc()
                raise HTTPException(400, "PERSISTED_QUERY_NOT_FOUND: no trusted document has that id")
            if query is not None and query != document.text:
                raise HTTPException(400, "the query does not match its document id")
            return document.text
        if self.documents.trusted_only and (query is None or not self.documents.is_trusted(query)):
            metrics.HTTP_REJECTED.labels("untrusted_document").inc()
            raise HTTPException(400, "only trusted documents are accepted here: send a documentId")
        return query

    def encode_json(self, data: object) -> str:
        # Text, not bytes: Strawberry sends bytes as binary WebSocket frames, and the
        # graphql-ws protocols are text. HTTP responses use orjson's bytes directly (_post).
        return orjson.dumps(data).decode()

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        context: RequestContext = request.state.graphql_context
        response: GraphQLHTTPResponse = {"data": result.data}
        codes: list[str] = []
        if result.errors:
            # Shaped (codes, masking) by Schema.process_errors already.
            formatted = [e.formatted for e in result.errors]
            response["errors"] = formatted  # type: ignore[typeddict-item]
            codes = [str((f.get("extensions") or {}).get("code", "INTERNAL")) for f in formatted]
        if result.extensions:
            response["extensions"] = result.extensions
        self._record(context, codes)
        return response

    @staticmethod
    def _record(context: RequestContext, codes: list[str]) -> None:
        elapsed = time.perf_counter() - context.started
        name = context.operation_name or "anonymous"
        kind = context.operation_type or "unknown"
        metrics.OPERATIONS.labels(name, kind, "error" if codes else "ok").inc()
        metrics.LATENCY.labels(name, kind).observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "graphql %s %s",
                kind,
                name,
                extra={
                    "request_id": context.request_id,
                    "tenant": context.principal.tenant_id if context.principal else None,
                    "operation": name,
                    "duration_ms": round(elapsed * 1000, 2),
                    "codes": codes or None,
                },
            )
