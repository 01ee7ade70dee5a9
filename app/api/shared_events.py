"""One execution per event and document, shared by every local subscriber.

The hub hands the same event object to every subscriber of a channel in this process, and
each subscription then executes its selection set on it. With a thousand subscribers on one
conversation running the same document (the orchestrator's), that is a thousand identical
executions. Instead the first subscriber executes and the others await its result: the key
is the payload object (kept referenced while cached, so its id cannot be reused), the
document text and operation, and the variables the selection set uses — not the root
field's own arguments (afterSeq differs per subscriber and does not change the result).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from graphql import FieldNode, OperationDefinitionNode, VariableNode, visit
from graphql.language import Visitor

from app import metrics

_RESULTS: OrderedDict[tuple[Any, ...], tuple[Any, asyncio.Future[Any]]] = OrderedDict()
_MAX = 4096
_SELECTION_VARIABLES: dict[int, tuple[OperationDefinitionNode, tuple[str, ...]]] = {}


class _Variables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.add(node.name.value)


def selection_variables(operation: OperationDefinitionNode) -> tuple[str, ...]:
    """Variables used below the root field (in nested arguments and directives)."""
    cached = _SELECTION_VARIABLES.get(id(operation))
    if cached is not None and cached[0] is operation:
        return cached[1]
    visitor = _Variables()
    for selection in operation.selection_set.selections:
        if isinstance(selection, FieldNode) and selection.selection_set is not None:
            visit(selection.selection_set, visitor)
        elif not isinstance(selection, FieldNode):
            visit(selection, visitor)
    names = tuple(sorted(visitor.names))
    if len(_SELECTION_VARIABLES) > _MAX:
        _SELECTION_VARIABLES.clear()
    _SELECTION_VARIABLES[id(operation)] = (operation, names)
    return names


def share_key(payload: Any, operation: OperationDefinitionNode, variables: dict[str, Any]) -> tuple[Any, ...] | None:
    location = operation.loc
    if location is None or payload is None or isinstance(payload, str | int | float | bool):
        return None
    used = selection_variables(operation)
    try:
        values = tuple((name, repr(variables.get(name))) for name in used)
    except Exception:
        return None
    return (id(payload), location.source.body, operation.name.value if operation.name else None, values)


async def shared(key: tuple[Any, ...], payload: Any, execute: Any) -> Any:
    """The result for `key`: computed once by the first caller, awaited by the rest."""
    entry = _RESULTS.get(key)
    if entry is not None and entry[0] is payload:
        metrics.SHARED_EVENT_RESULTS.inc()
        return await asyncio.shield(entry[1])
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    _RESULTS[key] = (payload, future)
    if len(_RESULTS) > _MAX:
        _RESULTS.popitem(last=False)
    metrics.EVENT_EXECUTIONS.inc()
    try:
        result = execute()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
    except BaseException as exc:
        future.set_exception(exc)
        _RESULTS.pop(key, None)
        future.exception()  # retrieved: nobody else may be waiting
        raise
    future.set_result(result)
    return result
