"""The engine: operations planned once and executed by their plans, without graphql-core's executor.

A validated document's operation — any root fields, arguments of any input type, variables,
fragments, aliases, `@include`/`@skip` — is compiled into a plan (app/api/engine/plans.py):
plain attributes are read by generated functions, and fields with resolvers (every root field,
`Conversation.messages(last: 3)`, `Message.sources`, …) are called level by level: all pending
resolvers of one level run together, so their DataLoaders batch the level into one statement
(the last 3 messages of 20 conversations: one range read). That skips Strawberry's
per-operation extension machinery and graphql-core's per-field executor. Root fields whose whole
subtree the SQL pushdown covers (app/api/engine/pushdown.py: `conversations`, `history`) are
one statement that returns their JSON, placed in the response as bytes.

Documents are parsed and validated by the same DocumentCache as every other request (limits
included). A shape the engine cannot plan returns None (counted in /metrics by reason) and the
request takes the ordinary path. At run time a query that meets anything unusual — bad variables,
a resolver error, a null where the schema says non-null — also returns None: queries are
read-only, so running them again on the ordinary path is harmless, and that path answers
exactly as it always does. A mutation is planned only when it has one root field and a plain
selection, so once its resolver has run, its outcome is answered here, shaped as the ordinary
path shapes it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, cast

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLNonNull,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
)
from graphql.error import located_error

from app import metrics
from app.api.documents_cache import DocumentCache
from app.api.engine import adapter
from app.api.engine.plans import Compiler, EngineExecutionContext, Plan, ResolverField, _Fallback, _NoPlan
from app.api.engine.pushdown import PushdownCompiler
from app.api.errors import shape


class _Info:
    """What our resolvers read from `info`: the request context, and the field's syntax tree
    (app/api/write_only.py checks a write-only caller's mutation selection on it; a resolver
    asking whether a subfield is selected reads `field_nodes` and `fragments`, which both paths
    provide — Strawberry's `selected_fields` is not here, and using it sends the request to the
    ordinary path)."""

    __slots__ = ("context", "field_nodes", "fragments")

    def __init__(
        self,
        context: Any,
        nodes: tuple[FieldNode, ...] = (),
        fragments: dict[str, FragmentDefinitionNode] | None = None,
    ) -> None:
        self.context = context
        self.field_nodes = nodes
        self.fragments = fragments or {}


@dataclass(slots=True)
class OperationPlan:
    operation: OperationDefinitionNode
    operation_name: str | None
    #: The root selection: placeholders for the root fields, which are pending resolver fields.
    root: Plan
    mutation: bool = False
    fragments: dict[str, FragmentDefinitionNode] = field(default_factory=dict)
    #: A mutation's one root field (its errors are answered here).
    mutation_field: ResolverField | None = None
    mutation_key: str = ""

    async def run(self, core: GraphQLSchema, context: Any, variables: dict[str, Any] | None) -> dict[str, Any] | None:
        """The response ({"data": …} and, for a failed mutation, "errors"), or None: take the
        ordinary path."""
        try:
            coerced = adapter.variables(core, self.operation, variables)
            if coerced is None:
                return None  # the ordinary path reports the variable errors
            if self.mutation:
                return await self._mutate(context, coerced)
            pending: list[Any] = []
            data = self.root(None, pending)
            await _complete_levels(pending, context, coerced, self.fragments)
            return {"data": data}
        except Exception:
            metrics.ENGINE_UNPLANNED.labels("runtime").inc()
            return None  # a query is read-only: the ordinary path runs it again and reports

    async def _mutate(self, context: Any, coerced: Any) -> dict[str, Any] | None:
        target = self.mutation_field
        assert target is not None
        kwargs = target.kwargs(coerced)  # raises before anything ran: the ordinary path reports
        try:
            result = target.resolver.call(None, _Info(context, target.nodes, self.fragments), kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return self._failed(exc, context)
        try:
            return {"data": {self.mutation_key: target.plan(result, None)}}
        except Exception as exc:  # a result the schema refuses (a bug): INTERNAL, never a rerun
            return self._failed(exc, context)

    def _failed(self, exc: Exception, context: Any) -> dict[str, Any]:
        target = self.mutation_field
        assert target is not None
        error = located_error(exc, list(target.nodes), [self.mutation_key])
        shape(error, getattr(context, "request_id", "") or "")
        data = None if isinstance(target.field.type, GraphQLNonNull) else {self.mutation_key: None}
        return {"data": data, "errors": [error.formatted]}


async def _complete_levels(
    pending: list[Any], context: Any, coerced: Any, fragments: dict[str, FragmentDefinitionNode]
) -> None:
    """Runs the pending resolver fields level by level: every resolver of one level is started
    before any is awaited, so the DataLoaders they call batch across all parents; a resolver
    with a batch form (app/api/batching.py) is called once for all its parents of the level."""
    kwargs_of: dict[int, dict[str, Any]] = {}
    infos: dict[int, _Info] = {}
    while pending:
        level, pending = pending, []
        groups: dict[int, list[Any]] = {}
        for entry in level:
            groups.setdefault(id(entry[3]), []).append(entry)
        filled: list[tuple[list[Any], Any, bool]] = []  # (entries, value or awaitable, one per entry?)
        for ident, entries in groups.items():
            target = entries[0][3]
            kwargs = kwargs_of.get(ident)
            if kwargs is None:
                kwargs = kwargs_of[ident] = target.kwargs(coerced)
                infos[ident] = _Info(context, target.nodes, fragments)
            info = infos[ident]
            resolver = target.resolver
            if resolver.batch is not None:
                filled.append((entries, resolver.batch([e[2] for e in entries], info, **kwargs), True))
                continue
            for entry in entries:
                filled.append(([entry], resolver.call(entry[2], info, dict(kwargs)), False))
        waiting = [i for i, (_, value, _) in enumerate(filled) if inspect.isawaitable(value)]
        if len(waiting) == 1:  # one root field, say: no task to create
            first = filled[waiting[0]]
            filled[waiting[0]] = (first[0], await first[1], first[2])
        elif waiting:
            done = await asyncio.gather(*(filled[i][1] for i in waiting))
            for i, value in zip(waiting, done, strict=True):
                filled[i] = (filled[i][0], value, filled[i][2])
        for entries, value, many in filled:
            values = value if many else [value]
            if len(values) != len(entries):
                raise _Fallback
            for (out, key, _, target), one in zip(entries, values, strict=True):
                if one is None and target.non_null:
                    raise _Fallback
                out[key] = target.plan(one, pending)


class Engine:
    #: _build's answer when only this request's variables stood in the way.
    _RETRY: Any = object()

    def __init__(self, schema: Any, documents: DocumentCache, maxsize: int = 512) -> None:
        self.schema = schema
        self.core_schema = adapter.core_schema(schema)
        self.documents = documents
        self.maxsize = maxsize
        # At most maxsize keys of at most MAX_CACHED_DOCUMENT_BYTES each (see get).
        self._plans: OrderedDict[tuple[Any, ...], OperationPlan | str] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return adapter.enabled(self.core_schema)

    def get(self, query: str, operation_name: str | None, variables: dict[str, Any] | None) -> OperationPlan | None:
        if not self.enabled:
            return None
        if len(query) > self.documents.max_cached_chars:
            metrics.ENGINE_UNPLANNED.labels("too_long").inc()
            return None  # the plans are keyed by text: only documents the cache would keep
        key: tuple[Any, ...] = (query, operation_name)
        if "@" in query:
            # @include/@skip decide the selection: one plan per value of the Boolean variables.
            key += tuple(sorted((k, v) for k, v in (variables or {}).items() if v is None or isinstance(v, bool)))
        found = self._plans.get(key)
        if found is not None:
            self._plans.move_to_end(key)
        else:
            built = self._build(query, operation_name, variables)
            if built is self._RETRY:
                metrics.ENGINE_UNPLANNED.labels("variables").inc()
                return None  # this request's variables were wrong; the next request may plan it
            found = cast(OperationPlan | str, built)
            self._plans[key] = found
            if len(self._plans) > self.maxsize:
                self._plans.popitem(last=False)
        if isinstance(found, str):
            metrics.ENGINE_UNPLANNED.labels(found).inc()
            return None
        return found

    def _build(self, query: str, operation_name: str | None, variables: dict[str, Any] | None) -> Any:
        """The plan, or the reason there is none (a metrics label)."""
        core = self.core_schema
        try:
            document = self.documents.parse(query)
        except Exception:
            return "invalid"
        if self.documents.validate(core, query, document):
            return "invalid"
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if operation_name is not None:
            operations = [o for o in operations if o.name and o.name.value == operation_name]
        if len(operations) != 1:
            return "invalid"
        operation = operations[0]
        if operation.operation not in (OperationType.QUERY, OperationType.MUTATION):
            return "subscription"
        mutation = operation.operation is OperationType.MUTATION
        root_type = core.mutation_type if mutation else core.query_type
        if root_type is None:
            return "invalid"
        executor = EngineExecutionContext.build(
            core, document, raw_variable_values=variables or {}, operation_name=operation_name
        )
        if not isinstance(executor, EngineExecutionContext):
            return self._RETRY
        grouped = adapter.collect_root(executor, root_type, operation)
        if grouped is None:
            return "defer"
        fragments = adapter.fragments_of(executor)
        name = operation.name.value if operation.name else None
        try:
            if not mutation:
                root = PushdownCompiler(executor, self.schema).compile_object(root_type, None, grouped)
                return OperationPlan(operation=operation, operation_name=name, root=root, fragments=fragments)
            if len(grouped) != 1:
                return "mutation_shape"
            ((key, details),) = grouped.items()
            node = details[0].node
            if node.name.value.startswith("__"):
                return "mutation_shape"
            field_def = root_type.fields[node.name.value]
            # Nested resolvers could fail after the mutation ran, and it must not run twice.
            plan = Compiler(executor).compile(field_def.type, details)
            target = ResolverField(self.schema, field_def, adapter.nodes_of(details), plan)
        except _NoPlan as refused:
            return refused.reason
        return OperationPlan(
            operation=operation,
            operation_name=name,
            root=plan,
            mutation=True,
            fragments=fragments,
            mutation_field=target,
            mutation_key=key,
        )
