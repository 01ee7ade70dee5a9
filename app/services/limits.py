"""Input limits and the checks that enforce them before anything is written."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import BadUserInput, PayloadTooLarge
from app.settings import Settings

TENANT_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Limits:
    max_content_bytes: int = 256 * 1024
    max_metadata_bytes: int = 64 * 1024
    max_tags: int = 50
    max_tag_length: int = 100
    max_id_length: int = 200
    max_title_length: int = 1000
    max_state_key_length: int = 200
    max_state_value_bytes: int = 256 * 1024
    max_sources: int = 50
    max_batch_messages: int = 100
    max_page_size: int = 100
    max_json_depth: int = 32
    # totalCount is exact up to these caps and says "at least the cap" beyond (totalCountCapped).
    list_count_cap: int = 100_000
    search_count_cap: int = 100

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(
            max_content_bytes=s.max_content_bytes,
            max_metadata_bytes=s.max_metadata_bytes,
            max_tags=s.max_tags,
            max_tag_length=s.max_tag_length,
            max_id_length=s.max_id_length,
            max_state_key_length=s.max_state_key_length,
            max_state_value_bytes=s.max_state_value_bytes,
            max_sources=s.max_sources,
            max_batch_messages=s.max_batch_messages,
            max_page_size=s.max_page_size,
            max_json_depth=s.max_json_depth,
            list_count_cap=s.list_count_cap,
            search_count_cap=s.search_count_cap,
        )


DEFAULT_LIMITS = Limits()


def tenant_id(value: str) -> str:
    if not isinstance(value, str) or not TENANT_ID_RE.match(value):
        raise BadUserInput("tenant id must be 1-64 characters of letters, digits, '-', '_', '.', ':'", field="tenantId")
    return value


def text(value: str | None, field: str, max_length: int, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise BadUserInput(f"{field} is required", field=field)
        return None
    if not isinstance(value, str):
        raise BadUserInput(f"{field} must be a string", field=field)
    if required and not value:
        raise BadUserInput(f"{field} must not be empty", field=field)
    if len(value) > max_length:
        raise BadUserInput(f"{field} is longer than {max_length} characters", field=field)
    if "\x00" in value:
        raise BadUserInput(f"{field} contains a NUL character", field=field)
    return value


def content(value: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise BadUserInput("content must be a string", field="content")
    # Cheap bound first: a UTF-8 character is at most 4 bytes.
    if len(value) * 4 > limits.max_content_bytes and len(value.encode()) > limits.max_content_bytes:
        raise PayloadTooLarge(
            f"content is larger than {limits.max_content_bytes} bytes",
            field="content",
            limit=limits.max_content_bytes,
        )
    if "\x00" in value:
        raise BadUserInput("content contains a NUL character", field="content")
    return value


def json_depth(value: Any, field: str, max_depth: int) -> None:
    """Refuse JSON nested more than `max_depth` containers deep, or holding NaN/Infinity.

    Responses are encoded with orjson, which gives up past 255 levels: a value stored deeper
    could never be read back. The bound leaves room for the response's own nesting around it."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            if isinstance(node, float) and not math.isfinite(node):
                raise BadUserInput(f"{field} is not valid JSON: {node} is not a JSON number", field=field)
            continue
        if depth + 1 > max_depth:
            raise BadUserInput(f"{field} is nested deeper than {max_depth} levels", field=field, limit=max_depth)
        stack.extend((child, depth + 1) for child in children)


def json_value(value: Any, field: str, max_bytes: int, max_depth: int = DEFAULT_LIMITS.max_json_depth) -> str:
    """Check depth, then serialise once with the responses' encoder (orjson: what it cannot
    encode, e.g. an integer over 64 bits, could not be read back) to check size and storability;
    returns the JSON text."""
    json_depth(value, field, max_depth)
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise BadUserInput(f"{field} is not valid JSON: {exc}", field=field) from None
    if len(encoded) > max_bytes:
        raise PayloadTooLarge(f"{field} is larger than {max_bytes} bytes", field=field, limit=max_bytes)
    if b"\\u0000" in encoded:
        raise BadUserInput(f"{field} contains a NUL character, which Postgres cannot store", field=field)
    return encoded.decode()


def metadata(value: Any, limits: Limits, field: str = "metadata") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadUserInput(f"{field} must be a JSON object", field=field)
    json_value(value, field, limits.max_metadata_bytes, limits.max_json_depth)
    return value


def tags(value: list[str] | None, limits: Limits) -> list[str] | None:
    if value is None:
        return None
    if len(value) > limits.max_tags:
        raise BadUserInput(f"at most {limits.max_tags} tags", field="tags")
    seen: list[str] = []
    for tag in value:
        text(tag, "tags", limits.max_tag_length, required=True)
        if tag not in seen:
            seen.append(tag)
    return seen


def page_size(value: int | None, limits: Limits, field: str) -> int | None:
    if value is None:
        return None
    if value < 0 or value > limits.max_page_size:
        raise BadUserInput(f"{field} must be between 0 and {limits.max_page_size}", field=field)
    return value
