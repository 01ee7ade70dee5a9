"""Query root: thin resolvers that parse input, call app/services, return records."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

import strawberry

from app import models
from app.api.admin import AdminQuery
from app.api.selection import COUNT_FIELDS, selects, selects_path
from app.api.types import (
    AgentStats,
    ContextWindow,
    Conversation,
    ConversationConnection,
    ConversationFilter,
    Ctx,
    DailyStats,
    MessageConnection,
    RoleCount,
    SearchHitConnection,
    SearchMode,
    StatusCount,
    TenantStats,
)
from app.services import conversations, messages, search, stats


async def _conversation(
    info: Ctx, conversation_id: strawberry.ID | None, session_id: str | None
) -> models.Conversation:
    tenant = info.context.tenant()
    target = conversations.ref(conversation_id, session_id, info.context.resources.limits)
    async with info.context.resources.db.read() as conn:
        return await conversations.get(conn, tenant, target, cache=info.context.resources.cache)


@strawberry.type(description="Reads: conversations, transcripts, context windows, stats and search.")
class Query(AdminQuery):
    @strawberry.field(description="Null when it does not exist for this tenant.")
    async def conversation(
        self, info: Ctx, id: strawberry.ID | None = None, session_id: str | None = None
    ) -> Conversation | None:
        tenant = info.context.tenant()
        target = conversations.ref(id, session_id, info.context.resources.limits)
        async with info.context.resources.db.read() as conn:
            found = await conversations.find(conn, tenant, target, cache=info.context.resources.cache)
        return cast(Conversation | None, found)

    @strawberry.field(description="Conversations of this tenant, filtered, newest activity first by default.")
    async def conversations(
        self,
        info: Ctx,
        filter: ConversationFilter | None = None,
        first: int | None = 20,
        after: str | None = None,
        order_by: models.ConversationOrder | None = models.ConversationOrder.LAST_ACTIVITY_DESC,
    ) -> ConversationConnection:
        tenant = info.context.tenant()
        async with info.context.resources.db.read() as conn:
            page = await conversations.list_(
                conn,
                tenant,
                filter.to_model() if filter else None,
                first=first,
                after=after,
                order=order_by or models.ConversationOrder.LAST_ACTIVITY_DESC,
                limits=info.context.resources.limits,
                with_count=selects(info, COUNT_FIELDS),
            )
        return ConversationConnection.from_page(page)

    @strawberry.field(
        description="Edges in seq order. first/after page forward from the oldest (or from afterSeq, or from the "
        "first message created at or after since); last/before backward from the newest; neither: last 50."
    )
    async def history(
        self,
        info: Ctx,
        conversation_id: strawberry.ID | None = None,
        session_id: str | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        after_seq: int | None = None,
        since: datetime | None = None,
    ) -> MessageConnection:
        tenant = info.context.tenant()
        limits = info.context.resources.limits
        target = conversations.ref(conversation_id, session_id, limits)
        async with info.context.resources.db.read() as conn:
            page = await messages.history_by_ref(
                conn,
                tenant,
                target,
                messages.HistoryArgs(
                    first=first, after=after, last=last, before=before, after_seq=after_seq, since=since
                ),
                limits=limits,
                cache=info.context.resources.cache,
            )
        return MessageConnection.from_page(page)

    @strawberry.field(description="A token-budgeted window of a conversation, ready for the next LLM call.")
    async def context_window(
        self,
        info: Ctx,
        conversation_id: strawberry.ID | None = None,
        session_id: str | None = None,
        *,
        max_tokens: int,
        model: str | None = None,
        reserve_tokens: int | None = 0,
        include_system: bool | None = True,
        include_summary: bool | None = True,
    ) -> ContextWindow:
        conversation = await _conversation(info, conversation_id, session_id)
        window = await info.context.context_window(
            conversation,
            max_tokens=max_tokens,
            model=model,
            reserve_tokens=reserve_tokens,
            include_system=include_system,
            include_summary=include_summary,
        )
        return cast(ContextWindow, window)

    @strawberry.field(description="Conversations created and messages written in [from, to).")
    async def stats(
        self,
        info: Ctx,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
        agent_id: str | None = None,
    ) -> TenantStats:
        tenant = info.context.tenant()
        async with info.context.resources.db.read() as conn:
            s = await stats.tenant_stats(conn, tenant, from_, to, agent_id)
        return TenantStats(
            from_=s.start,
            to=s.end,
            conversations=s.conversations,
            conversations_by_status=[StatusCount(status=k, count=v) for k, v in s.conversations_by_status.items()],
            active_conversations=s.active_conversations,
            messages=s.messages,
            messages_by_role=[RoleCount(role=k, count=v) for k, v in s.messages_by_role.items()],
            tokens=s.tokens,
            avg_messages_per_conversation=s.avg_messages_per_conversation,
            avg_duration_seconds=s.avg_duration_seconds,
            agents=[cast(AgentStats, a) for a in s.agents],
            daily=[cast(DailyStats, d) for d in s.daily],
        )

    @strawberry.field(description='Full-text search over message content (words, "phrases", -not, or).')
    async def search_messages(
        self,
        info: Ctx,
        query: str,
        filter: ConversationFilter | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> MessageConnection:
        tenant = info.context.tenant()
        async with info.context.resources.db.read() as conn:
            page = await search.search_messages(
                conn,
                tenant,
                query,
                filter.to_model() if filter else None,
                first=first,
                after=after,
                limits=info.context.resources.limits,
                with_count=selects(info, COUNT_FIELDS),
            )
        return MessageConnection.from_page(page)

    @strawberry.field(
        description="Best matches first. KEYWORD: full-text matches ranked by ts_rank (newest first among equals). "
        "SEMANTIC and HYBRID need an embedder to be configured (else BAD_USER_INPUT). Added by issue 11."
    )
    async def search(
        self,
        info: Ctx,
        query: str,
        mode: SearchMode | None = SearchMode.HYBRID,
        filter: ConversationFilter | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> SearchHitConnection:
        tenant = info.context.tenant()
        async with info.context.resources.db.read() as conn:
            page = await search.search(
                conn,
                tenant,
                query,
                mode or SearchMode.HYBRID,
                filter.to_model() if filter else None,
                first=first,
                after=after,
                limits=info.context.resources.limits,
                snippets=selects_path(info, ("edges", "node", "snippet")),
            )
        return SearchHitConnection.from_page(page)
