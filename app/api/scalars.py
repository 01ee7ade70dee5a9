"""The contract's scalars: DateTime (ISO-8601 with an offset; outputs UTC) and JSON.

Fields are annotated with `datetime` and `JSON`; the schema's scalar_map gives them these
definitions (SCALARS)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NewType

import strawberry


def _serialize_datetime(value: datetime) -> str:
    if value.tzinfo is UTC:  # what asyncpg returns (the session's TimeZone is UTC)
        return value.isoformat()
    if value.tzinfo is None:
        raise ValueError("naive datetime reached the API")
    return value.astimezone(UTC).isoformat()


def _parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid DateTime {value!r}: use ISO-8601, e.g. 2026-11-23T13:07:00+00:00") from None
    if parsed.tzinfo is None:
        raise ValueError(f"DateTime {value!r} has no offset: add one, e.g. +00:00 or Z")
    try:
        # Stored and compared in UTC: an instant outside year 1..9999 once converted cannot be.
        parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"DateTime {value!r} is out of range once converted to UTC") from None
    return parsed


def _identity(value: Any) -> Any:
    return value


JSON = NewType("JSON", object)

SCALARS: dict[object, Any] = {
    datetime: strawberry.scalar(
        name="DateTime",
        description="ISO-8601 date-time with an offset, e.g. 2026-11-23T13:07:00+00:00. Outputs are UTC.",
        serialize=_serialize_datetime,
        parse_value=_parse_datetime,
    ),
    JSON: strawberry.scalar(name="JSON", description="Any JSON value.", serialize=_identity, parse_value=_identity),
}
