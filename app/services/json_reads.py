"""Reads answered as JSON text built by Postgres (the GraphQL engine's SQL pushdown).

The same validation as the ordinary services (app/services/conversations.list_ and
app/services/messages.page_request), then one statement (db/repositories/json_reads.py). A read
here always goes to Postgres, the truth: never stale, whatever the hot cache holds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.errors import NotFound
from app.models import ConversationFilter, ConversationOrder, ConversationRef
from app.services import cursors
from app.services import limits as check
from app.services.conversations import DEFAULT_PAGE_SIZE, validate_filter
from app.services.limits import Limits
from app.services.messages import HistoryArgs
from db.repositories import json_reads as repo
from db.repositories.json_reads import (
    CONVERSATION_FIELDS,
    MESSAGE_FIELDS,
    SOURCE_FIELDS,
    Column,
    Const,
    Edges,
    JsonObject,
    MessagePage,
    Meta,
    Node,
    PageValues,
    SourceList,
    pages_of,
)
from db.session import Connection, Database

__all__ = [
    "CONVERSATION_FIELDS",
    "MESSAGE_FIELDS",
    "SOURCE_FIELDS",
    "Column",
    "Const",
    "Edges",
    "JsonObject",
    "MessagePage",
    "Meta",
    "Node",
    "PageValues",
    "RoundTrip",
    "SourceList",
    "conversation",
    "conversation_list",
    "history",
    "page_values",
    "pages_of",
]


def page_values(args: HistoryArgs, limits: Limits) -> PageValues:
    """A `messages(...)` / `history(...)` page's values, validated as history pages are
    (BAD_USER_INPUT); `since` needs a lookup per conversation and is not pushed down (ValueError)."""
    if args.since is not None:
        raise ValueError("since is not pushed down")
    request = args.request(limits)
    return PageValues(
        forward=request.forward,
        lower=request.lower,
        range_lower=request.range_lower,
        upper_cap=request.upper_cap,
        size=request.size,
    )


async def conversation_list(
    conn: Connection,
    tenant_id: str,
    filter: ConversationFilter | None,
    *,
    first: int | None,
    after: str | None,
    order: ConversationOrder,
    limits: Limits,
    connection: JsonObject,
    pages: list[PageValues],
) -> str:
    """`conversations` as JSON text (conversations.list_'s page, flags and capped count)."""
    f = validate_filter(filter or ConversationFilter(), limits)
    size = check.page_size(first if first is not None else DEFAULT_PAGE_SIZE, limits, "first")
    assert size is not None
    key = cursors.parse_conversation_cursor(after) if after else None
    return await repo.conversation_list(conn, tenant_id, f, order, size, key, connection, pages, limits.list_count_cap)


async def history(
    conn: Connection, tenant_id: str, target: ConversationRef, page: MessagePage, values: PageValues
) -> str:
    """`history` as JSON text; NOT_FOUND as messages.history_by_ref says it."""
    text = await repo.history(conn, tenant_id, target.id, target.session_id, page, values)
    if text is None:
        raise NotFound("conversation not found", conversationId=str(target.id) if target.id else None)
    return text


async def conversation(
    conn: Connection, tenant_id: str, target: ConversationRef, row: JsonObject, pages: list[PageValues]
) -> str | None:
    """`conversation(id | sessionId)` as JSON text; None (null) when the tenant has no such one,
    as conversations.find answers."""
    return await repo.conversation(conn, tenant_id, target.id, target.session_id, row, pages)


class RoundTrip:
    """One round trip for the pushdowns of a batch's items (one caller: one tenant, every
    statement's `$1`). Stands in for a connection (the repository calls `fetchval` only): the
    items run together (asyncio.gather), each reaches its
    statement in its first step, and the first one schedules the flush after those steps, so
    the flush finds them all and sends them as one statement (repo.fetch_together) on one
    pooled connection instead of one each. If that statement fails, every item gets the error
    (the engine then answers each on the ordinary path, which reports it as always)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pending: list[tuple[str, tuple[Any, ...], asyncio.Future[str | None]]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def fetchval(self, sql: str, *args: Any) -> str | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self.pending.append((sql, args, future))
        if len(self.pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        task = asyncio.ensure_future(self._send(batch))
        self.tasks.add(task)  # a reference until done (the loop keeps only weak ones)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: list[tuple[str, tuple[Any, ...], asyncio.Future[str | None]]]) -> None:
        try:
            async with self.db.read() as conn:
                tenant = batch[0][1][0] if batch[0][1] else None
                if len(batch) == 1 or not isinstance(tenant, str) or any(a[:1] != (tenant,) for _, a, _ in batch):
                    values: list[str | None] = [await conn.fetchval(sql, *a) for sql, a, _ in batch]
                else:
                    values = await repo.fetch_together(conn, tenant, [(sql, a) for sql, a, _ in batch])
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), value in zip(batch, values, strict=True):
            if not future.done():
                future.set_result(value)
