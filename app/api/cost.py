"""What a query may cost, computed from the validated document before anything runs.

The unit is an object the response may hold (Shopify's model): each selected object or list
item counts 1, scalars count 0. A connection's `edges`/`nodes` hold `first`/`last` items (or the
field's default page size), so nested connections multiply; a plain list of objects counts as
UNPAGED_LIST_SIZE items. Fragments are expanded where they are spread and every alias counts on
its own, so `a0..a29: conversations(first: 100) {...}` costs thirty times one.

The document's shape is compiled once into a small tree (`CostPlan`) whose only per-request
work is reading the page-size variables: the plan is cached beside the parsed document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)
from graphql.pyutils import Undefined

from app.errors import BadUserInput

#: A list of objects without page arguments (a message's sources, a conversation's states):
#: a typical size, not a bound; the services cap most of them (MAX_SOURCES).
UNPAGED_LIST_SIZE = 10
#: A connection read with neither `first` nor `last` and no schema default (history: last 50).
DEFAULT_PAGE_SIZE = 50
_PAGE_ARGUMENTS = ("first", "last")
_CONNECTION_LISTS = frozenset({"edges", "nodes"})

_Composite = GraphQLObjectType | GraphQLInterfaceType | GraphQLUnionType


class QueryTooCostly(BadUserInput):
    def __init__(self, cost: int, max_cost: int) -> None:
        super().__init__(
            f"the query's cost {cost} is over the limit of {max_cost}: ask for smaller pages or fewer fields",
            cost=cost,
            maxCost=max_cost,
        )


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str
    #: The variable definition's default, if it has one.
    default: int | None


#: A page size: a literal, or a variable with the default it falls back to.
_Size = int | _Variable
#: A paged field's sizes and the page size it takes when none is given.
_Page = tuple[tuple[_Size, ...], int]


@dataclass(frozen=True, slots=True)
class _Node:
    """multiplier × (fixed + the children's costs). The multiplier is the largest of `sizes`
    that is given (a literal, or a variable set or defaulted), else `fallback`."""

    sizes: tuple[_Size, ...]
    fixed: int
    children: tuple[_Node, ...]
    fallback: int = 1

    def cost(self, variables: dict[str, Any], cap: int) -> int:
        total = self.fixed + sum(child.cost(variables, cap) for child in self.children)
        return _multiplier(self.sizes, self.fallback, variables, cap) * total


def _multiplier(sizes: tuple[_Size, ...], fallback: int, variables: dict[str, Any], cap: int) -> int:
    given: int | None = None
    for size in sizes:
        value: int | None
        if isinstance(size, _Variable):
            raw = variables.get(size.name)
            value = raw if isinstance(raw, int) and not isinstance(raw, bool) else size.default
        else:
            value = size
        if value is not None:
            given = value if given is None else max(given, value)
    # Over the page limit the resolver refuses with its own message; count what could run.
    return min(max(fallback if given is None else given, 0), cap)


@dataclass(frozen=True, slots=True)
class CostPlan:
    root: _Node
    #: The cap for page sizes (MAX_PAGE_SIZE): anything bigger is refused by the resolvers.
    cap: int

    def cost(self, variables: dict[str, Any] | None) -> int:
        return self.root.cost(variables or {}, self.cap)


def plan(
    schema: GraphQLSchema, document: DocumentNode, operation_name: str | None, *, max_page_size: int
) -> CostPlan | None:
    """The cost plan of the named (or only) operation of a validated document; None when no
    single operation is selected (that request is refused elsewhere)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is None:
        if len(operations) != 1:
            return None
        operation = operations[0]
    else:
        named = [o for o in operations if o.name is not None and o.name.value == operation_name]
        if len(named) != 1:
            return None
        operation = named[0]
    root_type = schema.get_root_type(operation.operation)
    if root_type is None:
        return None
    defaults: dict[str, int] = {}
    for definition in operation.variable_definitions or ():
        if isinstance(definition.default_value, IntValueNode):
            defaults[definition.variable.name.value] = int(definition.default_value.value)
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    compiler = _Compiler(schema, fragments, defaults)
    fixed, children = compiler.selections(operation.selection_set, root_type, None)
    return CostPlan(root=_Node((1,), fixed, children), cap=max_page_size)


class _Compiler:
    def __init__(
        self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode], defaults: dict[str, int]
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.defaults = defaults

    def selections(
        self, selection_set: SelectionSetNode | None, parent: Any, page: _Page | None, depth: int = 0
    ) -> tuple[int, tuple[_Node, ...]]:
        """(the fixed cost, the variable-dependent parts) of a selection set on `parent`; `page`
        is the enclosing connection's page size, which its `edges`/`nodes` take."""
        if selection_set is None or depth > 64:  # validation bounds depth; this guards recursion
            return 0, ()
        fixed = 0
        children: list[_Node] = []
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                node = self.field(selection, parent, page, depth)
                if node is None:
                    continue
                if all(isinstance(s, int) for s in node.sizes) and not node.children:
                    fixed += _multiplier(node.sizes, node.fallback, {}, 1 << 62) * node.fixed
                else:
                    children.append(node)
                continue
            if isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition else parent
                inner_set = selection.selection_set
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments.get(selection.name.value)
                if fragment is None:
                    continue
                target = self.schema.get_type(fragment.type_condition.name.value)
                inner_set = fragment.selection_set
            else:
                continue
            # A fragment on another member of a union or interface is counted too: an upper bound.
            inner_fixed, inner_children = self.selections(inner_set, target or parent, page, depth + 1)
            fixed += inner_fixed
            children.extend(inner_children)
        return fixed, tuple(children)

    def field(self, node: FieldNode, parent: Any, page: _Page | None, depth: int) -> _Node | None:
        fields = getattr(parent, "fields", None)
        definition: GraphQLField | None = fields.get(node.name.value) if fields else None
        if definition is None:
            return None  # __typename, or a field of a type we cannot see (validation refused those)
        output = definition.type
        listed = False
        while isinstance(output, GraphQLNonNull | GraphQLList):
            listed = listed or isinstance(output, GraphQLList)
            output = output.of_type
        if not isinstance(output, _Composite):
            return None  # scalars and enums are free
        paged = self.page_sizes(node, definition)
        fallback = 1
        inner_page: _Page | None = None
        multiplier: tuple[_Size, ...] = (1,)
        if paged is not None and "edges" in getattr(output, "fields", {}):
            inner_page = paged  # a connection: its edges hold the page
        elif paged is not None:
            multiplier, fallback = paged
        elif listed and page is not None and node.name.value in _CONNECTION_LISTS:
            multiplier, fallback = page
        elif listed:
            multiplier = (UNPAGED_LIST_SIZE,)
        fixed, children = self.selections(node.selection_set, output, inner_page, depth + 1)
        return _Node(multiplier, 1 + fixed, children, fallback)

    def page_sizes(self, node: FieldNode, definition: GraphQLField) -> _Page | None:
        """The sizes a `first`/`last` field may be given, and its page size when none is."""
        if not any(name in definition.args for name in _PAGE_ARGUMENTS):
            return None
        given = {a.name.value: a.value for a in node.arguments or ()}
        sizes: list[_Size] = []
        for name in _PAGE_ARGUMENTS:
            value = given.get(name)
            if isinstance(value, IntValueNode):
                sizes.append(int(value.value))
            elif isinstance(value, VariableNode):
                sizes.append(_Variable(value.name.value, self.defaults.get(value.name.value)))
        defaults = [d for name in _PAGE_ARGUMENTS if (d := _schema_default(definition, name)) is not None]
        return tuple(sizes), max(defaults, default=DEFAULT_PAGE_SIZE)


def _schema_default(definition: GraphQLField, name: str) -> int | None:
    argument = definition.args.get(name)
    value = argument.default_value if argument is not None else Undefined
    return value if isinstance(value, int) and not isinstance(value, bool) else None
