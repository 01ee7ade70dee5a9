"""Stats and search: TenantStats and its parts, Query.stats and Query.searchMessages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

import strawberry

from app.api.domains.common import Ctx
from app.api.domains.conversations import ConversationFilter
from app.api.domains.enums import ConversationStatus, MessageRole
from app.api.domains.message_types import MessageConnection
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
