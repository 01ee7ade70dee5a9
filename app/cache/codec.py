"""What the cache stores: messages, conversation headers and state entries as bytes, and back."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from app.models import Conversation, Message, Role, Source, StateEntry, Status

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ROLES = {r.value: r for r in Role}
_STATUSES = {s.value: s for s in Status}


# --------------------------------------------------------------------------------------------------
# Encoding: orjson; messages as arrays (a third of the bytes of objects, and faster to decode)
# --------------------------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):  # asyncpg's UUID subclass: orjson takes exact types only
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)


def encode_message(m: Message) -> bytes:
    sources = (
        None
        if m.sources is None
        else [[s.document_id, s.chunk_id, s.title, s.uri, s.score, s.snippet] for s in m.sources]
    )
    return _dumps(
        [
            m.seq,
            m.id,
            m.client_message_id,
            m.role,
            m.content,
            m.name,
            m.tool_call_id,
            m.tool_calls,
            m.token_count,
            m.metadata,
            m.execution,
            m.created_at,
            sources,
        ]
    )


def _message(tenant_id: str, conversation_id: uuid.UUID, a: list[Any]) -> Message:
    sources = a[12]
    return Message(
        tenant_id,
        conversation_id,
        a[0],
        uuid.UUID(a[1]),
        a[2],
        _ROLES[a[3]],
        a[4],
        a[5],
        a[6],
        a[7],
        a[8],
        a[9],
        a[10],
        datetime.fromisoformat(a[11]),
        None if sources is None else [Source(*s) for s in sources],
    )


def decode_messages(tenant_id: str, conversation_id: uuid.UUID, raw: Sequence[bytes]) -> list[Message]:
    if not raw:
        return []
    arrays = orjson.loads(b"[" + b",".join(raw) + b"]")
    return [_message(tenant_id, conversation_id, a) for a in arrays]


def encode_conversation(c: Conversation) -> bytes:
    return _dumps(c)


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def decode_conversation(raw: bytes) -> Conversation:
    return conversation_from_dict(orjson.loads(raw))


def conversation_from_dict(d: dict[str, Any]) -> Conversation:
    """A Conversation from its orjson form (the cache's header and the live events' payload)."""
    return Conversation(
        tenant_id=d["tenant_id"],
        id=uuid.UUID(d["id"]),
        session_id=d["session_id"],
        user_id=d["user_id"],
        agent_id=d["agent_id"],
        channel=d["channel"],
        title=d["title"],
        status=_STATUSES[d["status"]],
        tags=d["tags"],
        metadata=d["metadata"],
        created_at=datetime.fromisoformat(d["created_at"]),
        updated_at=datetime.fromisoformat(d["updated_at"]),
        last_message_at=_dt(d["last_message_at"]),
        last_activity_at=datetime.fromisoformat(d["last_activity_at"]),
        closed_at=_dt(d["closed_at"]),
        close_reason=d["close_reason"],
        message_count=d["message_count"],
        token_count=d["token_count"],
        last_seq=d["last_seq"],
    )


def _micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_state(entry: StateEntry) -> bytes:
    return f"{entry.version}:{_micros(entry.updated_at)}:".encode() + _dumps(entry.value)


def decode_state(conversation_id: uuid.UUID, key: bytes, raw: bytes) -> StateEntry:
    version, micros, value = raw.split(b":", 2)
    return StateEntry(
        conversation_id=conversation_id,
        key=key.decode(),
        value=orjson.loads(value),
        version=int(version),
        updated_at=_EPOCH + timedelta(microseconds=int(micros)),
    )
