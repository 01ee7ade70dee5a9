"""Lists of plain objects completed by a plan compiled once per (list field, request).

graphql-core completes every field of every row through its resolver machinery: a 50-message
page with 9 fields is ~450 resolver calls, ~40 % of a request's CPU. When every field selected
under a list is a plain attribute (no resolver, no arguments) of a scalar, enum or such plain
object, the result is only attribute reads and scalar serialisation. We compile that into a
small plan per list field and run it per row; anything else (a resolver such as `sources`, an
argument, a null where the schema says non-null, a serialiser error) falls back to graphql-core's
own path, which then produces the usual result or error. The fallback makes the fast path an
optimisation with no behaviour of its own; tests run every trusted document both ways.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any

from graphql import (
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLID,
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
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from app.api.shared_events import share_key, shared

Plan = Callable[[Any], Any]


class _Fallback(Exception):
    pass


class _NoPlan(Exception):
    pass


def _leaf(leaf: GraphQLLeafType, non_null: bool) -> Plan:
    serialize = leaf.serialize
    if isinstance(leaf, GraphQLEnumType):
        # Enum values are hashable: one dict lookup instead of Strawberry's coercion per value.
        names = {v.value: name for name, v in leaf.values.items()}

        def complete_enum(value: Any) -> Any:
            if value is None:
                if non_null:
                    raise _Fallback
                return None
            name = names.get(value)
            if name is None:
                raise _Fallback
            return name

        return complete_enum

    def complete(value: Any) -> Any:
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
    def complete(value: Any) -> Any:
        if value is None:
            if non_null:
                raise _Fallback
            return None
        if isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
            raise _Fallback
        return [item(v) for v in value]

    return complete


def _nullable(plan: Plan, non_null: bool) -> Plan:
    def complete(value: Any) -> Any:
        if value is None:
            if non_null:
                raise _Fallback
            return None
        return plan(value)

    return complete


_SHARED_PLANS: dict[Any, tuple[Any, Plan | None]] = {}
_SHARED_PLANS_MAX = 2048


class FastListExecutionContext(StrawberryGraphQLCoreExecutionContext):
    ENABLED = True

    def complete_iterable_value(
        self,
        item_type: GraphQLOutputType,
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        if self.ENABLED and isinstance(result, list):
            plan = self._plan(item_type, field_details_list)
            if plan is not None:
                try:
                    return [plan(row) for row in result]
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
            key, self.__dict__["_payload"], lambda: super(FastListExecutionContext, self).execute_operation(serially)
        )

    def _plan(self, item_type: GraphQLOutputType, field_details_list: Any) -> Plan | None:
        """The compiled plan of this list field. Plans are shared across requests, keyed by the
        field nodes of the (cached) parsed document, unless directives make the selection
        depend on variables; then they live for this request only."""
        nodes = tuple(fd.node for fd in field_details_list)
        key = (self.schema, item_type, tuple(map(id, nodes)))
        shared = self._shareable()
        cache = _SHARED_PLANS if shared else self.__dict__.setdefault("_fast_plans", {})
        entry = cache.get(key)
        if entry is not None:
            return entry[1]
        try:
            plan: Plan | None = self._compile(item_type, field_details_list)
        except _NoPlan:
            plan = None
        cache[key] = (nodes, plan)  # the nodes stay referenced, so their ids cannot be reused
        if shared and len(cache) > _SHARED_PLANS_MAX:
            cache.pop(next(iter(cache)))
        return plan

    def _shareable(self) -> bool:
        cached = self.__dict__.get("_plans_shareable")
        if cached is None:
            location = self.operation.loc
            cached = location is not None and "@" not in location.source.body
            self.__dict__["_plans_shareable"] = cached
        return bool(cached)

    def _compile(self, type_: GraphQLOutputType, field_details_list: Any) -> Plan:
        non_null = isinstance(type_, GraphQLNonNull)
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        if isinstance(inner, GraphQLList):
            return _list(self._compile(inner.of_type, field_details_list), non_null)
        if is_leaf_type(inner):
            return _leaf(inner, non_null)
        if not isinstance(inner, GraphQLObjectType):
            raise _NoPlan  # interfaces and unions resolve their type at run time
        return _nullable(self._compile_object(inner, field_details_list), non_null)

    def _compile_object(self, object_type: GraphQLObjectType, field_details_list: Any) -> Plan:
        grouped, deferred, _ = self.collect_subfields(object_type, field_details_list)
        if deferred:
            raise _NoPlan
        fields: list[tuple[str, str | None, GraphQLOutputType | None, Any]] = []
        for response_key, details in grouped.items():
            node = details[0].node
            name = node.name.value
            if name == "__typename":
                fields.append((response_key, None, None, object_type.name))
                continue
            field = object_type.fields[name]
            definition = field.extensions.get("strawberry-definition")
            if (
                node.arguments
                or definition is None
                or definition.base_resolver is not None
                or definition.extensions
                or getattr(definition, "permission_classes", None)
            ):
                raise _NoPlan
            fields.append((response_key, definition.python_name, field.type, details))
        return _generate(fields, self._compile)


def _generate(
    fields: list[tuple[str, str | None, GraphQLOutputType | None, Any]],
    compile_: Callable[[GraphQLOutputType, Any], Plan],
) -> Plan:
    """Generate one function per object plan: per-field calls cost more than the work they do.

    The common scalars are inlined with the same checks their serialisers make; anything
    unusual goes through the type's own serialiser, and anything wrong raises _Fallback."""
    names: dict[str, Any] = {"_Fallback": _Fallback, "UUID": uuid.UUID, "UTC": UTC}
    lines = ["def complete(row):", "    out = {}"]
    for i, (key, attribute, type_, details) in enumerate(fields):
        k = repr(key)
        if attribute is None:
            lines.append(f"    out[{k}] = {details!r}")
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
            lines.append(f"        out[{k}] = p{i}(v)")
            continue
        names[f"s{i}"] = _checked(inner)
        lines.append(f"        out[{k}] = {expr}")
    lines.append("    return out")
    exec("\n".join(lines), names)  # generated from the schema, never from input
    return names["complete"]  # type: ignore[no-any-return]


def _checked(leaf: GraphQLLeafType) -> Plan:
    serialize = leaf.serialize

    def complete(value: Any) -> Any:
        out = serialize(value)
        if out is None or out is Undefined:
            raise _Fallback
        return out

    return complete
