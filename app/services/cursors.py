"""Opaque keyset cursors. Clients must not parse them; we may change their insides."""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from datetime import UTC, datetime

from app.errors import BadUserInput

#: Seqs are Postgres integers: a crafted cursor beyond them must not reach a statement.
_MAX_SEQ = 2**31 - 1


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str, kind: str) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadUserInput("invalid cursor", field="cursor") from None
    if "\x00" in raw:
        raise BadUserInput("invalid cursor", field="cursor")
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
        return _seq(value)
    except ValueError:
        raise BadUserInput("invalid cursor", field="cursor") from None


def _seq(value: str) -> int:
    seq = int(value)
    if not 0 <= seq <= _MAX_SEQ:
        raise ValueError("seq out of range")
    return seq


def _instant(value: str) -> datetime:
    """An aware datetime that converts to UTC (a naive or overflowing one is a crafted cursor)."""
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError("cursor time without an offset")
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise ValueError("cursor time out of range") from None


def conversation_cursor(at: datetime, id: uuid.UUID) -> str:
    return _encode(f"c|{at.isoformat()}|{id}")


def parse_conversation_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    parts = _decode(cursor, "c")
    try:
        at, id = parts
        return _instant(at), uuid.UUID(id)
    except ValueError:
        raise BadUserInput("invalid cursor", field="cursor") from None


def search_cursor(at: datetime, conversation_id: uuid.UUID, seq: int) -> str:
    return _encode(f"m|{at.isoformat()}|{conversation_id}|{seq}")


def parse_search_cursor(cursor: str) -> tuple[datetime, uuid.UUID, int]:
    parts = _decode(cursor, "m")
    try:
        at, cid, seq = parts
        return _instant(at), uuid.UUID(cid), _seq(seq)
    except ValueError:
        raise BadUserInput("invalid cursor", field="cursor") from None


def audit_cursor(at: datetime, id: uuid.UUID) -> str:
    return _encode(f"a|{at.isoformat()}|{id}")


def parse_audit_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    parts = _decode(cursor, "a")
    try:
        at, id = parts
        return _instant(at), uuid.UUID(id)
    except ValueError:
        raise BadUserInput("invalid cursor", field="cursor") from None


def hit_cursor(score: float, at: datetime, conversation_id: uuid.UUID, seq: int) -> str:
    # repr keeps every bit of the float, so the keyset comparison lands exactly on this hit.
    return _encode(f"h|{score!r}|{at.isoformat()}|{conversation_id}|{seq}")


def parse_hit_cursor(cursor: str) -> tuple[float, datetime, uuid.UUID, int]:
    parts = _decode(cursor, "h")
    try:
        score, at, cid, seq = parts
        value = float(score)
        if not math.isfinite(value):
            raise ValueError("not a finite score")
        return value, _instant(at), uuid.UUID(cid), _seq(seq)
    except ValueError:
        raise BadUserInput("invalid cursor", field="cursor") from None
