"""Stats and search: TenantStats and its parts, Query.stats and Query.searchMessages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

import strawberry

from app import models
from app.api.domains.common import Ctx, PageInfo, page_info
from app.api.domains.conversations import ConversationFilter
from app.api.domains.enums import ConversationStatus, MessageRole, SearchMode
from app.api.domains.message_types import Message, MessageConnection
from app.api.selection import selects_path
from app.services import search, stats


@strawberry.type(description="Messages of one role.")
class RoleCount:
    role: MessageRole = strawberry.field(description="The role.")
    count: int = strawberry.field(description="Messages written in the range.")


@strawberry.type(description="Conversations of one status.")
class StatusCount:
    status: ConversationStatus = strawberry.field(description="The status.")
    count: int = strawberry.field(description="Conversations created in the range.")


@strawberry.type(description="One agent's numbers in the range.")
class AgentStats:
    agent_id: str = strawberry.field(description="The agent.")
    conversations: int = strawberry.field(description="Conversations created in the range.")
    messages: int = strawberry.field(description="Messages written in the range.")
    tokens: int = strawberry.field(description="Tokens of those messages.")
    avg_messages_per_conversation: float = strawberry.field(
        description="Average message count of its conversations created in the range."
    )


@strawberry.type(description="One UTC day.")
class DailyStats:
    day: str = strawberry.field(description="YYYY-MM-DD, UTC.")
    conversations: int = strawberry.field(description="Conversations created that day.")
    messages: int = strawberry.field(description="Messages written that day.")
    tokens: int = strawberry.field(description="Tokens of those messages.")


@strawberry.type(description="A tenant's numbers over [from, to).")
class TenantStats:
    from_: datetime | None = strawberry.field(name="from", description="Start of the range (inclusive).")
    to: datetime | None = strawberry.field(description="End of the range (exclusive).")
    conversations: int = strawberry.field(description="Conversations created in the range.")
    conversations_by_status: list[StatusCount] = strawberry.field(description="Those conversations by status.")
    active_conversations: int = strawberry.field(description="Those conversations still active.")
    messages: int = strawberry.field(description="Messages written in the range.")
    messages_by_role: list[RoleCount] = strawberry.field(description="Those messages by role.")
    tokens: int = strawberry.field(description="Tokens of those messages.")
    avg_messages_per_conversation: float = strawberry.field(
        description="Average message count of the conversations created in the range."
    )
    avg_duration_seconds: float | None = strawberry.field(
        description="Average closedAt - createdAt of those conversations that are closed."
    )
    agents: list[AgentStats] = strawberry.field(description="Per agent, sorted by agentId.")
    daily: list[DailyStats] = strawberry.field(description="Per UTC day with any activity, oldest first.")


@strawberry.type(description="A search result.")
class SearchHit:
    message: Message = strawberry.field(description="The matching message.")
    score: float = strawberry.field(description="Higher is better; comparable within one result list only.")
    snippet: str | None = strawberry.field(
        description="A short excerpt with the matching words marked as **word**, when there are any."
    )


@strawberry.type(description="A search result in a connection.")
class SearchHitEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this edge.")
    node: SearchHit = strawberry.field(description="The hit.")


@strawberry.type(description="A page of search results, best first.")
class SearchHitConnection:
    edges: list[SearchHitEdge] = strawberry.field(description="The page.")
    page_info: PageInfo = strawberry.field(description="Paging information.")

    @classmethod
    def from_page(cls, page: models.Page[search.SearchHit]) -> SearchHitConnection:
        cursor_of = page.cursor_of
        edges = [cast(SearchHitEdge, models.Edge(h, cursor_of)) for h in page.items]
        return cls(edges=edges, page_info=page_info(page))


@strawberry.type
class StatsSearchQuery:
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
            conversations_by_status=[
                StatusCount(status=ConversationStatus(k), count=v) for k, v in s.conversations_by_status.items()
            ],
            active_conversations=s.active_conversations,
            messages=s.messages,
            messages_by_role=[RoleCount(role=MessageRole(k), count=v) for k, v in s.messages_by_role.items()],
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
                search.SearchMode(mode or SearchMode.HYBRID),
                filter.to_model() if filter else None,
                first=first,
                after=after,
                limits=info.context.resources.limits,
                snippets=selects_path(info, ("edges", "node", "snippet")),
            )
        return SearchHitConnection.from_page(page)
