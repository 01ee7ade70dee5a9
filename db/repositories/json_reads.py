"""Reads answered as JSON built by Postgres (the GraphQL engine's SQL pushdown).

The engine (app/api/engine/pushdown.py) describes a selection it fully understands as a tree of
`JsonObject`s; this module turns it into one statement whose only result is the JSON text of
the field, so Python splices bytes instead of building records and dicts. Every value is
formatted exactly as the ordinary path formats it (tests/api/test_engine_pushdown.py):
DateTime as Python's `isoformat()` of the UTC instant (microseconds only when not zero),
enums by their GraphQL names, UUIDs and jsonb as they are.

Column names and response keys come from the schema and the parsed document (GraphQL names),
never from values; they are checked against a whitelist / the GraphQL name syntax anyway.
Values (tenant, filter, page bounds) are always bind parameters, and `tenant_id = $1` is in
every WHERE.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.models import ConversationFilter, ConversationOrder
from db.repositories.conversations import _ORDER, Where, filtered
from db.repositories.records import CONVERSATION_COLUMNS, MESSAGE_COLUMNS
from db.session import Connection

_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")
CONVERSATION_FIELDS = frozenset(c.strip() for c in CONVERSATION_COLUMNS.split(","))
MESSAGE_FIELDS = frozenset(c.strip() for c in MESSAGE_COLUMNS.split(","))
SOURCE_FIELDS = frozenset({"document_id", "chunk_id", "title", "uri", "score", "snippet"})
#: json_build_object takes at most 100 arguments: 50 keys.
MAX_KEYS = 50


@dataclass(frozen=True, slots=True)
class Column:
    """A column's value: kind "plain" (text, uuid, int, bool, text[], jsonb as they are),
    "datetime" (timestamptz as isoformat) or "enum" (stored value -> GraphQL name)."""

    column: str
    kind: str = "plain"
    enum: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Const:
    """A constant string (`__typename`)."""

    value: str


@dataclass(frozen=True, slots=True)
class MessagePage:
    """`Conversation.messages(...)`: a seq range of the conversation computed from its last_seq
    as app.services.messages.PageRequest.bounds does; `edges` keys -> edge objects."""

    forward: bool
    lower: int
    upper_cap: int | None
    size: int
    connection: JsonObject


@dataclass(frozen=True, slots=True)
class SourceList:
    """`Message.sources` of the message row `m`: each source as `item`, by position."""

    item: JsonObject


@dataclass(slots=True)
class Edges:
    """A connection's edge list: each edge is `edge` over one row (`node` is `Node`)."""

    edge: JsonObject


@dataclass(frozen=True, slots=True)
class Node:
    """The edge's node: the row itself."""

    node: JsonObject


@dataclass(slots=True)
class JsonObject:
    """Response key -> value, in the response's key order."""

    entries: list[tuple[str, Any]] = field(default_factory=list)


def _key(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a GraphQL name: {name!r}")
    return f"'{name}'"


def _datetime(expr: str) -> str:
    # Python's isoformat(): seconds always, ".ffffff" only when the microseconds are not 0.
    return (
        f"(to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || "
        f"CASE WHEN date_trunc('second', {expr}) = {expr} THEN '' "
        f"ELSE to_char({expr} AT TIME ZONE 'UTC', '.US') END || '+00:00')"
    )


class _Builder:
    def __init__(self, where: Where) -> None:
        self.where = where  # its args are the statement's parameters ($1 is the tenant)

    def column(self, alias: str, spec: Column, allowed: frozenset[str]) -> str:
        if spec.column not in allowed:
            raise ValueError(f"unknown column {spec.column!r}")
        expr = f"{alias}.{spec.column}"
        if spec.kind == "datetime":
            return _datetime(expr)
        if spec.kind == "enum":
            cases = " ".join(f"WHEN {self.where.param(v)}::text THEN {self.where.param(n)}::text" for v, n in spec.enum)
            return f"(CASE {expr} {cases} END)"
        return expr

    def object(self, obj: JsonObject, alias: str, allowed: frozenset[str], rows: tuple[str, str] | None = None) -> str:
        """`alias` is the row the object's columns read; `rows` (a template over the rows of the
        connection's edges with `{edge}` per row, and the rows' alias) is given for a connection
        object."""
        if len(obj.entries) > MAX_KEYS:
            raise ValueError("too many keys")
        parts: list[str] = []
        for key, value in obj.entries:
            parts.append(_key(key))
            if isinstance(value, Const):
                parts.append(f"{self.where.param(value.value)}::text")
            elif isinstance(value, Column):
                parts.append(self.column(alias, value, allowed))
            elif isinstance(value, Node):
                parts.append(self.object(value.node, alias, allowed))
            elif isinstance(value, Edges):
                assert rows is not None
                parts.append(rows[0].format(edge=self.object(value.edge, rows[1], allowed)))
            elif isinstance(value, MessagePage):
                parts.append(self.messages(value))
            elif isinstance(value, SourceList):
                item = self.object(value.item, "s", SOURCE_FIELDS)
                parts.append(
                    f"(SELECT coalesce(json_agg({item} ORDER BY s.position), '[]'::json) FROM message_sources s "
                    "WHERE s.tenant_id = $1 AND s.conversation_id = m.conversation_id AND s.seq = m.seq)"
                )
            else:
                raise ValueError(f"cannot build {value!r}")
        return f"json_build_object({', '.join(parts)})"

    def messages(self, page: MessagePage) -> str:
        """The page's connection object for the conversation `c` of the enclosing row."""
        p = self.where.param
        upper = f"LEAST(c.last_seq + 1, COALESCE({p(page.upper_cap)}::int, c.last_seq + 1))"
        lower, size = p(page.lower), p(page.size)
        if page.forward:
            lo, hi = f"({lower}::int + 1)", f"LEAST({upper} - 1, {lower}::int + {size}::int)"
        else:
            lo, hi = f"GREATEST({lower}::int + 1, {upper} - {size}::int)", f"({upper} - 1)"
        rows = (
            "(SELECT coalesce(json_agg({edge} ORDER BY m.seq), '[]'::json) FROM messages m "
            f"WHERE m.tenant_id = $1 AND m.conversation_id = c.id AND m.seq BETWEEN {lo} AND {hi})"
        )
        return self.object(page.connection, "", MESSAGE_FIELDS, (rows, "m"))


async def conversation_list(
    conn: Connection,
    tenant_id: str,
    f: ConversationFilter,
    order: ConversationOrder,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    connection: JsonObject,
) -> str:
    """The `conversations` connection as JSON text: the page of list_page (same WHERE, order
    and keyset), each conversation's nested message pages in the same statement."""
    column, direction = _ORDER[order]
    where = filtered(tenant_id, f)
    if after is not None:
        op = "<" if direction == "DESC" else ">"
        where.add(f"({column}, id) {op} ({{}}, {{}})", *after)
    limit_param = where.param(limit)
    page = (
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE {where.sql} "
        f"ORDER BY {column} {direction}, id {direction} LIMIT {limit_param}"
    )
    builder = _Builder(where)
    # The page rows are `c`: nested message pages read c.id and c.last_seq.
    rows = (
        "(SELECT coalesce(json_agg({edge}"
        + f" ORDER BY c.{column} {direction}, c.id {direction}), '[]'::json) FROM page c)"
    )
    body = builder.object(connection, "", CONVERSATION_FIELDS, (rows, "c"))
    sql = f"WITH page AS MATERIALIZED ({page}) SELECT ({body})::text"
    text: str = await conn.fetchval(sql, *where.args)
    return text


async def history(
    conn: Connection, tenant_id: str, id: uuid.UUID | None, session_id: str | None, page: MessagePage
) -> str | None:
    """`history` as JSON text, or None when the tenant has no such conversation."""
    where = Where(tenant_id, "c")
    if id is not None:
        where.add("{a}id = {p}::uuid", id)
    else:
        where.add("{a}session_id = {p}::text", session_id)
    body = _Builder(where).messages(page)
    sql = f"SELECT ({body})::text FROM conversations c WHERE {where.sql}"
    text: str | None = await conn.fetchval(sql, *where.args)
    return text
