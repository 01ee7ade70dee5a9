"""Tenant statistics over [from, to)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from app.errors import BadUserInput
from app.models import Role, Status
from app.services import limits as check
from db.repositories import stats as repo
from db.session import Connection


@dataclass(slots=True)
class AgentStats:
    agent_id: str
    conversations: int
    messages: int
    tokens: int
    avg_messages_per_conversation: float


@dataclass(slots=True)
class DailyStats:
    day: str
    conversations: int
    messages: int
    tokens: int


@dataclass(slots=True)
class TenantStats:
    """Conversations are those created in the range; messages and tokens those written in it.
    Averages are over the conversations created in the range (their whole message count)."""

    start: datetime | None
    end: datetime | None
    conversations: int = 0
    conversations_by_status: dict[Status, int] = field(default_factory=dict)
    active_conversations: int = 0
    messages: int = 0
    messages_by_role: dict[Role, int] = field(default_factory=dict)
    tokens: int = 0
    avg_messages_per_conversation: float = 0.0
    avg_duration_seconds: float | None = None
    agents: list[AgentStats] = field(default_factory=list)
    daily: list[DailyStats] = field(default_factory=list)


async def tenant_stats(
    conn: Connection,
    tenant_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
    agent_id: str | None = None,
) -> TenantStats:
    if start is not None and end is not None and start > end:
        raise BadUserInput("from is after to", field="from")
    check.text(agent_id, "agentId", check.DEFAULT_LIMITS.max_id_length)
    result = TenantStats(start=start, end=end)
    total_messages_of_conversations = 0
    closed = 0
    duration = 0.0
    for row in await repo.conversations_by_status(conn, tenant_id, start, end, agent_id):
        status = Status(row["status"])
        result.conversations_by_status[status] = row["conversations"]
        result.conversations += row["conversations"]
        total_messages_of_conversations += row["messages"] or 0
        closed += row["closed"]
        duration += float(row["duration_seconds"] or 0)
    for status in Status:
        result.conversations_by_status.setdefault(status, 0)
    result.active_conversations = result.conversations_by_status[Status.ACTIVE]
    if result.conversations:
        result.avg_messages_per_conversation = total_messages_of_conversations / result.conversations
    if closed:
        result.avg_duration_seconds = duration / closed
    for row in await repo.messages_by_role(conn, tenant_id, start, end, agent_id):
        result.messages_by_role[Role(row["role"])] = row["messages"]
        result.messages += row["messages"]
        result.tokens += int(row["tokens"])
    for role in Role:
        result.messages_by_role.setdefault(role, 0)
    for row in await repo.per_agent(conn, tenant_id, start, end, agent_id):
        conversations = row["conversations"]
        result.agents.append(
            AgentStats(
                agent_id=row["agent_id"],
                conversations=conversations,
                messages=row["messages"],
                tokens=int(row["tokens"]),
                avg_messages_per_conversation=(int(row["total_messages"]) / conversations) if conversations else 0.0,
            )
        )
    result.daily = [
        DailyStats(
            day=row["day"].isoformat(),
            conversations=row["conversations"],
            messages=row["messages"],
            tokens=int(row["tokens"]),
        )
        for row in await repo.daily(conn, tenant_id, start, end, agent_id)
    ]
    return result
