"""What a mutation may answer a caller without the `read` scope.

The rule (docs/decisions.md, "Write-only keys read nothing back"): without `read`, a
mutation's selection may hold only what the caller sent in this request and what the write
itself decided (ids, seqs, versions, counters, status, timestamps, created flags). Anything
else (stored values the caller did not send, such as the title or metadata a no-op
updateConversation returns, and every nested read: messages, state, context windows, CRM) is
FORBIDDEN, checked on the document before the write runs, so a refused mutation writes
nothing. A replayed addMessage may return the whole message: a replay is only accepted for the
very payload that was stored (app/services/idempotency), which the caller therefore sent.

Checked on the syntax tree (fragments expanded; @skip/@include are not evaluated, so a field
behind them counts as selected), which both the executor and app/api/engine/operations.py provide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from graphql import FieldNode, FragmentDefinitionNode, FragmentSpreadNode, InlineFragmentNode, SelectionNode

from app.errors import Forbidden
from app.services.tenants import Scope

#: A field allowed with everything below it, or the rules for its sub-fields.
Rule = bool | Mapping[str, "Rule"]

EVERYTHING: Rule = True


def fields(*names: str) -> dict[str, Rule]:
    return dict.fromkeys(names, EVERYTHING)


#: Conversation fields a write decides or that identify it (never content a client wrote).
CONVERSATION_RECEIPT = fields(
    "id",
    "sessionId",
    "status",
    "createdAt",
    "updatedAt",
    "lastMessageAt",
    "closedAt",
    "messageCount",
    "tokenCount",
    "lastSeq",
)
#: createConversation answers a conversation made only of its input (a taken sessionId is CONFLICT).
CREATED_CONVERSATION = CONVERSATION_RECEIPT | fields(
    "userId", "agentId", "channel", "title", "tags", "metadata", "closeReason"
)
ADD_MESSAGE = fields("created", "message") | {"conversation": CONVERSATION_RECEIPT}
ADD_MESSAGES = fields("createdCount", "messages") | {"conversation": CONVERSATION_RECEIPT}
SET_STATE = fields("key", "value", "version", "updatedAt")
#: lastError is the CRM's answer to an earlier delivery, not something this caller sent.
CRM_SYNC = fields("status", "attempts", "deliveredAt", "updatedAt")


def can_read(info: Any) -> bool:
    principal = info.context.principal
    return principal is not None and (Scope.READ in principal.scopes or Scope.ADMIN in principal.scopes)


def require_selection(info: Any, allowed: Mapping[str, Rule]) -> None:
    """FORBIDDEN when a caller without `read` selects more of this mutation's result than `allowed`."""
    if can_read(info):
        return
    field_nodes, fragments = _tree(info)
    refused: list[str] = []
    for node in field_nodes:
        if node.selection_set is not None:
            _walk(node.selection_set.selections, allowed, fragments, "", refused, set())
    if refused:
        shown = ", ".join(sorted(set(refused))[:10])
        raise Forbidden(
            f"without the read scope a mutation answers only what it wrote; selecting {shown} needs read",
            fields=sorted(set(refused))[:10],
        )


def selected(info: Any) -> set[str]:
    """The names of the fields selected directly under this one (fragments expanded)."""
    field_nodes, fragments = _tree(info)
    names: list[str] = []
    for node in field_nodes:
        if node.selection_set is not None:
            _walk(node.selection_set.selections, {}, fragments, "", names, set())
    return set(names)


def _tree(info: Any) -> tuple[Sequence[FieldNode], Mapping[str, FragmentDefinitionNode]]:
    raw = getattr(info, "_raw_info", None)  # Strawberry's Info wraps graphql-core's
    source = raw if raw is not None else info  # the engine's own info (app/api/engine/operations.py)
    return source.field_nodes, source.fragments


def _walk(
    selections: Sequence[SelectionNode],
    allowed: Mapping[str, Rule],
    fragments: Mapping[str, FragmentDefinitionNode],
    prefix: str,
    refused: list[str],
    seen: set[str],
) -> None:
    for selection in selections:
        if isinstance(selection, FieldNode):
            name = selection.name.value
            if name == "__typename":
                continue
            rule = allowed.get(name)
            if rule is None or rule is False:
                refused.append(prefix + name)
            elif isinstance(rule, Mapping) and selection.selection_set is not None:
                _walk(selection.selection_set.selections, rule, fragments, f"{prefix}{name}.", refused, seen)
        elif isinstance(selection, InlineFragmentNode):
            _walk(selection.selection_set.selections, allowed, fragments, prefix, refused, seen)
        elif isinstance(selection, FragmentSpreadNode):
            key = prefix + selection.name.value
            fragment = fragments.get(selection.name.value)
            if fragment is None:
                refused.append(prefix + "..." + selection.name.value)
            elif key not in seen:  # validation forbids cycles; this only saves repeated work
                seen.add(key)
                _walk(fragment.selection_set.selections, allowed, fragments, prefix, refused, seen)
