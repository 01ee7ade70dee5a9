"""A clientMessageId is bound to the message it was first written with.

A retry with the same key must carry the same payload; a different payload is the client's
mistake (two messages under one key), and answering with the original would hide it. The
comparison runs only on the replay branch, against the stored message the replay returns
anyway, so a fresh append pays nothing for it (docs/decisions.md, "Idempotency keys bind
to their payload").

Equality is JSON-value equality: object key order does not matter, numbers compare by value
(jsonb keeps decimal digits, so a float written as 1e300 reads back as an int of the same
value), but a boolean is never a number and a string never equals a number.
"""

from __future__ import annotations

from typing import Any

from app import codec
from app.errors import IdempotencyKeyReused
from app.models import Message, NewMessage, Source

#: The payload fields, in the order reported (GraphQL names: clients see these).
PAYLOAD_FIELDS = ("role", "content", "name", "toolCallId", "toolCalls", "metadata", "sources", "execution")


def same_json(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        try:
            return float(a) == float(b)
        except OverflowError:  # an int beyond any float cannot equal a float
            return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


#: NewMessage fields compared by name below or not part of the payload; any other field of the record
#: (a new optional one) is compared as it is, and reported under its camelCase name.
_EXTRA = tuple(
    codec.extra_fields(
        NewMessage,
        ("role", "content", "name", "tool_call_id", "tool_calls", "metadata", "sources", "execution",
         "client_message_id", "token_count"),
    )
)  # fmt: skip


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _source(s: Source) -> list[Any]:
    return [s.document_id, s.chunk_id, s.title, s.uri, s.score, s.snippet]


def differences(sent: NewMessage, stored: Message) -> list[str]:
    """The payload fields (GraphQL names) where `sent` differs from the `stored` original."""
    pairs: tuple[tuple[str, Any, Any], ...] = (
        ("role", sent.role.value, stored.role.value),
        ("content", sent.content, stored.content),
        ("name", sent.name, stored.name),
        ("toolCallId", sent.tool_call_id, stored.tool_call_id),
        ("toolCalls", sent.tool_calls, stored.tool_calls),
        # A missing metadata is stored as {} and an empty execution reads as none.
        ("metadata", sent.metadata or {}, stored.metadata or {}),
        ("sources", [_source(s) for s in sent.sources], [_source(s) for s in stored.sources or []]),
        ("execution", sent.execution or None, stored.execution or None),
    )
    extra = tuple((_camel(n), getattr(sent, n), getattr(stored, n, None)) for n in _EXTRA)
    return [name for name, a, b in pairs + extra if not same_json(a, b)]


def check_replay(sent: NewMessage, stored: Message) -> None:
    """IDEMPOTENCY_KEY_REUSED unless `sent` is the payload `stored` was written with.

    The details name the key, where its original lives and which fields differ, never a
    stored value: the caller may hold only the write scope."""
    differing = differences(sent, stored)
    if differing:
        raise IdempotencyKeyReused(
            f"clientMessageId {sent.client_message_id!r} was already used for a different message "
            f"({', '.join(differing)} differ): use a new clientMessageId for a new message",
            clientMessageId=sent.client_message_id,
            conversationId=str(stored.conversation_id),
            seq=stored.seq,
            fields=differing,
        )
