"""One execution per event and document, shared by every local subscriber.

The hub hands the same event object to every subscriber of a channel in this process, and
each subscription then executes its selection set on it. With a thousand subscribers on one
conversation running the same document (the orchestrator's), that is a thousand identical
executions. Instead the first subscriber executes and the others await its result: the key
is the payload object's id, the document text and operation, and the variables the selection
set uses — not the root field's own arguments (afterSeq differs per subscriber and does not
change the result).

An entry lives only as long as its payload: it holds the payload by weak reference, and the
payload's death drops it (only a holder of the payload can ask for its result, and the id
cannot be reused while the entry is there). Holding payloads strongly, as before the soak
(docs/benchmarks.md "Soak"), kept the last 4,096 events and their results alive long after
every subscriber had sent them: memory growing for minutes, and a count bound that let large
messages hold gigabytes. The count bound stays only as a backstop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from typing import Any

from graphql import FieldNode, OperationDefinitionNode, VariableNode, visit
from graphql.language import Visitor

from app import metrics

_RESULTS: OrderedDict[tuple[Any, ...], tuple[weakref.ref[Any], asyncio.Future[Any]]] = OrderedDict()
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
    try:
        weakref.ref(payload)
    except TypeError:
        return None  # an entry could not be released with its payload: not shared
    used = selection_variables(operation)
    try:
        values = tuple((name, repr(variables.get(name))) for name in used)
    except Exception:
        return None
    return (id(payload), location.source.body, operation.name.value if operation.name else None, values)


async def shared(key: tuple[Any, ...], payload: Any, execute: Any) -> Any:
    """The result for `key`: computed once by the first caller, awaited by the rest."""
    entry = _RESULTS.get(key)
    if entry is not None and entry[0]() is payload:
        metrics.SHARED_EVENT_RESULTS.inc()
        return await asyncio.shield(entry[1])
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    _RESULTS[key] = (weakref.ref(payload, _releaser(key)), future)
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
    if getattr(result, "errors", None):
        # Errors keep their tracebacks, whose frames can hold the payload: the entry would keep its
        # own payload alive. Subscribers already waiting have the future; later ones execute.
        _drop(key, future)
    return result


def _drop(key: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
    entry = _RESULTS.get(key)
    if entry is not None and entry[1] is future:
        del _RESULTS[key]


def _releaser(key: tuple[Any, ...]) -> Any:
    """The weak reference's callback: drop the entry when its payload dies. It holds the key
    (ids and text), never the payload."""

    def release(ref: weakref.ref[Any]) -> None:
        entry = _RESULTS.get(key)
        if entry is not None and entry[0] is ref:
            del _RESULTS[key]

    return release
