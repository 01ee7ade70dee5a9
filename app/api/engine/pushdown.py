"""SQL pushdown: subtrees the engine fully understands are answered by one statement that builds
their JSON in Postgres (json_build_object / json_agg, nested connections as correlated
subqueries), and Python splices the bytes into the response (orjson.Fragment).

Today: `Query.conversations(filter, first, after, orderBy)`, `Query.history(…)` and
`Query.conversation(id | sessionId)` (null when not found) whose selection holds column scalars
of Conversation / Message / Source, `messages(first/last/after/before/afterSeq)` connections,
and on every connection `edges { cursor node }`, `pageInfo { hasNextPage hasPreviousPage
startCursor endCursor }`, `totalCount` and `totalCountCapped`, computed in SQL as the resolvers
compute them; `__typename` anywhere, aliases and fragments as the document says. Anything else
in the subtree (`since`, fields with resolvers) makes the compiler fall back to the
level-by-level plan (plans.ResolverField). At run time the same checks as the resolvers run
first (the caller's tenant and scope, the filter, page sizes, cursors); any error raises, and
the engine sends the query to the ordinary path, which reports it exactly as it always does.
A batch's items that run together send their statements as one (json_reads.RoundTrip).

The formatting rules that keep the output equal to Strawberry's path live with the SQL
(db/repositories/json_reads.py); tests/api/test_engine_pushdown.py and the differential corpus
hold them to it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, cast

import orjson
from graphql import (
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLField,
    GraphQLFloat,
    GraphQLID,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLString,
)

from app import models
from app.api.engine import adapter
from app.api.engine.plans import Compiler, ResolverField, _NoPlan
from app.errors import DomainError
from app.services import conversations, json_reads
from app.services.json_reads import (
    Column,
    Const,
    Edges,
    JsonObject,
    MessagePage,
    Meta,
    Node,
    PageValues,
    SourceList,
)
from app.services.messages import HistoryArgs

_CONVERSATION_COLUMNS = json_reads.CONVERSATION_FIELDS
#: Whether a conversation exists: its id, or null.
_EXISTS = JsonObject((("id", Column("id")),))
_MESSAGE_COLUMNS = json_reads.MESSAGE_FIELDS


def _named(type_: Any) -> Any:
    while isinstance(type_, GraphQLNonNull | GraphQLList):
        type_ = type_.of_type
    return type_


def _column(field: GraphQLField, attribute: str) -> Column:
    inner = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    if isinstance(inner, GraphQLList):
        item = inner.of_type.of_type if isinstance(inner.of_type, GraphQLNonNull) else inner.of_type
        if item is not GraphQLString:
            raise _NoPlan("pushdown")
        return Column(attribute)
    if isinstance(inner, GraphQLEnumType):
        pairs = []
        for name, value in inner.values.items():
            stored = value.value.value if isinstance(value.value, Enum) else value.value
            pairs.append((str(stored), name))
        return Column(attribute, "enum", tuple(pairs))
    if inner in (GraphQLString, GraphQLID, GraphQLInt, GraphQLBoolean, GraphQLFloat):
        return Column(attribute)
    if isinstance(inner, GraphQLScalarType) and inner.name == "DateTime":
        return Column(attribute, "datetime")
    if isinstance(inner, GraphQLScalarType) and inner.name == "JSON":
        return Column(attribute)
    raise _NoPlan("pushdown")


class _Pushed:
    """Stands in for the field's resolver in the engine's levels (operations._complete_levels)."""

    batch = None

    def __init__(self, owner: _Pushdown, arguments: dict[str, str]) -> None:
        self.owner = owner
        self.arguments = arguments  # GraphQL argument name -> the resolver's parameter name

    def call(self, parent: Any, info: Any, kwargs: dict[str, Any]) -> Any:
        return self.owner.run(info, kwargs)


def _identity(value: Any, pending: Any = None) -> Any:
    return value


class _Pushdown(ResolverField):
    """A root field answered by one statement; subclasses compile the selection and run it."""

    __slots__ = ("connection", "pages", "pushed")

    def __init__(self, compiler: PushdownCompiler, field: GraphQLField, details: Any) -> None:
        super().__init__(compiler.schema, field, adapter.nodes_of(details), _identity)
        self.connection = self.compile_selection(compiler, field, details)
        self.pages = json_reads.pages_of(self.connection)
        self.pushed = _Pushed(self, self.resolver.arguments)
        # The engine calls `resolver.call`: this statement instead of the field's resolver.
        self.resolver = cast(Any, self.pushed)

    def compile_selection(self, compiler: PushdownCompiler, field: GraphQLField, details: Any) -> JsonObject:
        raise NotImplementedError

    def kwargs(self, variable_values: Any) -> dict[str, Any]:
        return {"root": super().kwargs(variable_values), "variables": variable_values}

    async def run(self, info: Any, kwargs: dict[str, Any]) -> orjson.Fragment | None:
        context = info.context
        tenant = context.tenant()  # the resolver's scope check: UNAUTHENTICATED / FORBIDDEN
        limits = context.resources.limits
        variables = kwargs["variables"]
        shared = context.round_trip
        try:
            # The nested pages' arguments, validated as their resolvers validate them.
            pages = [json_reads.page_values(HistoryArgs(**p.source.kwargs(variables)), limits) for p in self.pages]
        except DomainError:
            # Their resolvers run only under a parent that exists: no parent, no error.
            if await self.absent(shared or context.resources.db, tenant, limits, kwargs["root"]):
                return None
            raise
        if shared is not None:  # a batch's item: its statement goes with the other items'
            text = await self.read(shared, tenant, limits, kwargs["root"], pages)
        else:
            async with context.resources.db.read() as conn:
                text = await self.read(conn, tenant, limits, kwargs["root"], pages)
        return orjson.Fragment(text) if text is not None else None

    async def absent(self, source: Any, tenant: str, limits: Any, root: dict[str, Any]) -> bool:
        """Whether the field's answer is null without reading its nested pages."""
        return False

    async def read(
        self, conn: Any, tenant: str, limits: Any, root: dict[str, Any], pages: list[PageValues]
    ) -> str | None:
        raise NotImplementedError


class ConversationsPushdown(_Pushdown):
    """`Query.conversations(filter, first, after, orderBy) { edges { node { … } } }`."""

    __slots__ = ()

    def compile_selection(self, compiler: PushdownCompiler, field: GraphQLField, details: Any) -> JsonObject:
        return compiler.connection(field, details, _conversation_row)

    async def read(
        self, conn: Any, tenant: str, limits: Any, root: dict[str, Any], pages: list[PageValues]
    ) -> str | None:
        filter_, order_by = root.get("filter"), root.get("order_by")
        return await json_reads.conversation_list(
            conn,
            tenant,
            filter_.to_model() if filter_ is not None else None,
            first=root.get("first"),
            after=root.get("after"),
            order=models.ConversationOrder(order_by or models.ConversationOrder.LAST_ACTIVITY_DESC),
            limits=limits,
            connection=self.connection,
            pages=pages,
        )


class HistoryPushdown(_Pushdown):
    """`Query.history(conversationId | sessionId, first/last/after/before/afterSeq) { edges { node } }`."""

    __slots__ = ()

    def compile_selection(self, compiler: PushdownCompiler, field: GraphQLField, details: Any) -> JsonObject:
        if any(a.name.value == "since" for node in self.nodes for a in node.arguments or ()):
            raise _NoPlan("pushdown")  # since needs a lookup first
        return compiler.connection(field, details, _message_row)

    async def read(
        self, conn: Any, tenant: str, limits: Any, root: dict[str, Any], pages: list[PageValues]
    ) -> str | None:
        target = conversations.ref(root.get("conversation_id"), root.get("session_id"), limits)
        paging = {k: v for k, v in root.items() if k not in ("conversation_id", "session_id")}
        values = json_reads.page_values(HistoryArgs(**paging), limits)
        return await json_reads.history(conn, tenant, target, MessagePage(self.connection), values)


class ConversationPushdown(_Pushdown):
    """`Query.conversation(id | sessionId) { <columns> messages(…) { … } }`: null when not found."""

    __slots__ = ()

    def compile_selection(self, compiler: PushdownCompiler, field: GraphQLField, details: Any) -> JsonObject:
        return _conversation_row(compiler, _named(field.type), details)

    async def read(
        self, conn: Any, tenant: str, limits: Any, root: dict[str, Any], pages: list[PageValues]
    ) -> str | None:
        target = conversations.ref(root.get("id"), root.get("session_id"), limits)
        return await json_reads.conversation(conn, tenant, target, self.connection, pages)

    async def absent(self, source: Any, tenant: str, limits: Any, root: dict[str, Any]) -> bool:
        target = conversations.ref(root.get("id"), root.get("session_id"), limits)
        if isinstance(source, json_reads.RoundTrip):
            return await json_reads.conversation(source, tenant, target, _EXISTS, []) is None  # type: ignore[arg-type]
        async with source.read() as conn:
            return await json_reads.conversation(conn, tenant, target, _EXISTS, []) is None


def _conversation_row(compiler: PushdownCompiler, type_: GraphQLObjectType, details: Any) -> JsonObject:
    return compiler.row(type_, details, _CONVERSATION_COLUMNS, nested=True)


def _message_row(compiler: PushdownCompiler, type_: GraphQLObjectType, details: Any) -> JsonObject:
    return compiler.row(type_, details, _MESSAGE_COLUMNS, nested=False)


_ROOTS: dict[str, type[_Pushdown]] = {
    "conversations": ConversationsPushdown,
    "history": HistoryPushdown,
    "conversation": ConversationPushdown,
}
_COMPUTED = frozenset({"totalCount", "totalCountCapped"})
_PAGE_INFO = frozenset({"hasNextPage", "hasPreviousPage", "startCursor", "endCursor"})


class PushdownCompiler(Compiler):
    """The engine's compiler for queries: pushes down the subtrees it can, plans the rest."""

    def resolver_field(self, object_type: GraphQLObjectType, field: GraphQLField, details: Any) -> ResolverField:
        core = self.executor.schema
        pushdown = _ROOTS.get(adapter.nodes_of(details)[0].name.value) if object_type is core.query_type else None
        if pushdown is not None:
            try:
                return pushdown(self, field, details)
            except _NoPlan:
                pass
        return super().resolver_field(object_type, field, details)

    def connection(self, field: GraphQLField, details: Any, row: Any) -> JsonObject:
        """A connection selecting `edges { cursor node }`, `pageInfo`, `totalCount(Capped)` and
        `__typename`."""
        conn_type = _named(field.type)
        out: list[tuple[str, Any]] = []
        for key, fds in self._collect(conn_type, details).items():
            name = fds[0].node.name.value
            if name == "__typename":
                out.append((key, Const(conn_type.name)))
            elif name == "edges":
                edge_type = _named(conn_type.fields["edges"].type)
                edge: list[tuple[str, Any]] = []
                for edge_key, efds in self._collect(edge_type, fds).items():
                    edge_name = efds[0].node.name.value
                    if edge_name == "__typename":
                        edge.append((edge_key, Const(edge_type.name)))
                    elif edge_name == "node":
                        node_type = _named(edge_type.fields["node"].type)
                        edge.append((edge_key, Node(row(self, node_type, efds))))
                    elif edge_name == "cursor":
                        edge.append((edge_key, Meta("cursor")))
                    else:
                        raise _NoPlan("pushdown")
                out.append((key, Edges(JsonObject(tuple(edge)))))
            elif name in _COMPUTED:
                out.append((key, Meta(name)))
            elif name == "pageInfo":
                info_type = _named(conn_type.fields["pageInfo"].type)
                info: list[tuple[str, Any]] = []
                for info_key, ifds in self._collect(info_type, fds).items():
                    info_name = ifds[0].node.name.value
                    if info_name == "__typename":
                        info.append((info_key, Const(info_type.name)))
                    elif info_name in _PAGE_INFO:
                        info.append((info_key, Meta(info_name)))
                    else:
                        raise _NoPlan("pushdown")
                out.append((key, Node(JsonObject(tuple(info)))))
            else:
                raise _NoPlan("pushdown")
        return JsonObject(tuple(out))

    def row(self, type_: GraphQLObjectType, details: Any, columns: frozenset[str], nested: bool) -> JsonObject:
        out: list[tuple[str, Any]] = []
        for key, fds in self._collect(type_, details).items():
            node = fds[0].node
            name = node.name.value
            if name == "__typename":
                out.append((key, Const(type_.name)))
                continue
            field = type_.fields[name]
            attribute = adapter.plain_attribute(field)
            if attribute is not None and not node.arguments and attribute in columns:
                out.append((key, _column(field, attribute)))
            elif nested and name == "messages" and type_.name == "Conversation":
                target = ResolverField(self.schema, field, adapter.nodes_of(fds), _identity)
                if "since" in {a.name.value for a in node.arguments or ()}:
                    raise _NoPlan("pushdown")
                connection = self.connection(field, fds, _message_row)
                out.append((key, MessagePage(connection, source=target)))
            elif name == "sources" and type_.name == "Message":
                source_type = _named(field.type)
                item = self.row(source_type, fds, json_reads.SOURCE_FIELDS, nested=False)
                out.append((key, SourceList(item)))
            else:
                raise _NoPlan("pushdown")
        return JsonObject(tuple(out))

    def _collect(self, type_: GraphQLObjectType, details: Any) -> Any:
        grouped = adapter.collect_sub(self.executor, type_, details)
        if grouped is None:
            raise _NoPlan("defer")
        return grouped
