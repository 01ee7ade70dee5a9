"""Whole queries run without the GraphQL executor, when that changes nothing but the cost.

For a query with one root field whose arguments are scalars or enums, whose resolver is ours
and whose whole selection compiles into a plan (app/api/fast_lists.py: plain attributes down
to the leaves, no directives), the answer is: coerce the variables, call the resolver, run the
plan. That skips Strawberry's per-operation extension machinery and graphql-core's executor,
about a quarter of a "last 50 messages" request. Documents are parsed and validated by the
same DocumentCache as every other request (limits included), and anything unusual — a
validation error, bad variables, a resolver error, a shape the plan refuses — returns None, and
the request takes the ordinary path, which then answers exactly as it always does. Queries only:
they are read-only, so running the resolver again on that path is harmless.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, cast

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    OperationDefinitionNode,
    OperationType,
)
from graphql.error import located_error
from graphql.execution.collect_fields import FieldDetails
from graphql.execution.values import get_argument_values, get_variable_values

from app.api.documents_cache import DocumentCache
from app.api.errors import shape
from app.api.fast_lists import FastListExecutionContext, Plan, _NoPlan


class _Info:
    """What our resolvers read from `info`: the request context, and the field's syntax tree
    (app/api/write_only.py checks a write-only caller's mutation selection on it)."""

    __slots__ = ("context", "field_nodes", "fragments")

    def __init__(self, context: Any, plan: OperationPlan | None = None) -> None:
        self.context = context
        self.field_nodes = (plan.field_node,) if plan is not None else ()
        self.fragments = plan.fragments if plan is not None else {}


@dataclass(slots=True)
class OperationPlan:
    operation: OperationDefinitionNode
    operation_name: str | None
    response_key: str
    field_def: Any
    field_node: FieldNode
    resolver: Any
    arguments: dict[str, str]  # GraphQL name -> Python name
    converters: dict[str, Any]  # GraphQL name -> conversion (enums, input objects)
    plan: Plan
    mutation: bool = False
    fragments: dict[str, FragmentDefinitionNode] = field(default_factory=dict)

    async def run(self, schema: Any, context: Any, variables: dict[str, Any] | None) -> dict[str, Any] | None:
        """The response ({"data": …} and, for a failed mutation, "errors"), or None: take the
        ordinary path. Before the resolver runs nothing has happened, so any doubt goes there;
        after a mutation's resolver has run it must not run again, so its outcome is answered
        here, exactly as the ordinary path shapes it."""
        try:
            coerced = get_variable_values(schema, self.operation.variable_definitions or (), variables or {})
            if isinstance(coerced, list):
                return None  # the ordinary path reports the variable errors
            raw = get_argument_values(self.field_def, self.field_node, coerced)
            for name, convert in self.converters.items():
                if name in raw:
                    raw[name] = convert(raw[name])
            kwargs = {self.arguments[name]: value for name, value in raw.items()}
        except Exception:
            return None
        if not self.mutation:
            try:
                result = await self.resolver(None, _Info(context, self), **kwargs)
                return {"data": {self.response_key: self.plan(result)}}
            except Exception:
                return None  # a query is read-only: the ordinary path runs it again and reports
        try:
            result = await self.resolver(None, _Info(context, self), **kwargs)
        except Exception as exc:
            return self._failed(exc, context)
        try:
            return {"data": {self.response_key: self.plan(result)}}
        except Exception as exc:  # a result the schema refuses (a bug): INTERNAL, never a rerun
            return self._failed(exc, context)

    def _failed(self, exc: Exception, context: Any) -> dict[str, Any]:
        error = located_error(exc, [self.field_node], [self.response_key])
        shape(error, getattr(context, "request_id", "") or "")
        data = None if isinstance(self.field_def.type, GraphQLNonNull) else {self.response_key: None}
        return {"data": data, "errors": [error.formatted]}


def _converter(type_: GraphQLInputType, names: Any = None) -> Any:
    """graphql-core coerces arguments to plain values: an enum to its GraphQL value ("user"), an
    input object to a dict keyed by GraphQL names. Resolvers get what Strawberry's own argument
    conversion gives them: enum members (Role.USER) and input class instances. None: the value
    needs no conversion."""
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if isinstance(inner, GraphQLList):
        item = _converter(inner.of_type, names)
        if item is None:
            return None
        return lambda values: None if values is None else [item(v) for v in values]
    if isinstance(inner, GraphQLEnumType):
        members = inner.extensions["strawberry-definition"].wrapped_cls
        return lambda value: None if value is None else members(value)
    if isinstance(inner, GraphQLInputObjectType):
        if names is None:
            raise _NoPlan
        definition = inner.extensions["strawberry-definition"]
        cls = definition.origin
        python = {names.get_graphql_name(f): f.python_name for f in definition.fields}
        if set(python) != set(inner.fields):
            raise _NoPlan
        nested = {n: c for n, f in inner.fields.items() if (c := _converter(f.type, names)) is not None}

        def build(value: Any) -> Any:
            if value is None:
                return None
            return cls(**{python[k]: (nested[k](v) if k in nested else v) for k, v in value.items()})

        return build
    return None


def _scalar_input(type_: GraphQLInputType) -> bool:
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if isinstance(inner, GraphQLList):
        return _scalar_input(inner.of_type)
    return isinstance(inner, GraphQLScalarType | GraphQLEnumType)


def _plain_input(type_: GraphQLInputType) -> bool:
    """Scalars, enums, and input objects made of them (what mutations take)."""
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if isinstance(inner, GraphQLList):
        return _plain_input(inner.of_type)
    if isinstance(inner, GraphQLInputObjectType):
        return "strawberry-definition" in inner.extensions and all(_plain_input(f.type) for f in inner.fields.values())
    return isinstance(inner, GraphQLScalarType | GraphQLEnumType)


class CompiledOperations:
    ENABLED = True
    #: _build's answer when only this request's variables stood in the way.
    _RETRY: Any = object()

    def __init__(self, schema: Any, documents: DocumentCache, maxsize: int = 512) -> None:
        self.schema = schema
        self.core_schema = schema._schema
        self.documents = documents
        self.maxsize = maxsize
        # At most maxsize keys of at most MAX_CACHED_DOCUMENT_BYTES each (see get).
        self._plans: OrderedDict[tuple[str, str | None], OperationPlan | None] = OrderedDict()

    def get(self, query: str, operation_name: str | None, variables: dict[str, Any] | None) -> OperationPlan | None:
        if not (self.ENABLED and FastListExecutionContext.ENABLED) or "@" in query:
            return None
        if len(query) > self.documents.max_cached_chars:
            return None  # the plans are keyed by text: only documents the cache would keep

        key = (query, operation_name)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        built = self._build(query, operation_name, variables)
        if built is self._RETRY:
            return None  # this request's variables were wrong; the next request may compile it
        plan = cast(OperationPlan | None, built)
        self._plans[key] = plan
        if len(self._plans) > self.maxsize:
            self._plans.popitem(last=False)
        return plan

    def _build(self, query: str, operation_name: str | None, variables: dict[str, Any] | None) -> Any:
        core = self.schema._schema
        try:
            document = self.documents.parse(query)
        except Exception:
            return None
        if self.documents.validate(core, query, document):
            return None
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if operation_name is not None:
            operations = [o for o in operations if o.name and o.name.value == operation_name]
        if len(operations) != 1 or operations[0].operation not in (OperationType.QUERY, OperationType.MUTATION):
            return None
        operation = operations[0]
        mutation = operation.operation is OperationType.MUTATION
        root_type = core.mutation_type if mutation else core.query_type
        selections = operation.selection_set.selections
        if len(selections) != 1 or not isinstance(selections[0], FieldNode):
            return None
        node = selections[0]
        if node.name.value.startswith("__"):
            return None
        field_def = root_type.fields.get(node.name.value) if root_type is not None else None
        definition = field_def.extensions.get("strawberry-definition") if field_def else None
        if field_def is None or definition is None or definition.base_resolver is None or definition.extensions:
            return None
        allowed = _plain_input if mutation else _scalar_input
        if not all(allowed(arg.type) for arg in field_def.args.values()):
            return None
        executor = FastListExecutionContext.build(
            core,
            document,
            raw_variable_values=variables or {},
            operation_name=operation_name,
            operation_extensions=None,
        )
        if not isinstance(executor, FastListExecutionContext):
            return self._RETRY
        try:
            plan = executor._compile(field_def.type, [FieldDetails(node, None)])
        except _NoPlan:
            return None
        names = self.schema.config.name_converter
        arguments = {names.get_graphql_name(a): a.python_name for a in definition.arguments}
        if set(arguments) != set(field_def.args):
            return None
        try:
            converters = {
                name: convert
                for name, arg in field_def.args.items()
                if (convert := _converter(arg.type, names)) is not None
            }
        except _NoPlan:
            return None
        return OperationPlan(
            operation=operation,
            operation_name=operation.name.value if operation.name else None,
            response_key=node.alias.value if node.alias else node.name.value,
            field_def=field_def,
            field_node=node,
            resolver=definition.base_resolver.wrapped_func,
            arguments=arguments,
            converters=converters,
            plan=plan,
            mutation=mutation,
            fragments={name: f.definition for name, f in executor.fragments.items()},
        )
