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
from db.repositories.conversations import _ORDER, filtered
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
    """A column's value: kind "plain" (text, uuid, int, float, bool, text[], jsonb as they are),
    "datetime" (timestamptz as isoformat) or "enum" (stored value -> GraphQL name)."""

    column: str
    kind: str = "plain"
    enum: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Const:
    """A constant string (`__typename`)."""

    value: str


@dataclass(frozen=True, slots=True)
class JsonObject:
    """Response key -> value, in the response's key order. Frozen: a selection's SQL is built
    once and found again by the selection itself (structural equality)."""

    entries: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class MessagePage:
    """A page of a conversation's messages (`Conversation.messages(...)` of the row `c`, or
    `history`), its seq range computed from c.last_seq as app.services.messages.PageRequest.bounds
    does. Its arguments are parameters (`PageValues`, one per page in `pages_of` order);
    `source` is the caller's handle for reading them (not part of the SQL)."""

    connection: JsonObject
    source: Any = field(default=None, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class PageValues:
    forward: bool
    lower: int
    upper_cap: int | None
    size: int


@dataclass(frozen=True, slots=True)
class SourceList:
    """`Message.sources` of the message row `m`: each source as `item`, by position."""

    item: JsonObject


@dataclass(frozen=True, slots=True)
class Edges:
    """A connection's edge list: each edge is `edge` over one row (`node` is `Node`)."""

    edge: JsonObject


@dataclass(frozen=True, slots=True)
class Node:
    """The edge's node: the row itself."""

    node: JsonObject


def pages_of(obj: JsonObject) -> list[MessagePage]:
    """The pages of a selection in the order their parameters appear in its SQL."""
    found: list[MessagePage] = []
    for _, value in obj.entries:
        if isinstance(value, MessagePage):
            found.append(value)
            found.extend(pages_of(value.connection))
        elif isinstance(value, Node):
            found.extend(pages_of(value.node))
        elif isinstance(value, Edges):
            found.extend(pages_of(value.edge))
    return found


def _key(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a GraphQL name: {name!r}")
    return f"'{name}'"


def _literal(value: str) -> str:
    # Enum values and names and type names come from the schema; quoted anyway.
    return "'" + value.replace("'", "''") + "'::text"


def _datetime(expr: str) -> str:
    # Python's isoformat(): seconds always, ".ffffff" only when the microseconds are not 0.
    return (
        f"(to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || "
        f"CASE WHEN date_trunc('second', {expr}) = {expr} THEN '' "
        f"ELSE to_char({expr} AT TIME ZONE 'UTC', '.US') END || '+00:00')"
    )


class _Builder:
    """The SQL of a selection; page parameters are numbered from `first_param` on."""

    def __init__(self, first_param: int) -> None:
        self.next = first_param

    def param(self) -> str:
        self.next += 1
        return f"${self.next - 1}"

    def column(self, alias: str, spec: Column, allowed: frozenset[str]) -> str:
        if spec.column not in allowed:
            raise ValueError(f"unknown column {spec.column!r}")
        expr = f"{alias}.{spec.column}"
        if spec.kind == "datetime":
            return _datetime(expr)
        if spec.kind == "enum":
            cases = " ".join(f"WHEN {_literal(v)} THEN {_literal(n)}" for v, n in spec.enum)
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
                parts.append(_literal(value.value))
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
        """The page's connection object for the conversation `c` of the enclosing row; its four
        parameters are PageValues' fields (the bounds of _PAGE_TEMPLATE in messages.py)."""
        forward, lower, cap, size = (self.param() for _ in range(4))
        upper = f"LEAST(c.last_seq + 1, COALESCE({cap}::int, c.last_seq + 1))"
        lo = f"CASE WHEN {forward}::bool THEN {lower}::int + 1 ELSE GREATEST({lower}::int + 1, {upper} - {size}::int) END"
        hi = f"CASE WHEN {forward}::bool THEN LEAST({upper} - 1, {lower}::int + {size}::int) ELSE {upper} - 1 END"
        rows = (
            "(SELECT coalesce(json_agg({edge} ORDER BY m.seq), '[]'::json) FROM messages m "
            f"WHERE m.tenant_id = $1 AND m.conversation_id = c.id AND m.seq BETWEEN {lo} AND {hi})"
        )
        return self.object(page.connection, "", MESSAGE_FIELDS, (rows, "m"))


_SQL: dict[tuple[Any, ...], tuple[JsonObject | MessagePage, str]] = {}
_SQL_MAX = 1024


def _cached(selection: JsonObject | MessagePage, key: tuple[Any, ...], build: Any) -> str:
    """A selection's SQL, built once per selection (the engine's cached plan holds it) and
    shape. Keyed by the selection's id, cheaper than hashing it; the entry keeps the
    selection alive, so its id cannot be reused by another while the entry exists."""
    found = _SQL.get((id(selection), *key))
    if found is not None:
        return found[1]
    if len(_SQL) >= _SQL_MAX:
        _SQL.clear()
    sql: str = build()
    _SQL[(id(selection), *key)] = (selection, sql)
    return sql


def _page_args(pages: list[PageValues]) -> list[Any]:
    return [v for p in pages for v in (p.forward, p.lower, p.upper_cap, p.size)]


async def conversation_list(
    conn: Connection,
    tenant_id: str,
    f: ConversationFilter,
    order: ConversationOrder,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    connection: JsonObject,
    pages: list[PageValues],
) -> str:
    """The `conversations` connection as JSON text: the page of list_page (same WHERE, order
    and keyset), each conversation's nested message pages (`pages`, in pages_of order) in the
    same statement."""
    column, direction = _ORDER[order]
    where = filtered(tenant_id, f)
    if after is not None:
        op = "<" if direction == "DESC" else ">"
        where.add(f"({column}, id) {op} ({{}}, {{}})", *after)
    limit_param = where.param(limit)

    def build() -> str:
        page = (
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE {where.sql} "
            f"ORDER BY {column} {direction}, id {direction} LIMIT {limit_param}"
        )
        # The page rows are `c`: nested message pages read c.id and c.last_seq.
        rows = (
            "(SELECT coalesce(json_agg({edge}"
            + f" ORDER BY c.{column} {direction}, c.id {direction}), '[]'::json) FROM page c)"
        )
        body = _Builder(len(where.args) + 1).object(connection, "", CONVERSATION_FIELDS, (rows, "c"))
        return f"WITH page AS MATERIALIZED ({page}) SELECT ({body})::text"

    sql = _cached(connection, ("list", where.sql, order), build)
    text: str = await conn.fetchval(sql, *where.args, *_page_args(pages))
    return text


async def history(
    conn: Connection,
    tenant_id: str,
    id: uuid.UUID | None,
    session_id: str | None,
    page: MessagePage,
    values: PageValues,
) -> str | None:
    """`history` as JSON text, or None when the tenant has no such conversation."""
    by = "id = $2::uuid" if id is not None else "session_id = $2::text"

    def build() -> str:
        body = _Builder(3).messages(page)
        return f"SELECT ({body})::text FROM conversations c WHERE c.tenant_id = $1 AND c.{by}"

    sql = _cached(page.connection, ("history", by), build)
    text: str | None = await conn.fetchval(sql, tenant_id, id if id is not None else session_id, *_page_args([values]))
    return text
