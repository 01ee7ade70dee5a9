"""What the cache stores: the hot form of app/codec.py (versioned; UnknownFormat is a miss).

Kept as the cache's import point; every call goes to the process' codec at call time."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from app import codec
from app.codec import UnknownFormat, _micros
from app.models import Conversation, Message, StateEntry

__all__ = [
    "UnknownFormat",
    "_micros",
    "decode_conversation",
    "decode_messages",
    "decode_state",
    "encode_conversation",
    "encode_message",
    "encode_state",
]


def encode_message(m: Message) -> bytes:
    return codec.encode_message(m)


def decode_messages(tenant_id: str, conversation_id: uuid.UUID, raw: Sequence[bytes]) -> list[Message]:
    return codec.decode_messages(tenant_id, conversation_id, raw)


def encode_conversation(c: Conversation) -> bytes:
    return codec.encode_conversation(c)


def decode_conversation(raw: bytes) -> Conversation:
    return codec.decode_conversation(raw)


def encode_state(entry: StateEntry) -> bytes:
    return codec.encode_state(entry)


def decode_state(conversation_id: uuid.UUID, key: bytes, raw: bytes) -> StateEntry:
    return codec.decode_state(conversation_id, key, raw)
