"""The GraphQL endpoint: Strawberry's ASGI view with our context, auth, trusted documents,
error codes, metrics and structured logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, parse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import SchemaExtension
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app import metrics, tracing
from app.api.context import RequestContext
from app.api.documents import UNKNOWN_DOCUMENT, DocumentRefused, DocumentRegistry
from app.api.documents_cache import SEVERAL_OPERATIONS, DocumentCache, cost_error
from app.api.encoding import encode
from app.api.engine.operations import Engine, OperationPlan
from app.api.errors import http_status, shape
from app.api.graphiql import page as graphiql_page
from app.api.websocket import KeepaliveTransportWSHandler, LegacyWSHandler
from app.api.ws_connections import ConnectionRegistry, LiveConnection, auth_headers, connection_headers
from app.auth import Authenticator, Principal
from app.errors import DomainError, ErrorCode
from app.resources import Resources
from app.services import json_reads

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
#: Apollo's code for an unknown persisted-query hash; clients retry with the query text.
PERSISTED_QUERY_NOT_FOUND = UNKNOWN_DOCUMENT
_OPERATION_KINDS = frozenset({"query", "mutation", "subscription", "unknown"})


class GraphQLView(GraphQL[RequestContext, None]):
    graphql_transport_ws_handler_class = KeepaliveTransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, documents: DocumentRegistry, *, max_query_bytes: int = 64 * 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.documents = documents
        self.max_query_bytes = max_query_bytes
        self.operation_labels = operation_names(documents)
        cache = getattr(self.schema, "document_cache", None)
        self.engine = Engine(self.schema, cache) if cache is not None else None

    async def on_ws_connect(self, context: RequestContext) -> dict[str, object] | None:
        """Authenticate in connection_init: its payload carries the HTTP header names and values
        ({"Authorization": "Bearer <key>", "X-Tenant-ID": "<tenant>"}), flat or under "headers"
        as Apollo and Hasura clients send them; refused → close 4403.
        An empty payload keeps the upgrade request's Authorization, if it authenticated. The
        credentials used are kept for re-checks; over a connection cap → ConnectionRefused (4429)."""
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        headers = connection_headers(params)
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
        the schema; GET, GraphiQL and WebSockets go through Strawberry's view. Every refusal
        is a JSON GraphQL error with a code, never text."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        if scope["method"] == "POST" and "application/json" in request.headers.get("content-type", ""):
            response = await self._post(request)
        else:
            response = await self._strawberry(request)
        await response(scope, receive, send)

    async def _strawberry(self, request: Request) -> Response:
        try:
            if request.method == "GET" and not self.should_render_graphql_ide(self.request_adapter_class(request)):
                # Authenticated before the query string's document is parsed, as on POST.
                context = await self.get_context(request, request)  # type: ignore[arg-type]
                if context.auth_error is not None:
                    return self._unauthenticated(context.auth_error)
                return await self.run(request, context=context)
            return await self.run(request)
        except RequestRefused as exc:
            return refusal(exc.reason, exc.code, exc.status_code)
        except HTTPException as exc:
            return refusal(exc.reason, ErrorCode.BAD_USER_INPUT, exc.status_code)

    async def _post(self, request: Request) -> Response:
        # Who is calling comes first: an unauthenticated body is never read, parsed or cached.
        context = await self.get_context(request, request)  # type: ignore[arg-type]
        if context.auth_error is not None:
            return self._unauthenticated(context.auth_error)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return refusal("the body is not valid JSON", ErrorCode.BAD_USER_INPUT, 400)
        try:
            if isinstance(body, list):
                return await self._post_batch(request, body, context)
            data = self._request_data(body)
        except RequestRefused as exc:
            return refusal(exc.reason, exc.code, exc.status_code)
        if not data.query:
            return refusal("No GraphQL query found in the request", ErrorCode.BAD_USER_INPUT, 400)
        engine = self.engine
        plan = engine.get(data.query, data.operation_name, data.variables) if engine else None
        if engine is not None and plan is not None:
            # The ordinary path checks the cost in PreparedDocuments; this one skips extensions.
            costly = self._costly(data)
            if costly is not None:
                return self._refused_operation(context, costly)
            answer = await plan.run(engine.core_schema, context, data.variables)
            if answer is not None:
                self._record_planned(context, plan, answer)
                return Response(encode(answer), status_code=http_status(answer), media_type="application/json")
        try:
            result = await self._execute(data, context)
        except (InvalidOperationTypeError, CannotGetOperationTypeError) as exc:
            return refusal(_operation_refusal(exc), ErrorCode.BAD_USER_INPUT, 400)
        response = await self.process_result(request, result)
        return Response(encode(response), status_code=http_status(response), media_type="application/json")

    async def _post_batch(self, request: Request, body: list[Any], caller: RequestContext) -> Response:
        """Each item answers for itself (a refused item is an error entry, never a 500); the
        items' costs are added up before any of them runs."""
        limit = self.schema.config.batching_config
        if not body or limit is None or len(body) > limit["max_operations"]:
            raise RequestRefused(400, f"a batch holds 1 to {limit['max_operations'] if limit else 0} operations")
        items: list[GraphQLRequestData | RequestRefused] = []
        for item in body:
            try:
                items.append(self._request_data(item))
            except RequestRefused as exc:
                items.append(exc)
        total = sum(self._cost(item) for item in items if isinstance(item, GraphQLRequestData))
        cache = self.schema.document_cache  # type: ignore[attr-defined]
        max_cost = cache.max_cost if isinstance(cache, DocumentCache) else None
        engine = self.engine
        plans = [
            engine.get(item.query, item.operation_name, item.variables)
            if engine is not None and isinstance(item, GraphQLRequestData) and item.query
            else None
            for item in items
        ]
        over = max_cost is not None and total > max_cost
        if not over and all(p is not None and not p.mutation for p in plans):
            # Queries only, all planned: read-only and independent, so they run together (their
            # order cannot matter); anything with a mutation keeps the items' order.
            # Their pushed-down reads go to Postgres as one statement (json_reads.RoundTrip).
            shared = json_reads.RoundTrip(caller.resources.db)
            gathered = [
                self._batch_item(request, caller, i, p, None, shared) for i, p in zip(items, plans, strict=True)
            ]
            responses = list(await asyncio.gather(*gathered))
        else:
            refused = (total, max_cost) if over and max_cost is not None else None
            responses = [
                await self._batch_item(request, caller, i, p, refused) for i, p in zip(items, plans, strict=True)
            ]
        return Response(encode(responses), media_type="application/json")

    async def _batch_item(
        self,
        request: Request,
        caller: RequestContext,
        item: GraphQLRequestData | RequestRefused,
        plan: OperationPlan | None,
        over_cost: tuple[int, int] | None,
        round_trip: json_reads.RoundTrip | None = None,
    ) -> Any:
        # Each item has a context of its own (loaders, request id, metrics), with the principal
        # the request was authenticated as: one key lookup per request, not one per item.
        context = RequestContext(
            resources=caller.resources,
            authenticator=caller.authenticator,
            request_id=(request.headers.get("x-request-id") or uuid.uuid4().hex)[:64],
            principal=caller.principal,
            auth_error=caller.auth_error,
            started=time.perf_counter(),
            round_trip=round_trip,
        )
        request.state.graphql_context = context
        if isinstance(item, RequestRefused):
            return _error_entry(item.reason, item.code)
        if not item.query:
            return _error_entry("No GraphQL query found in the request", ErrorCode.BAD_USER_INPUT)
        if over_cost is not None:
            return self._operation_error(context, cost_error(*over_cost))
        engine = self.engine
        if engine is not None and plan is not None:
            # Each item through the engine; the batch's cost was checked as a whole.
            answer = await plan.run(engine.core_schema, context, item.variables)
            if answer is not None:
                self._record_planned(context, plan, answer)
                return answer
        try:
            result = await self._execute(item, context)
        except (InvalidOperationTypeError, CannotGetOperationTypeError) as exc:
            return _error_entry(_operation_refusal(exc), ErrorCode.BAD_USER_INPUT)
        request.state.graphql_context = context  # batch items may run together: this item's
        return await self.process_result(request, result)

    async def _execute(self, data: GraphQLRequestData, context: RequestContext) -> ExecutionResult:
        """The ordinary path: Strawberry's executor (queries and mutations only over HTTP)."""
        return await self.schema.execute(
            data.query or "",
            variable_values=data.variables,
            context_value=context,
            operation_name=data.operation_name,
            allowed_operation_types=_POST_OPERATIONS,
            operation_extensions=data.extensions,
        )

    def _valid_document(self, data: GraphQLRequestData) -> tuple[DocumentCache, DocumentNode] | None:
        cache = self.schema.document_cache  # type: ignore[attr-defined]
        if not isinstance(cache, DocumentCache) or cache.max_cost is None or not data.query:
            return None
        try:
            document = cache.parse(data.query)
        except GraphQLError:
            return None  # reported when it runs
        if cache.validate(self.schema._schema, data.query, document):  # type: ignore[attr-defined]
            return None
        return cache, document

    def _cost(self, data: GraphQLRequestData) -> int:
        found = self._valid_document(data)
        if found is None:
            return 0
        cache, document = found
        cost = cache.cost(self.schema._schema, data.query or "", document, data.operation_name, data.variables)  # type: ignore[attr-defined]
        return cost or 0

    def _costly(self, data: GraphQLRequestData) -> GraphQLError | None:
        found = self._valid_document(data)
        if found is None:
            return None
        cache, document = found
        core = self.schema._schema  # type: ignore[attr-defined]
        return cache.refuse_costly(core, data.query or "", document, data.operation_name, data.variables)

    def _operation_error(self, context: RequestContext, error: GraphQLError) -> dict[str, Any]:
        shape(error, context.request_id)
        context.operation_type = context.operation_type or "unknown"
        self._record(context, [str((error.extensions or {}).get("code", "INTERNAL"))])
        return {"data": None, "errors": [error.formatted]}

    def _refused_operation(self, context: RequestContext, error: GraphQLError) -> Response:
        return Response(orjson.dumps(self._operation_error(context, error)), media_type="application/json")

    @staticmethod
    def _unauthenticated(error: DomainError) -> Response:
        metrics.HTTP_REJECTED.labels("unauthenticated").inc()
        # Postgres down during the key lookup: nothing ran, the client may retry (503).
        status = 503 if error.code is ErrorCode.SERVICE_UNAVAILABLE else 200
        return refusal(error.message, error.code, status)

    async def render_graphql_ide(self, request: Request) -> Response:
        """Our packaged GraphiQL (app/api/graphiql.py) instead of Strawberry's CDN page."""
        return graphiql_page()

    def should_render_graphql_ide(self, request: Any) -> bool:
        """GraphiQL for a browser's plain GET; a GET naming a documentId or carrying extensions
        (Apollo's hashed GET, sent with `Accept: */*`) is an operation."""
        params = request.query_params
        return (
            super().should_render_graphql_ide(request)
            and params.get("documentId") is None
            and params.get("extensions") is None
        )

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
            raise RequestRefused(400, "a GraphQL request is a JSON object")
        query, variables, extensions = data.get("query"), data.get("variables"), data.get("extensions")
        if not isinstance(query, str | None):
            raise RequestRefused(400, "`query` must be a string")
        if not isinstance(variables, dict | None):
            raise RequestRefused(400, "`variables` must be an object")
        if not isinstance(extensions, dict | None):
            raise RequestRefused(400, "`extensions` must be an object")
        operation_name = data.get("operationName")
        if not isinstance(operation_name, str | None):
            raise RequestRefused(400, "`operationName` must be a string")
        if query is not None and _too_long(query, self.max_query_bytes):
            # Comments and strings escape the token limit: without this a document's size is
            # bounded only by the body's (4 MiB), and it is all parsed.
            metrics.HTTP_REJECTED.labels("query_too_long").inc()
            raise RequestRefused(400, f"the query is over the {self.max_query_bytes}-byte limit")
        query = self._trusted_query(query, data.get("documentId"), extensions or {})
        return GraphQLRequestData(
            query=query,
            variables=variables,
            operation_name=operation_name,
            extensions=extensions,
            protocol="http",
        )

    def _trusted_query(self, query: str | None, document_id: Any, extensions: dict[str, Any]) -> str | None:
        try:
            return self.documents.resolve(query, document_id, extensions)
        except DocumentRefused as refused:
            if refused.reason == UNKNOWN_DOCUMENT:
                # HTTP 200, as Apollo Server answers: Apollo Client's persisted-query link (before
                # 3.8) turns persisted queries off for good on a 400 instead of retrying with the text.
                raise RequestRefused(200, refused.message, code=PERSISTED_QUERY_NOT_FOUND) from None
            raise RequestRefused(400, refused.message) from None

    def encode_json(self, data: object) -> str:
        # Text, not bytes: Strawberry sends bytes as binary WebSocket frames, and the
        # graphql-ws protocols are text. HTTP responses use orjson's bytes directly (_post).
        return encode(data).decode()

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        """GET and Strawberry's batches: the same status rule as _post (503 when nothing ran)."""
        response = super().create_response(response_data, sub_response)
        if isinstance(response_data, dict) and response.status_code == 200:
            response.status_code = http_status(response_data)
        return response

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

    def _record_planned(self, context: RequestContext, plan: OperationPlan, answer: dict[str, Any]) -> None:
        context.operation_name = plan.operation_name
        context.operation_type = "mutation" if plan.mutation else "query"
        self._record(context, [str(e["extensions"]["code"]) for e in answer.get("errors", ())])

    def _record(self, context: RequestContext, codes: list[str]) -> None:
        elapsed = time.perf_counter() - context.started
        name = context.operation_name or "anonymous"
        # Labels from a bounded set: a client choosing operation names must not grow /metrics.
        label = name if name in self.operation_labels else metrics.OTHER_OPERATION
        kind = context.operation_type or "unknown"
        if kind not in _OPERATION_KINDS:
            kind = "unknown"
        metrics.OPERATIONS.labels(label, kind, "error" if codes else "ok").inc()
        metrics.LATENCY.labels(label, kind).observe(elapsed)
        if tracing.active() and not context.long_lived:  # a WebSocket's span is the connection's
            tracing.annotate_request(
                kind, name[:200], codes, context.principal.tenant_id if context.principal else None
            )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "graphql %s %s",
                kind,
                label,
                extra={
                    "request_id": context.request_id,
                    "tenant": context.principal.tenant_id if context.principal else None,
                    "operation": name[:200],
                    "duration_ms": round(elapsed * 1000, 2),
                    "codes": codes or None,
                },
            )


class RequestRefused(HTTPException):
    """A request refused before GraphQL ran: answered as a GraphQL error with a code."""

    def __init__(self, status_code: int, reason: str, *, code: str = ErrorCode.BAD_USER_INPUT) -> None:
        super().__init__(status_code, reason)
        self.code = code


def _error_entry(message: str, code: str) -> dict[str, Any]:
    metrics.ERRORS.labels(str(code)).inc()
    return {"data": None, "errors": [{"message": message, "extensions": {"code": str(code)}}]}


def refusal(message: str, code: str, status: int) -> Response:
    body = _error_entry(message, code)
    del body["data"]  # nothing ran: a request error (GraphQL over HTTP) has no data entry
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _operation_refusal(exc: Exception) -> str:
    if isinstance(exc, InvalidOperationTypeError):
        return "subscriptions are served over WebSocket"
    if isinstance(exc, CannotGetOperationTypeError):
        if exc.operation_name is None:
            return SEVERAL_OPERATIONS
        return f"the document has no operation named {exc.operation_name!r}"[:300]
    return str(exc)


def _too_long(text: str, limit: int) -> bool:
    # A character is at most 4 UTF-8 bytes: most texts are decided without encoding them.
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)


def operation_names(documents: DocumentRegistry) -> frozenset[str]:
    """The trusted documents' operation names: the only operation labels metrics use."""
    names = {"anonymous"}
    for document in documents.documents:
        names.add(document.name)
        with contextlib.suppress(GraphQLError):
            for definition in parse(document.text).definitions:
                if isinstance(definition, OperationDefinitionNode) and definition.name is not None:
                    names.add(definition.name.value)
    return frozenset(names)
