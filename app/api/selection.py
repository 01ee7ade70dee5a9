"""What the current field's selection asks for, so resolvers compute nothing nobody selected.

Read from the field's AST nodes and the document's fragments, which both the ordinary executor
(graphql-core's resolve info) and the engine (app/api/engine) hand to a resolver: asking for
Strawberry's `selected_fields` would make the engine give the request back to the ordinary path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from graphql import FieldNode, FragmentDefinitionNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode

COUNT_FIELDS = frozenset({"totalCount", "totalCountCapped"})


def _fields(
    selection_set: SelectionSetNode | None, fragments: Mapping[str, FragmentDefinitionNode]
) -> Iterable[FieldNode]:
    if selection_set is None:
        return
    for node in selection_set.selections:
        if isinstance(node, FieldNode):
            yield node
        elif isinstance(node, InlineFragmentNode):
            yield from _fields(node.selection_set, fragments)
        elif isinstance(node, FragmentSpreadNode):
            fragment = fragments.get(node.name.value)
            if fragment is not None:
                yield from _fields(fragment.selection_set, fragments)


def _roots(info: Any) -> tuple[list[FieldNode], Mapping[str, FragmentDefinitionNode]]:
    raw = getattr(info, "_raw_info", info)  # Strawberry's Info wraps graphql-core's; the engine's is flat
    return list(raw.field_nodes), raw.fragments


def selects(info: Any, names: frozenset[str]) -> bool:
    """True when the resolved field's selection (fragments included) names any of `names`.
    @include/@skip are not evaluated here: a field under a directive counts as selected (computing
    too much is safe; computing too little is not)."""
    nodes, fragments = _roots(info)
    return any(child.name.value in names for node in nodes for child in _fields(node.selection_set, fragments))


def selects_path(info: Any, path: tuple[str, ...]) -> bool:
    """True when the selection reaches `path` (e.g. edges → node → snippet), through fragments."""
    level, fragments = _roots(info)
    for name in path:
        level = [
            child for node in level for child in _fields(node.selection_set, fragments) if child.name.value == name
        ]
        if not level:
            return False
    return True
