"""Batch forms of field resolvers, for the engine (app/api/engine/).

`@batched(fn)` under `@strawberry.field` gives a resolver a batch form: `fn(parents, info,
**arguments)` returns one result per parent, in order, exactly what the resolver returns for
each. The engine calls it once per level instead of the resolver once per parent (a 50-message
page's `sources`: one call, one DataLoader `load_many`, instead of 50 coroutines); graphql-core's
executor keeps calling the resolver itself. The function is returned unchanged, so Strawberry
sees the same signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: app/api/engine/adapter.py reads it from the function Strawberry wraps.
BATCH_ATTRIBUTE = "__engine_batch__"


def batched(batch: Callable[..., Any]) -> Callable[[F], F]:
    def mark(resolver: F) -> F:
        setattr(resolver, BATCH_ATTRIBUTE, batch)
        return resolver

    return mark
