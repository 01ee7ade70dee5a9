"""The responses' JSON encoder: orjson, the encoder that also checks every JSON value at write
(app/services/limits.json_value), so whatever was accepted can be answered."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import date, datetime, time
from enum import Enum

import orjson

log = logging.getLogger("conversation_service.api")


def encode(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        # orjson stops at 255 levels. Only a value stored before MAX_JSON_DEPTH was enforced can
        # get here: still answer it with the standard encoder (slower, but it goes deeper)
        # rather than fail the whole response. Anything it cannot encode either propagates to
        # the error guard (app/api/error_guard.py), which answers INTERNAL as JSON.
        log.warning("response not encodable by orjson (%s); using the standard encoder", exc)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_plain).encode()


def _plain(value: object) -> object:
    """What orjson encodes natively and the standard encoder does not."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
