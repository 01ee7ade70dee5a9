"""Opaque keyset cursors. Clients must not parse them; we may change their insides."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from app.errors import BadUserInput


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str, kind: str) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadUserInput("invalid cursor", field="cursor") from None
    parts = raw.split("|")
    if parts[0] != kind:
        raise BadUserInput("invalid cursor: it belongs to another list", field="cursor")
    return parts[1:]


def seq_cursor(seq: int) -> str:
    return _encode(f"s|{seq}")


def parse_seq_cursor(cursor: str) -> int:
    parts = _decode(cursor, "s")
    try:
        (value,) = parts
        return int(value)
    except ValueError:
        raise BadUserInput("invalid cursor", field="cursor") from None


def conversation_cursor(at: datetime, id: uuid.UUID) -> str:
    return _encode(f"c|{at.isoformat()}|{id}")


def parse_conversation_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    parts = _decode(cursor, "c")
    try:
        at, id = parts
        return datetime.fromisoformat(at), uuid.UUID(id)
    except ValueError:
        raise BadUserInput("invalid cursor", field="cursor") from None


def search_cursor(at: datetime, conversation_id: uuid.UUID, seq: int) -> str:
    return _encode(f"m|{at.isoformat()}|{conversation_id}|{seq}")


def parse_search_cursor(cursor: str) -> tuple[datetime, uuid.UUID, int]:
    parts = _decode(cursor, "m")
    try:
        at, cid, seq = parts
        return datetime.fromisoformat(at), uuid.UUID(cid), int(seq)
    except ValueError:
        raise BadUserInput("invalid cursor", field="cursor") from None
