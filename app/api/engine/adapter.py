"""The one module of the engine that reads Strawberry's and graphql-core's internals.

Everything the engine needs from them that is not public API — the graphql-core schema behind
a Strawberry schema (`schema._schema`), a field's Strawberry definition and its resolver's
`wrapped_func` and reserved parameters, enum and input classes behind GraphQL types,
`FieldDetails`, field collection and the execution-context class — is read here and nowhere
else. Both packages are pinned to exact versions in pyproject.toml; `REVIEWED` names the
versions this module was checked against, and tests/api/test_engine.py fails when the
installed versions differ, so an upgrade means re-reading this file first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
)
from graphql.execution.collect_fields import FieldDetails, collect_fields
from graphql.execution.values import get_argument_values, get_variable_values
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from app.api.batching import BATCH_ATTRIBUTE

#: The versions this adapter was reviewed against (pyproject.toml pins the same).
REVIEWED = {"strawberry-graphql": "0.341.2", "graphql-core": "3.3.2"}

#: The base of the executor class the schema runs with (subscriptions, the ordinary path).
ExecutionContextBase = StrawberryGraphQLCoreExecutionContext

_DEFINITION = "strawberry-definition"
_SWITCH = "conversation_service.engine"


def core_schema(schema: Any) -> GraphQLSchema:
    core: GraphQLSchema = schema._schema
    return core


def set_enabled(schema: Any, enabled: bool) -> None:
    """The GRAPHQL_ENGINE setting, kept on the graphql-core schema so the executor (which only
    sees that schema) and the HTTP view read the same switch."""
    core_schema(schema).extensions[_SWITCH] = enabled


def enabled(core: GraphQLSchema) -> bool:
    return bool(core.extensions.get(_SWITCH, True))


def plain_attribute(field: GraphQLField) -> str | None:
    """The Python attribute a field reads, when reading it is all the field does (no resolver,
    no field extensions, no permission classes); else None."""
    definition = field.extensions.get(_DEFINITION)
    if (
        definition is None
        or definition.base_resolver is not None
        or definition.extensions
        or getattr(definition, "permission_classes", None)
    ):
        return None
    name: str = definition.python_name
    return name


@dataclass(frozen=True, slots=True)
class Resolver:
    """How to call a field's own resolver function the way Strawberry calls it."""

    func: Any
    parent_positional: bool  # a `self` parameter takes the parent object
    root_name: str | None  # a `root` parameter takes it by name
    info_name: str | None
    arguments: dict[str, str]  # GraphQL argument name -> Python parameter name
    #: The resolver's batch form (app/api/batching.py), called once per level with all parents.
    batch: Any = None

    def call(self, parent: Any, info: Any, kwargs: dict[str, Any]) -> Any:
        if self.info_name is not None:
            kwargs[self.info_name] = info
        if self.root_name is not None:
            kwargs[self.root_name] = parent
        if self.parent_positional:
            return self.func(parent, **kwargs)
        return self.func(**kwargs)


def resolver_of(schema: Any, field: GraphQLField) -> Resolver | None:
    """The field's resolver, or None when calling it directly would skip something Strawberry
    does around it (field extensions, permission classes) or it has no resolver of ours."""
    definition = field.extensions.get(_DEFINITION)
    if definition is None or definition.base_resolver is None or definition.extensions:
        return None
    if getattr(definition, "permission_classes", None):
        return None
    base = definition.base_resolver
    names = schema.config.name_converter
    arguments = {names.get_graphql_name(a): a.python_name for a in definition.arguments}
    if set(arguments) != set(field.args):
        return None
    info = base.info_parameter
    root = base.root_parameter
    self_ = base.self_parameter
    if getattr(base, "parent_parameter", None) is not None:
        return None
    return Resolver(
        func=base.wrapped_func,
        parent_positional=self_ is not None,
        root_name=root.name if root is not None else None,
        info_name=info.name if info is not None else None,
        arguments=arguments,
        batch=getattr(base.wrapped_func, BATCH_ATTRIBUTE, None),
    )


def enum_class(enum: GraphQLEnumType) -> Any:
    return enum.extensions[_DEFINITION].wrapped_cls


def input_class(schema: Any, input_type: GraphQLInputObjectType) -> tuple[Any, dict[str, str]] | None:
    """The input's Python class and its GraphQL field name -> Python attribute map."""
    definition = input_type.extensions.get(_DEFINITION)
    if definition is None:
        return None
    names = schema.config.name_converter
    python = {names.get_graphql_name(f): f.python_name for f in definition.fields}
    if set(python) != set(input_type.fields):
        return None
    return definition.origin, python


def field_details(node: FieldNode) -> Any:
    return FieldDetails(node, None)


def nodes_of(details: Any) -> list[FieldNode]:
    return [d.node for d in details]


def collect_root(executor: Any, root_type: GraphQLObjectType, operation: OperationDefinitionNode) -> Any:
    """The operation's root fields by response key (fragments, aliases, @include/@skip applied
    with this executor's variables), or None when @defer is used."""
    grouped, deferred, _ = collect_fields(
        executor.schema, executor.fragments, executor.variable_values, root_type, operation
    )
    return None if deferred else grouped


def collect_sub(executor: Any, object_type: GraphQLObjectType, details: Any) -> Any:
    grouped, deferred, _ = executor.collect_subfields(object_type, details)
    return None if deferred else grouped


def fragments_of(executor: Any) -> dict[str, FragmentDefinitionNode]:
    return {name: f.definition for name, f in executor.fragments.items()}


def coerced_variables(executor: Any) -> dict[str, Any]:
    values: dict[str, Any] = executor.variable_values.coerced
    return values


def variables(core: GraphQLSchema, operation: OperationDefinitionNode, raw: dict[str, Any] | None) -> Any:
    """The operation's coerced variables, or None when they are wrong (the ordinary path
    reports that)."""
    coerced = get_variable_values(core, operation.variable_definitions or (), raw or {})
    return None if isinstance(coerced, list) else coerced


def arguments(field: GraphQLField, node: FieldNode, variable_values: Any) -> dict[str, Any]:
    """The field's arguments as graphql-core coerces them (defaults applied, GraphQL names)."""
    return get_argument_values(field, node, variable_values)
