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

import functools
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
    range_lower: int
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


@dataclass(frozen=True, slots=True)
class Meta:
    """A value the connection computes, as its resolver computes it: on the connection
    `totalCount` / `totalCountCapped`, in its `pageInfo` (a `Node` of Metas) `hasNextPage`,
    `hasPreviousPage`, `startCursor`, `endCursor`, and on an edge `cursor`."""

    name: str


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


def uses_meta(obj: JsonObject) -> bool:
    """Whether the connection object (not its nested pages) selects computed values."""
    for _, value in obj.entries:
        if isinstance(value, Meta) or (isinstance(value, Node | Edges) and uses_meta(_inner(value))):
            return True
    return False


def _inner(value: Node | Edges) -> JsonObject:
    return value.node if isinstance(value, Node) else value.edge


def _base64(raw: str) -> str:
    # Python's urlsafe_b64encode(...).rstrip("="); Postgres breaks base64 lines at 76
    # characters: translate drops the newlines (no counterpart in the target set).
    return f"rtrim(translate(encode(convert_to({raw}, 'UTF8'), 'base64'), '+/' || chr(10), '-_'), '=')"


def seq_cursor(seq: str) -> str:
    """cursors.seq_cursor in SQL (NULL for a NULL seq)."""
    return _base64(f"'s|' || ({seq})::text")


def conversation_cursor(alias: str, column: str) -> str:
    """cursors.conversation_cursor(row.<column>, row.id) in SQL."""
    return _base64(f"'c|' || {_datetime(f'{alias}.{column}')} || '|' || {alias}.id::text")


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

    def object(
        self,
        obj: JsonObject,
        alias: str,
        allowed: frozenset[str],
        rows: tuple[str, str, dict[str, str]] | None = None,
        meta: dict[str, str] | None = None,
    ) -> str:
        """`alias` is the row the object's columns read; `rows` (a template over the rows of the
        connection's edges with `{edge}` per row, the rows' alias, and the edge's computed values)
        is given for a connection object, `meta` (name -> SQL) for the objects with computed
        values."""
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
                parts.append(self.object(value.node, alias, allowed, meta=meta))
            elif isinstance(value, Meta):
                if meta is None or value.name not in meta:
                    raise ValueError(f"cannot compute {value.name!r} here")
                parts.append(meta[value.name])
            elif isinstance(value, Edges):
                assert rows is not None
                parts.append(rows[0].format(edge=self.object(value.edge, rows[1], allowed, meta=rows[2])))
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
        """The page's connection object for the conversation `c` of the enclosing row; its five
        parameters are PageValues' fields. The bounds `b` mirror PageRequest.bounds, the flags
        and count PageRequest.plan (an empty page answers the flags from where it stands)."""
        forward, lower, range_lower, cap, size = (self.param() for _ in range(5))
        fwd, low = f"{forward}::bool", f"{lower}::int"
        upper = f"LEAST(c.last_seq + 1, COALESCE({cap}::int, c.last_seq + 1))"
        lo = f"CASE WHEN {fwd} THEN {low} + 1 ELSE GREATEST({low} + 1, {upper} - {size}::int) END"
        hi = f"CASE WHEN {fwd} THEN LEAST({upper} - 1, {low} + {size}::int) ELSE {upper} - 1 END"
        in_page = "m.tenant_id = $1 AND m.conversation_id = c.id AND m.seq BETWEEN b.lo AND b.hi"
        rows = "(SELECT coalesce(json_agg({edge} ORDER BY m.seq), '[]'::json) FROM messages m WHERE " + in_page + ")"
        plo = f"(CASE WHEN b.hi >= b.lo THEN b.lo WHEN {fwd} THEN {low} + 1 ELSE b.up END)"
        phi = f"(CASE WHEN b.hi >= b.lo THEN b.hi WHEN {fwd} THEN {low} ELSE b.up - 1 END)"
        meta = {
            "hasNextPage": f"({phi} < CASE WHEN {fwd} THEN b.up - 1 ELSE c.last_seq END)",
            "hasPreviousPage": f"({plo} > b.range_lower + 1)",
            "totalCount": "GREATEST(0, c.last_seq - b.range_lower)",
            "totalCountCapped": "false",
            "startCursor": f"(SELECT {seq_cursor('min(m.seq)')} FROM messages m WHERE {in_page})",
            "endCursor": f"(SELECT {seq_cursor('max(m.seq)')} FROM messages m WHERE {in_page})",
        }
        body = self.object(page.connection, "", MESSAGE_FIELDS, (rows, "m", {"cursor": seq_cursor("m.seq")}), meta)
        # Every parameter is typed here, selected or not (asyncpg must know each one's type).
        bounds = f"SELECT {lo} AS lo, {hi} AS hi, {upper} AS up, {range_lower}::int AS range_lower"
        return f"(SELECT {body} FROM ({bounds}) b)"


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
    return [v for p in pages for v in (p.forward, p.lower, p.range_lower, p.upper_cap, p.size)]


async def conversation_list(
    conn: Connection,
    tenant_id: str,
    f: ConversationFilter,
    order: ConversationOrder,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    connection: JsonObject,
    pages: list[PageValues],
    count_cap: int,
) -> str:
    """The `conversations` connection as JSON text: the page of list_page (same WHERE, order
    and keyset), each conversation's nested message pages (`pages`, in pages_of order) in the
    same statement. With computed values selected, the page reads one row more (hasNextPage,
    as conversations.list_) and the count stops after count_cap + 1 rows (repo.count)."""
    column, direction = _ORDER[order]
    where = filtered(tenant_id, f)
    count_where = where.sql  # the filter alone: the count ignores the cursor
    if after is not None:
        op = "<" if direction == "DESC" else ">"
        where.add(f"({column}, id) {op} ({{}}, {{}})", *after)
    computed = uses_meta(connection)
    limit_param = where.param(limit + 1 if computed and limit else limit)
    size_param = where.param(limit) if computed else ""
    before_param = where.param(after is not None) if computed else ""
    cap_param = where.param(count_cap) if computed else ""

    def build() -> str:
        ordered = f"ORDER BY {column} {direction}, id {direction}"
        page = f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE {where.sql} {ordered} LIMIT {limit_param}"
        shown = "(SELECT * FROM page " + ordered + " LIMIT (SELECT size FROM args))" if computed else "page"
        # The page rows are `c`: nested message pages read c.id and c.last_seq.
        rows = (
            "(SELECT coalesce(json_agg({edge}"
            + f" ORDER BY c.{column} {direction}, c.id {direction}), '[]'::json) FROM {shown} c)"
        )
        reverse = "ASC" if direction == "DESC" else "DESC"
        cap = "(SELECT cap FROM args)"
        counted = f"(SELECT count(*) FROM (SELECT 1 FROM conversations WHERE {count_where} LIMIT {cap} + 1) n)"
        meta = {
            "hasNextPage": "((SELECT count(*) FROM page) > (SELECT size FROM args))",
            "hasPreviousPage": "(SELECT after FROM args)",
            "totalCount": f"LEAST({counted}, {cap})::int",
            "totalCountCapped": f"({counted} > {cap})",
            "startCursor": f"(SELECT {conversation_cursor('c', column)} FROM {shown} c {ordered} LIMIT 1)",
            "endCursor": f"(SELECT {conversation_cursor('c', column)} FROM {shown} c "
            f"ORDER BY {column} {reverse}, id {reverse} LIMIT 1)",
        }
        edge = {"cursor": conversation_cursor("c", column)}
        body = _Builder(len(where.args) + 1).object(connection, "", CONVERSATION_FIELDS, (rows, "c", edge), meta)
        # Every parameter is typed in `args`, selected or not (asyncpg must know each one's type).
        args = f"args AS (SELECT {size_param}::int AS size, {before_param}::bool AS after, {cap_param}::int AS cap), "
        return f"WITH {args if computed else ''}page AS MATERIALIZED ({page}) SELECT ({body})::text"

    sql = _cached(connection, ("list", where.sql, order, computed), build)
    text: str = await conn.fetchval(sql, *where.args, *_page_args(pages))
    return text


async def conversation(
    conn: Connection,
    tenant_id: str,
    id: uuid.UUID | None,
    session_id: str | None,
    row: JsonObject,
    pages: list[PageValues],
) -> str | None:
    """`conversation(id | sessionId)` as JSON text, or None when the tenant has no such conversation."""
    by = "id = $2::uuid" if id is not None else "session_id = $2::text"

    def build() -> str:
        body = _Builder(3).object(row, "c", CONVERSATION_FIELDS)
        return f"SELECT ({body})::text FROM conversations c WHERE c.tenant_id = $1 AND c.{by}"

    sql = _cached(row, ("conversation", by), build)
    text: str | None = await conn.fetchval(sql, tenant_id, id if id is not None else session_id, *_page_args(pages))
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


_PARAM = re.compile(r"\$(\d+)")


def _shift(offset: int, match: re.Match[str]) -> str:
    number = int(match.group(1))
    return "$1" if number == 1 else f"${number + offset}"


async def fetch_together(
    conn: Connection, tenant_id: str, statements: list[tuple[str, tuple[Any, ...]]]
) -> list[str | None]:
    """Several of this module's statements of one tenant (each one value, or no row) as one:
    each becomes a scalar subquery, its parameters renumbered after the ones before it, so one
    round trip answers them all (NULL where a statement finds no row, as fetchval's None). The
    tenant stays `$1` in all of them: on Citus every subquery then names the same shard, and
    the router planner sends the whole statement to it."""
    parts: list[str] = []
    args: list[Any] = [tenant_id]
    for sql, values in statements:
        if not values or values[0] != tenant_id:
            raise ValueError("statements of one tenant only")
        # Our own SQL: the only `$` in it are parameters (names and literals are GraphQL names).
        renumbered = _PARAM.sub(functools.partial(_shift, len(args) - 1), sql)
        parts.append(f"({renumbered}) AS r{len(parts)}")
        args.extend(values[1:])
    row = await conn.fetchrow(f"SELECT {', '.join(parts)}", *args)
    assert row is not None
    return [row[i] for i in range(len(statements))]
