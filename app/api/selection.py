"""What the current field's selection asks for, so resolvers compute nothing nobody selected."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField

COUNT_FIELDS = frozenset({"totalCount", "totalCountCapped"})


def _names(selections: Iterable[Any]) -> Iterable[str]:
    for node in selections:
        if isinstance(node, SelectedField):
            yield node.name
        elif isinstance(node, FragmentSpread | InlineFragment):
            yield from _names(node.selections)


def selects(info: Any, names: frozenset[str]) -> bool:
    """True when the resolved field's selection (fragments included) names any of `names`.
    @include/@skip are not evaluated here: a field under a directive counts as selected (computing
    too much is safe; computing too little is not)."""
    return any(name in names for field in info.selected_fields for name in _names(field.selections))


def _fields(selections: Iterable[Any]) -> Iterable[SelectedField]:
    for node in selections:
        if isinstance(node, SelectedField):
            yield node
        elif isinstance(node, FragmentSpread | InlineFragment):
            yield from _fields(node.selections)


def selects_path(info: Any, path: tuple[str, ...]) -> bool:
    """True when the selection reaches `path` (e.g. edges → node → snippet), through fragments."""
    level: list[SelectedField] = list(info.selected_fields)
    for name in path:
        level = [child for field in level for child in _fields(field.selections) if child.name == name]
        if not level:
            return False
    return True
