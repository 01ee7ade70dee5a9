"""Tenant statistics over [from, to)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from app.errors import BadUserInput
from app.models import Role, Status
from app.services import limits as check
from db.repositories import stats as repo
from db.session import Connection, Database


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


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _split(
    start: datetime | None, end: datetime | None
) -> tuple[date | None, date | None, list[tuple[datetime, datetime]]]:
    """Whole UTC days [first_day, end_day) for the rollups, and the partial edges (read exactly)."""
    first_day = end_day = None
    edges: list[tuple[datetime, datetime]] = []
    if start is not None:
        s_utc = start.astimezone(UTC)
        first_day = s_utc.date() if s_utc == _day_start(s_utc.date()) else s_utc.date() + timedelta(days=1)
    if end is not None:
        end_day = end.astimezone(UTC).date()
    if first_day is not None and end_day is not None and first_day > end_day:
        # The range lies within one day: no whole day, one exact piece.
        assert start is not None and end is not None
        return first_day, first_day, [(start, end)]
    if start is not None and first_day is not None and start < _day_start(first_day):
        edges.append((start, _day_start(first_day)))
    if end is not None and end_day is not None and _day_start(end_day) < end:
        edges.append((_day_start(end_day), end))
    return first_day, end_day, edges


async def tenant_stats(
    conn: Connection,
    tenant_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
    agent_id: str | None = None,
) -> TenantStats:
    """Read from the daily rollups (never by scanning messages): whole days from stats_daily, the partial
    first and last day of a range not aligned to UTC midnight from the rows of those hours only."""
    if start is not None and end is not None and start > end:
        raise BadUserInput("from is after to", field="from")
    check.text(agent_id, "agentId", check.DEFAULT_LIMITS.max_id_length)
    result = TenantStats(start=start, end=end)
    first_day, end_day, edges = _split(start, end)
    facts = []
    if first_day is None or end_day is None or first_day < end_day:
        facts += await repo.rollup_facts(conn, tenant_id, first_day, end_day, agent_id)
    for lo, hi in edges:
        facts += await repo.exact_facts(conn, tenant_id, lo, hi, agent_id)
    total_messages_of_conversations = 0
    closed = 0
    duration = 0.0
    agents: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # conversations, total, messages, tokens
    days: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])  # conversations, messages, tokens
    for row in facts:
        conversations, messages, tokens = int(row["conversations"]), int(row["messages"]), int(row["tokens"])
        # Rollup rows come in two groupings (see repo.rollup_facts): per day (agent_id NULL) and per
        # agent (day NULL). Exact rows from the edges have both and count in both.
        if row["day"] is None:
            if row["agent_id"]:
                a = agents[row["agent_id"]]
                a[0] += conversations
                a[1] += int(row["conversation_messages"])
                a[2] += messages
                a[3] += tokens
            continue
        if row["status"]:
            status = Status(row["status"])
            result.conversations_by_status[status] = result.conversations_by_status.get(status, 0) + conversations
            result.conversations += conversations
            total_messages_of_conversations += int(row["conversation_messages"])
            closed += int(row["closed"])
            duration += float(row["duration_seconds"])
        else:
            role = Role(row["role"])
            result.messages_by_role[role] = result.messages_by_role.get(role, 0) + messages
            result.messages += messages
            result.tokens += tokens
        if row["agent_id"]:
            a = agents[row["agent_id"]]
            a[0] += conversations
            a[1] += int(row["conversation_messages"])
            a[2] += messages
            a[3] += tokens
        d = days[row["day"]]
        d[0] += conversations
        d[1] += messages
        d[2] += tokens
    # In the enums' order, whatever order the rows came in: the same data always reads the same.
    result.conversations_by_status = {status: result.conversations_by_status.get(status, 0) for status in Status}
    result.messages_by_role = {role: result.messages_by_role.get(role, 0) for role in Role}
    result.active_conversations = result.conversations_by_status[Status.ACTIVE]
    if result.conversations:
        result.avg_messages_per_conversation = total_messages_of_conversations / result.conversations
    if closed:
        result.avg_duration_seconds = duration / closed
    result.agents = [
        AgentStats(
            agent_id=agent,
            conversations=c,
            messages=m,
            tokens=t,
            avg_messages_per_conversation=(total / c) if c else 0.0,
        )
        for agent, (c, total, m, t) in sorted(agents.items())
        if c or m
    ]
    result.daily = [
        DailyStats(day=day.isoformat(), conversations=c, messages=m, tokens=t)
        for day, (c, m, t) in sorted(days.items())
        if c or m
    ]
    return result


async def fold_rollups(db: Database, now: datetime) -> int:
    """Fold the rollup shards of every day before today (UTC) into one row per key, tenant by tenant
    (the maintenance cron; stats are equal before and after). Returns the shard rows folded."""
    before = now.astimezone(UTC).date()
    async with db.read() as conn:
        tenants = await repo.tenants_with_shards(conn, before)
    folded = 0
    async with db.read() as conn:  # one statement per tenant: each is atomic on its own
        for tenant_id in tenants:
            folded += await repo.fold_shards(conn, tenant_id, before)
    return folded
