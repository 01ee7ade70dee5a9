"""Reads answered as JSON text built by Postgres (the GraphQL engine's SQL pushdown).

The same validation as the ordinary services (app/services/conversations.list_ and
app/services/messages.page_request), then one statement (db/repositories/json_reads.py). A read
here always goes to Postgres, the truth: never stale, whatever the hot cache holds.
"""

from __future__ import annotations

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
from db.session import Connection

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
