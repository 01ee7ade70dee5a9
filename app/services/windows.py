"""The context-window use case, one function for every edge (GraphQL's `contextWindow`, the
get_context action): the window, from the hot store when it holds the conversation, with the
tenant's customer note when a CRM client is at hand and the tenant (or the caller) asks for it."""

from __future__ import annotations

import httpx

from app.cache.client import HotCache
from app.cache.scan import StoreConnection
from app.models import Conversation, ConversationRef
from app.services import context, conversations, crm, hot_fill
from app.services.context import ContextWindow
from app.services.crm import CrmOptions, CustomerNote
from db.session import Connection


async def context_window(
    conn: Connection,
    conversation: Conversation,
    *,
    cache: HotCache | None,
    redis: StoreConnection,
    http: httpx.AsyncClient | None,
    max_tokens: int,
    model: str | None = None,
    reserve_tokens: int = 0,
    include_system: bool = True,
    include_summary: bool = True,
    include_customer: bool | None = None,
    default_model: str = "gpt-4o",
    options: CrmOptions | None = None,
) -> tuple[ContextWindow, CustomerNote | None]:
    """`context.build_window` over the hot store (Postgres for what it lacks), with the customer
    note of crm.context_window. Without an HTTP client (a process that makes no CRM calls) there
    is no customer note."""
    source = (
        hot_fill.window_source(
            cache, conn, conversation.tenant_id, conversation, max_tokens=max_tokens, reserve_tokens=reserve_tokens
        )
        if cache is not None
        else None
    )
    if http is None:
        window = await context.build_window(
            conn,
            conversation.tenant_id,
            conversation,
            max_tokens=max_tokens,
            model=model,
            reserve_tokens=reserve_tokens,
            include_system=include_system,
            include_summary=include_summary,
            default_model=default_model,
            source=source,
        )
        return window, None
    return await crm.context_window(
        conn,
        redis,
        http,
        conversation,
        max_tokens=max_tokens,
        model=model,
        reserve_tokens=reserve_tokens,
        include_system=include_system,
        include_summary=include_summary,
        include_customer=include_customer,
        default_model=default_model,
        options=options,
        source=source,
    )


async def context_window_of(
    conn: Connection,
    tenant_id: str,
    target: ConversationRef,
    *,
    cache: HotCache | None,
    redis: StoreConnection,
    http: httpx.AsyncClient | None,
    max_tokens: int,
    model: str | None = None,
    reserve_tokens: int = 0,
    include_system: bool = True,
    include_summary: bool = True,
    include_customer: bool | None = None,
    default_model: str = "gpt-4o",
    options: CrmOptions | None = None,
) -> tuple[ContextWindow, CustomerNote | None]:
    """context_window of the conversation `target` names (the get_context action)."""
    conversation = await conversations.get(conn, tenant_id, target)
    return await context_window(
        conn,
        conversation,
        cache=cache,
        redis=redis,
        http=http,
        max_tokens=max_tokens,
        model=model,
        reserve_tokens=reserve_tokens,
        include_system=include_system,
        include_summary=include_summary,
        include_customer=include_customer,
        default_model=default_model,
        options=options,
    )
