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
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    GraphQLEnumType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    OperationDefinitionNode,
    OperationType,
)
from graphql.execution.collect_fields import FieldDetails
from graphql.execution.values import get_argument_values, get_variable_values

from app.api.documents_cache import DocumentCache
from app.api.fast_lists import FastListExecutionContext, Plan, _Fallback, _NoPlan


class _Info:
    """What our resolvers read from `info`: the request context."""

    __slots__ = ("context",)

    def __init__(self, context: Any) -> None:
        self.context = context


@dataclass(slots=True)
class OperationPlan:
    operation: OperationDefinitionNode
    operation_name: str | None
    response_key: str
    field_def: Any
    field_node: FieldNode
    resolver: Any
    arguments: dict[str, str]  # GraphQL name -> Python name
    converters: dict[str, Any]  # GraphQL name -> enum conversion
    plan: Plan

    async def run(self, schema: Any, context: Any, variables: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            coerced = get_variable_values(schema, self.operation.variable_definitions or (), variables or {})
            if isinstance(coerced, list):
                return None  # the ordinary path reports the variable errors
            raw = get_argument_values(self.field_def, self.field_node, coerced)
            for name, convert in self.converters.items():
                if name in raw:
                    raw[name] = convert(raw[name])
            kwargs = {self.arguments[name]: value for name, value in raw.items()}
            result = await self.resolver(None, _Info(context), **kwargs)
            return {self.response_key: self.plan(result)}
        except _Fallback:
            return None
        except Exception:
            return None  # errors are reported by the ordinary path, with their codes


def _converter(type_: GraphQLInputType) -> Any:
    """graphql-core coerces an enum argument to its GraphQL value ("user"); resolvers get the
    Python enum member (Role.USER), as Strawberry's own argument conversion gives them."""
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if isinstance(inner, GraphQLList):
        item = _converter(inner.of_type)
        if item is None:
            return None
        return lambda values: None if values is None else [item(v) for v in values]
    if isinstance(inner, GraphQLEnumType):
        members = inner.extensions["strawberry-definition"].wrapped_cls
        return lambda value: None if value is None else members(value)
    return None


def _scalar_input(type_: GraphQLInputType) -> bool:
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if isinstance(inner, GraphQLList):
        return _scalar_input(inner.of_type)
    return isinstance(inner, GraphQLScalarType | GraphQLEnumType)


class CompiledOperations:
    ENABLED = True

    def __init__(self, schema: Any, documents: DocumentCache, maxsize: int = 512) -> None:
        self.schema = schema
        self.core_schema = schema._schema
        self.documents = documents
        self.maxsize = maxsize
        self._plans: OrderedDict[tuple[str, str | None], OperationPlan | None] = OrderedDict()

    def get(self, query: str, operation_name: str | None, variables: dict[str, Any] | None) -> OperationPlan | None:
        if not (self.ENABLED and FastListExecutionContext.ENABLED) or "@" in query:
            return None
        key = (query, operation_name)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = self._build(query, operation_name, variables)
        if plan is not None or len(self._plans) < self.maxsize:
            self._plans[key] = plan
            if len(self._plans) > self.maxsize:
                self._plans.popitem(last=False)
        return plan

    def _build(self, query: str, operation_name: str | None, variables: dict[str, Any] | None) -> OperationPlan | None:
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
        if len(operations) != 1 or operations[0].operation is not OperationType.QUERY:
            return None
        operation = operations[0]
        selections = operation.selection_set.selections
        if len(selections) != 1 or not isinstance(selections[0], FieldNode):
            return None
        node = selections[0]
        if node.name.value.startswith("__"):
            return None
        field_def = core.query_type.fields.get(node.name.value)
        definition = field_def.extensions.get("strawberry-definition") if field_def else None
        if field_def is None or definition is None or definition.base_resolver is None or definition.extensions:
            return None
        if not all(_scalar_input(arg.type) for arg in field_def.args.values()):
            return None
        executor = FastListExecutionContext.build(
            core,
            document,
            raw_variable_values=variables or {},
            operation_name=operation_name,
            operation_extensions=None,
        )
        if not isinstance(executor, FastListExecutionContext):
            return None
        try:
            plan = executor._compile(field_def.type, [FieldDetails(node, None)])
        except _NoPlan:
            return None
        names = self.schema.config.name_converter
        arguments = {names.get_graphql_name(a): a.python_name for a in definition.arguments}
        if set(arguments) != set(field_def.args):
            return None
        return OperationPlan(
            operation=operation,
            operation_name=operation.name.value if operation.name else None,
            response_key=node.alias.value if node.alias else node.name.value,
            field_def=field_def,
            field_node=node,
            resolver=definition.base_resolver.wrapped_func,
            arguments=arguments,
            converters={
                name: convert for name, arg in field_def.args.items() if (convert := _converter(arg.type)) is not None
            },
            plan=plan,
        )
