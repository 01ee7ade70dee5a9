"""Plans: a selection compiled once into functions that complete results without graphql-core.

graphql-core completes every field of every row through its resolver machinery: a 50-message
page with 9 fields is ~450 resolver calls, ~40 % of a request's CPU. A plan reads plain
attributes (no resolver) directly and serialises the common scalars inline, in one generated
function per object selection. A field with a resolver (`Message.sources`, `Conversation.messages`
with its arguments, every root field) becomes a `ResolverField`: the plan leaves a placeholder
and a pending entry, and the engine (app/api/engine/operations.py) calls all pending resolvers
of one level together, so their DataLoaders batch into one statement per level.

Anything a plan cannot vouch for (a null where the schema says non-null, a serialiser error)
raises _Fallback and the request takes graphql-core's ordinary path, which then produces the
usual result or error: the plans have no behaviour of their own.

The same plans also serve inside graphql-core's executor (`EngineExecutionContext`, used for
subscriptions and for the requests the engine does not plan), for lists whose selection is plain.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any

from graphql import (
    FieldNode,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLField,
    GraphQLID,
    GraphQLInputType,
    GraphQLInt,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLString,
    is_leaf_type,
)
from graphql.pyutils import Undefined

from app.api.engine import adapter
from app.api.shared_events import share_key, shared

#: plan(value, pending) -> completed value; `pending` collects the resolver fields met.
Plan = Callable[[Any, Any], Any]


class _Fallback(Exception):
    pass


class _NoPlan(Exception):
    """The selection cannot be planned; args[0] is the reason (a metrics label)."""

    def __init__(self, reason: str = "shape") -> None:
        super().__init__(reason)
        self.reason = reason


def _leaf(leaf: GraphQLLeafType, non_null: bool) -> Plan:
    serialize = leaf.serialize
    if isinstance(leaf, GraphQLEnumType):
        # Enum values are hashable: one dict lookup instead of Strawberry's coercion per value.
        names = {v.value: name for name, v in leaf.values.items()}

        def complete_enum(value: Any, pending: Any = None) -> Any:
            if value is None:
                if non_null:
                    raise _Fallback
                return None
            name = names.get(value)
            if name is None:
                raise _Fallback
            return name

        return complete_enum

    def complete(value: Any, pending: Any = None) -> Any:
        if value is None:
            if non_null:
                raise _Fallback
            return None
        out = serialize(value)
        if out is None or out is Undefined:
            raise _Fallback
        return out

    return complete


def _list(item: Plan, non_null: bool) -> Plan:
    def complete(value: Any, pending: Any = None) -> Any:
        if value is None:
            if non_null:
                raise _Fallback
            return None
        if isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
            raise _Fallback
        return [item(v, pending) for v in value]

    return complete


def _nullable(plan: Plan, non_null: bool) -> Plan:
    def complete(value: Any, pending: Any = None) -> Any:
        if value is None:
            if non_null:
                raise _Fallback
            return None
        return plan(value, pending)

    return complete


def converter(schema: Any, type_: GraphQLInputType) -> Any:
    """graphql-core coerces arguments to plain values: an enum to its GraphQL value ("user"), an
    input object to a dict keyed by GraphQL names. Resolvers get what Strawberry's own argument
    conversion gives them: enum members (Role.USER) and input class instances. None: the value
    needs no conversion."""
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if isinstance(inner, GraphQLList):
        item = converter(schema, inner.of_type)
        if item is None:
            return None
        return lambda values: None if values is None else [item(v) for v in values]
    if isinstance(inner, GraphQLEnumType):
        members = adapter.enum_class(inner)
        return lambda value: None if value is None else members(value)
    if isinstance(inner, GraphQLScalarType):
        return None
    found = adapter.input_class(schema, inner)
    if found is None:
        raise _NoPlan("input_type")
    cls, python = found
    nested = {n: c for n, f in inner.fields.items() if (c := converter(schema, f.type)) is not None}

    def build(value: Any) -> Any:
        if value is None:
            return None
        return cls(**{python[k]: (nested[k](v) if k in nested else v) for k, v in value.items()})

    return build


class ResolverField:
    """A field whose resolver the engine calls: for every parent of one level at once."""

    __slots__ = ("converters", "field", "node", "nodes", "non_null", "plan", "resolver")

    def __init__(self, schema: Any, field: GraphQLField, nodes: list[FieldNode], plan: Plan) -> None:
        resolver = adapter.resolver_of(schema, field)
        if resolver is None:
            raise _NoPlan("field_extension")
        self.resolver = resolver
        self.field = field
        # Every node merged into this response key (resolvers may inspect the selection, e.g.
        # whether totalCount is asked for); arguments are equal across them (validation).
        self.nodes = tuple(nodes)
        self.node = nodes[0]
        self.plan = plan
        self.non_null = isinstance(field.type, GraphQLNonNull)
        self.converters = {
            name: convert for name, arg in field.args.items() if (convert := converter(schema, arg.type)) is not None
        }

    def kwargs(self, variable_values: Any) -> dict[str, Any]:
        raw = adapter.arguments(self.field, self.node, variable_values)
        for name, convert in self.converters.items():
            if name in raw:
                raw[name] = convert(raw[name])
        names = self.resolver.arguments
        return {names[name]: value for name, value in raw.items()}


_SHARED_PLANS: dict[Any, tuple[Any, Plan | None]] = {}
_SHARED_PLANS_MAX = 2048


class Compiler:
    """Compiles selections with one executor's fragments and variables. With `schema` given,
    fields with resolvers become ResolverFields (the engine); without, they refuse the plan
    (lists completed inside graphql-core's executor)."""

    def __init__(self, executor: Any, schema: Any = None) -> None:
        self.executor = executor
        self.schema = schema

    def compile(self, type_: GraphQLOutputType, details: Any) -> Plan:
        non_null = isinstance(type_, GraphQLNonNull)
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        if isinstance(inner, GraphQLList):
            return _list(self.compile(inner.of_type, details), non_null)
        if is_leaf_type(inner):
            return _leaf(inner, non_null)
        if not isinstance(inner, GraphQLObjectType):
            raise _NoPlan("abstract_type")  # interfaces and unions resolve their type at run time
        return _nullable(self.compile_object(inner, details), non_null)

    def compile_object(self, object_type: GraphQLObjectType, details: Any, grouped: Any = None) -> Plan:
        if grouped is None:
            grouped = adapter.collect_sub(self.executor, object_type, details)
        if grouped is None:
            raise _NoPlan("defer")
        fields: list[tuple[str, Any, GraphQLOutputType | None, Any]] = []
        for response_key, field_details in grouped.items():
            node = field_details[0].node
            name = node.name.value
            if name == "__typename":
                fields.append((response_key, None, None, object_type.name))
                continue
            if name.startswith("__"):
                raise _NoPlan("introspection")
            field = object_type.fields[name]
            attribute = adapter.plain_attribute(field)
            if attribute is not None and not node.arguments:
                fields.append((response_key, attribute, field.type, field_details))
                continue
            if self.schema is None:
                raise _NoPlan("resolver")
            fields.append((response_key, self.resolver_field(object_type, field, field_details), None, None))
        return _generate(fields, self.compile)

    def resolver_field(self, object_type: GraphQLObjectType, field: GraphQLField, details: Any) -> ResolverField:
        """The pending entry of a field with a resolver (app/api/engine/pushdown.py may answer
        whole subtrees instead)."""
        plan = self.compile(field.type, details)
        return ResolverField(self.schema, field, adapter.nodes_of(details), plan)


class EngineExecutionContext(adapter.ExecutionContextBase):
    """graphql-core's executor with plans for plain lists (subscriptions and unplanned requests)."""

    def complete_iterable_value(
        self,
        item_type: GraphQLOutputType,
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        if isinstance(result, list) and adapter.enabled(self.schema):
            plan = self._plan(item_type, field_details_list)
            if plan is not None:
                try:
                    return [plan(row, None) for row in result]
                except _Fallback:
                    pass
        return super().complete_iterable_value(item_type, field_details_list, info, path, result, position_context)

    def build_per_event_executor(self, payload: Any) -> Any:
        executor = super().build_per_event_executor(payload)
        # graphql-core 3.3 copies the executor shallowly, so every event's copy memoized its
        # subfields in the subscription's one dict, keyed by the ids of lists collected anew for
        # each event (never hit again) and keeping those lists alive: a subscription grew with
        # every event it executed, for as long as it lived (the soak, docs/benchmarks.md).
        # Each event gets its own memo, dropped with it.
        executor._relevant_sub_fields = {}
        executor.__dict__["_share"] = share_key(payload, self.operation, self.variable_values.coerced)
        executor.__dict__["_payload"] = payload
        return executor

    def execute_operation(self, serially: bool | None = None) -> Any:
        key = self.__dict__.get("_share")
        if key is None:
            return super().execute_operation(serially)
        return shared(
            key, self.__dict__["_payload"], lambda: super(EngineExecutionContext, self).execute_operation(serially)
        )

    def _plan(self, item_type: GraphQLOutputType, field_details_list: Any) -> Plan | None:
        """The compiled plan of this list field. Plans are shared across requests, keyed by the
        field nodes of the (cached) parsed document, unless directives make the selection
        depend on variables; then they live for this request only."""
        nodes = tuple(fd.node for fd in field_details_list)
        key = (self.schema, item_type, tuple(map(id, nodes)))
        shareable = self._shareable()
        cache = _SHARED_PLANS if shareable else self.__dict__.setdefault("_fast_plans", {})
        entry = cache.get(key)
        if entry is not None:
            return entry[1]
        try:
            plan: Plan | None = Compiler(self).compile(item_type, field_details_list)
        except _NoPlan:
            plan = None
        cache[key] = (nodes, plan)  # the nodes stay referenced, so their ids cannot be reused
        if shareable and len(cache) > _SHARED_PLANS_MAX:
            cache.pop(next(iter(cache)))
        return plan

    def _shareable(self) -> bool:
        cached = self.__dict__.get("_plans_shareable")
        if cached is None:
            location = self.operation.loc
            cached = location is not None and "@" not in location.source.body
            self.__dict__["_plans_shareable"] = cached
        return bool(cached)


def _generate(
    fields: list[tuple[str, Any, GraphQLOutputType | None, Any]],
    compile_: Callable[[GraphQLOutputType, Any], Plan],
) -> Plan:
    """Generate one function per object plan: per-field calls cost more than the work they do.

    The common scalars are inlined with the same checks their serialisers make; anything
    unusual goes through the type's own serialiser, and anything wrong raises _Fallback. A
    resolver field gets a placeholder (it keeps the response's key order) and a pending entry."""
    names: dict[str, Any] = {"_Fallback": _Fallback, "UUID": uuid.UUID, "UTC": UTC}
    lines = ["def complete(row, pending=None):", "    out = {}"]
    for i, (key, attribute, type_, details) in enumerate(fields):
        k = repr(key)
        if attribute is None:
            lines.append(f"    out[{k}] = {details!r}")
            continue
        if isinstance(attribute, ResolverField):
            names[f"r{i}"] = attribute
            lines.append(f"    out[{k}] = None")
            lines.append(f"    pending.append((out, {k}, row, r{i}))")
            continue
        assert type_ is not None
        non_null = isinstance(type_, GraphQLNonNull)
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        lines.append(f"    v = row.{attribute}")
        lines.append("    if v is None:")
        lines.append("        raise _Fallback" if non_null else f"        out[{k}] = None")
        lines.append("    else:")
        if inner is GraphQLString:
            expr = f"v if type(v) is str else s{i}(v)"
        elif inner is GraphQLInt:
            expr = f"v if type(v) is int and -2147483648 <= v <= 2147483647 else s{i}(v)"
        elif inner is GraphQLBoolean:
            expr = f"v if type(v) is bool else s{i}(v)"
        elif inner is GraphQLID:
            # A UUID stays a UUID: the response encoder (orjson, HTTP and WebSocket alike) writes
            # exactly str(uuid), three times faster than str() here.
            expr = f"v if type(v) is str or type(v) is UUID else s{i}(v)"
        elif isinstance(inner, GraphQLScalarType) and inner.name == "DateTime":
            # Likewise a UTC datetime: orjson writes exactly v.isoformat() (tested), 4x faster.
            expr = f"v if v.tzinfo is UTC else s{i}(v)"
        elif isinstance(inner, GraphQLScalarType) and inner.name == "JSON":
            expr = "v"
        else:
            # Enums, other scalars, nested objects and lists: their own compiled plan.
            names[f"p{i}"] = compile_(inner, details)
            lines.append(f"        out[{k}] = p{i}(v, pending)")
            continue
        names[f"s{i}"] = _checked(inner)
        lines.append(f"        out[{k}] = {expr}")
    lines.append("    return out")
    exec("\n".join(lines), names)  # generated from the schema, never from input
    return names["complete"]  # type: ignore[no-any-return]


def _checked(leaf: GraphQLLeafType) -> Callable[[Any], Any]:
    serialize = leaf.serialize

    def complete(value: Any) -> Any:
        out = serialize(value)
        if out is None or out is Undefined:
            raise _Fallback
        return out

    return complete
