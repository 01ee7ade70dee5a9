"""asyncpg rows → service records. Kept beside the SQL that selects the columns."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from app import models
from app.models import Conversation, Message, Role, Source, StateEntry, Status

CONVERSATION_COLUMNS = (
    "tenant_id, id, session_id, user_id, agent_id, channel, title, status, tags, metadata, created_at, "
    "updated_at, last_message_at, last_activity_at, closed_at, close_reason, message_count, token_count, "
    "last_seq"
)

# --------------------------------------------------------------------------------------------------
# Message columns, derived from the record: a new field of app.models.Message needs no edit here
# --------------------------------------------------------------------------------------------------

#: Message fields that are not columns of `messages` (sources have their own table).
MESSAGE_NOT_COLUMNS = frozenset({"sources"})
#: Record field → column, where they differ (none today; e.g. {"metadata_": "metadata"}).
MESSAGE_RENAMED: dict[str, str] = {}
#: The columns of `messages` the write statements bind by hand (their `$n` appear in more than one
#: place, or get special values: seq, id, created_at). Every other column field of the records is
#: an *extra* column: written by generated SQL fragments appended to those statements.
MESSAGE_BOUND_COLUMNS = [
    "tenant_id",
    "conversation_id",
    "seq",
    "id",
    "client_message_id",
    "role",
    "content",
    "name",
    "tool_call_id",
    "tool_calls",
    "token_count",
    "metadata",
    "execution",
    "created_at",
]


@dataclass(frozen=True, slots=True)
class Column:
    """One record field stored in a column, as the generated SQL needs it."""

    field: str
    name: str
    #: The Postgres type an `unnest` array of it is declared with, e.g. "text"; JSON goes as text.
    sql_type: str
    json: bool


def _sql_type(hint: Any) -> tuple[str, bool]:
    """(Postgres type, sent as JSON text) for a field's type hint; anything unknown is JSON."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _sql_type(args[0]) if len(args) == 1 else ("text", True)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return "text", False
    for py, sql in ((bool, "boolean"), (int, "bigint"), (float, "float8"), (str, "text")):
        if hint is py:
            return sql, False
    if hint is uuid.UUID:
        return "uuid", False
    if hint is datetime:
        return "timestamptz", False
    return "text", True


def _columns(record: type) -> list[Column]:
    hints = typing.get_type_hints(record, vars(models))
    out = []
    for f in dataclasses.fields(record):
        if f.name in MESSAGE_NOT_COLUMNS:
            continue
        sql_type, is_json = _sql_type(hints[f.name])
        out.append(Column(f.name, MESSAGE_RENAMED.get(f.name, f.name), sql_type, is_json))
    return out


#: Every column of a Message, in the record's field order.
MESSAGE_FIELDS = _columns(Message)
MESSAGE_COLUMNS = ", ".join(c.name for c in MESSAGE_FIELDS)


def extra_columns(record: type) -> list[Column]:
    """The column fields of `record` (Message, NewMessage) that no statement binds by hand."""
    return [c for c in _columns(record) if c.name not in MESSAGE_BOUND_COLUMNS]


def extra_sql(record: type, first_param: int) -> tuple[str, str]:
    """(", col, …", ", $n, …") for an INSERT … SELECT of the extra columns, parameters from first_param
    on; ("", "") when there are none, so the statements are the hand-written ones."""
    extra = extra_columns(record)
    names = "".join(f", {c.name}" for c in extra)
    params = "".join(f", ${first_param + i}" for i in range(len(extra)))
    return names, params


def prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


_ROLES = {r.value: r for r in Role}
_STATUSES = {s.value: s for s in Status}


def conversation(row: asyncpg.Record | dict[str, Any]) -> Conversation:
    return Conversation(
        tenant_id=row["tenant_id"],
        id=row["id"],
        session_id=row["session_id"],
        user_id=row["user_id"],
        agent_id=row["agent_id"],
        channel=row["channel"],
        title=row["title"],
        status=_STATUSES[row["status"]],
        tags=list(row["tags"]),
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_message_at=row["last_message_at"],
        last_activity_at=row["last_activity_at"],
        closed_at=row["closed_at"],
        close_reason=row["close_reason"],
        message_count=row["message_count"],
        token_count=row["token_count"],
        last_seq=row["last_seq"],
    )


def _json_text(value: Any) -> str | None:
    # JSON goes as text in arrays: asyncpg would read a list value as a nested SQL array.
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class UnnestExtras:
    """The extra columns of an `INSERT … SELECT … FROM unnest(…) AS t(…)`: the SQL fragments, made
    once (empty strings when there are none), and per call the arrays to bind after the others."""

    def __init__(self, extra: list[Column], first_param: int) -> None:
        self.extra = extra
        self.columns = "".join(f", {c.name}" for c in extra)
        self.values = "".join(f", t.{c.name}::jsonb" if c.json else f", t.{c.name}" for c in extra)
        self.arrays = "".join(f", ${first_param + i}::{c.sql_type}[]" for i, c in enumerate(extra))
        self.aliases = self.columns

    def columns_of(self, rows: Sequence[Any], value: Callable[[Any, str], Any] = getattr) -> list[list[Any]]:
        return [[_json_text(value(r, c.field)) if c.json else value(r, c.field) for r in rows] for c in self.extra]


#: Conversions from the column's value to the field's, where it is not the value itself.
_MESSAGE_CONVERT: dict[str, str] = {"role": "_ROLES"}


def _message_reader() -> Callable[[asyncpg.Record | dict[str, Any]], Message]:
    """row → Message, written out at import as plain Python (it runs for every message read)."""
    args = []
    for c in MESSAGE_FIELDS:
        value = f"row[{c.name!r}]"
        args.append(
            f"{c.field}={_MESSAGE_CONVERT[c.field]}[{value}]" if c.field in _MESSAGE_CONVERT else f"{c.field}={value}"
        )
    source = "def message(row):\n    return Message(" + ", ".join(args) + ")\n"
    namespace: dict[str, Any] = {"Message": Message, "_ROLES": _ROLES}
    exec(compile(source, "<db.repositories.records message>", "exec"), namespace)
    reader: Callable[[asyncpg.Record | dict[str, Any]], Message] = namespace["message"]
    return reader


message = _message_reader()


def source(row: asyncpg.Record) -> Source:
    return Source(
        document_id=row["document_id"],
        chunk_id=row["chunk_id"],
        title=row["title"],
        uri=row["uri"],
        score=row["score"],
        snippet=row["snippet"],
    )


def state(row: asyncpg.Record) -> StateEntry:
    return StateEntry(
        conversation_id=row["conversation_id"],
        key=row["key"],
        value=row["value"],
        version=row["version"],
        updated_at=row["updated_at"],
    )
