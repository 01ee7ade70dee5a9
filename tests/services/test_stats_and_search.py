from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from app.errors import BadUserInput
from app.models import ConversationFilter, ConversationRef, Role, Status
from app.services import conversations, search, stats
from db.session import Database
from tests.factories import add_message, create_conversation

BASE = datetime(2026, 3, 1, tzinfo=UTC)


async def _seed(db: Database, tenant: str) -> None:
    """Conversations and messages spread over ten days (timestamps moved by SQL after writing)."""
    rng = random.Random(5)
    for _i in range(30):
        conv = await create_conversation(db, tenant, agent_id=rng.choice(["a1", "a2", "a3", None]))
        for _ in range(rng.randint(0, 6)):
            await add_message(
                db,
                tenant,
                conv,
                role=rng.choice([Role.USER, Role.ASSISTANT, Role.SYSTEM]),
                content="w " * rng.randint(1, 30),
            )
        if rng.random() < 0.5:
            await db.run(partial(conversations.close, tenant_id=tenant, target=ConversationRef(id=conv.id)))
        start = BASE + timedelta(days=rng.randint(0, 9), hours=rng.randint(0, 23))
        async with db.read() as conn:
            await conn.execute(
                """
                UPDATE conversations SET created_at = $3::timestamptz,
                    closed_at = CASE WHEN closed_at IS NULL THEN NULL ELSE $3::timestamptz + interval '1 hour' * $4 END
                WHERE tenant_id = $1 AND id = $2
                """,
                tenant,
                conv.id,
                start,
                rng.randint(1, 30),
            )
            await conn.execute(
                "UPDATE messages SET created_at = $3::timestamptz + interval '3 hours' * seq WHERE tenant_id = $1 AND conversation_id = $2",
                tenant,
                conv.id,
                start,
            )


def _brute(
    convs: list[Any], msgs: list[Any], start: datetime | None, end: datetime | None, agent: str | None
) -> dict[str, Any]:
    def in_range(t: datetime) -> bool:
        return (start is None or t >= start) and (end is None or t < end)

    agent_of = {c["id"]: c["agent_id"] for c in convs}
    cs = [c for c in convs if in_range(c["created_at"]) and (agent is None or c["agent_id"] == agent)]
    ms = [m for m in msgs if in_range(m["created_at"]) and (agent is None or agent_of[m["conversation_id"]] == agent)]
    closed = [c for c in cs if c["closed_at"] is not None]
    agents: dict[str, dict[str, float]] = defaultdict(lambda: {"c": 0, "total": 0, "m": 0, "t": 0})
    for c in cs:
        if c["agent_id"]:
            agents[c["agent_id"]]["c"] += 1
            agents[c["agent_id"]]["total"] += c["message_count"]
    for m in ms:
        a = agent_of[m["conversation_id"]]
        if a:
            agents[a]["m"] += 1
            agents[a]["t"] += m["token_count"]
    daily: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for c in cs:
        daily[c["created_at"].date().isoformat()][0] += 1
    for m in ms:
        daily[m["created_at"].date().isoformat()][1] += 1
        daily[m["created_at"].date().isoformat()][2] += m["token_count"]
    return {
        "conversations": len(cs),
        "by_status": Counter(c["status"] for c in cs),
        "messages": len(ms),
        "by_role": Counter(m["role"] for m in ms),
        "tokens": sum(m["token_count"] for m in ms),
        "avg_messages": (sum(c["message_count"] for c in cs) / len(cs)) if cs else 0.0,
        "avg_duration": (sum((c["closed_at"] - c["created_at"]).total_seconds() for c in closed) / len(closed))
        if closed
        else None,
        "agents": {k: (v["c"], v["m"], v["t"], v["total"] / v["c"] if v["c"] else 0.0) for k, v in agents.items()},
        "daily": {k: tuple(v) for k, v in daily.items()},
    }


async def test_stats_equal_brute_force_recounts(db: Database, tenant: str) -> None:
    await _seed(db, tenant)
    async with db.read() as conn:
        convs = await conn.fetch("SELECT * FROM conversations WHERE tenant_id = $1", tenant)
        msgs = await conn.fetch("SELECT * FROM messages WHERE tenant_id = $1", tenant)
        ranges = [(None, None), (BASE + timedelta(days=2), BASE + timedelta(days=6)), (BASE + timedelta(days=8), None)]
        for start, end in ranges:
            for agent in (None, "a2"):
                got = await stats.tenant_stats(conn, tenant, start, end, agent)
                want = _brute(list(convs), list(msgs), start, end, agent)
                assert got.conversations == want["conversations"]
                assert {s.value: n for s, n in got.conversations_by_status.items() if n} == dict(want["by_status"])
                assert got.active_conversations == want["by_status"].get("active", 0)
                assert got.messages == want["messages"] and got.tokens == want["tokens"]
                assert {r.value: n for r, n in got.messages_by_role.items() if n} == dict(want["by_role"])
                assert got.avg_messages_per_conversation == pytest.approx(want["avg_messages"])
                if want["avg_duration"] is None:
                    assert got.avg_duration_seconds is None
                else:
                    assert got.avg_duration_seconds == pytest.approx(want["avg_duration"])
                assert {
                    a.agent_id: (a.conversations, a.messages, a.tokens, pytest.approx(a.avg_messages_per_conversation))
                    for a in got.agents
                } == want["agents"]
                assert {d.day: (d.conversations, d.messages, d.tokens) for d in got.daily} == want["daily"]
                assert [d.day for d in got.daily] == sorted(d.day for d in got.daily)
        with pytest.raises(BadUserInput):
            await stats.tenant_stats(conn, tenant, BASE, BASE - timedelta(days=1))


async def test_stats_of_an_empty_tenant(db: Database, tenant: str) -> None:
    async with db.read() as conn:
        got = await stats.tenant_stats(conn, tenant)
    assert got.conversations == 0 and got.messages == 0 and got.avg_duration_seconds is None
    assert set(got.conversations_by_status) == set(Status) and set(got.messages_by_role) == set(Role)


async def test_search_finds_within_tenant_with_filters_and_pages(db: Database, tenant: str, other_tenant: str) -> None:
    a = await create_conversation(db, tenant, agent_id="sales")
    b = await create_conversation(db, tenant, agent_id="support")
    other = await create_conversation(db, other_tenant)
    for i in range(5):
        await add_message(db, tenant, a, content=f"the invoice number {i} is overdue")
    await add_message(db, tenant, b, content="my invoice never arrived")
    await add_message(db, tenant, b, content="unrelated chatter")
    await add_message(db, other_tenant, other, content="invoice from another tenant")
    async with db.read() as conn:
        page = await search.search_messages(conn, tenant, "invoice", first=4)
        assert page.total_count == 6 and len(page.items) == 4 and page.has_next_page
        rest = await search.search_messages(conn, tenant, "invoice", first=4, after=page.end_cursor)
        assert len(rest.items) == 2 and not rest.has_next_page
        ids = [(m.conversation_id, m.seq) for m in page.items + rest.items]
        assert len(set(ids)) == 6 and all(m.tenant_id == tenant for m in page.items + rest.items)
        times = [m.created_at for m in page.items + rest.items]
        assert times == sorted(times, reverse=True)
        support = await search.search_messages(conn, tenant, "invoice", ConversationFilter(agent_id="support"))
        assert [m.content for m in support.items] == ["my invoice never arrived"]
        phrase = await search.search_messages(conn, tenant, '"never arrived"')
        assert phrase.total_count == 1
        negated = await search.search_messages(conn, tenant, "invoice -overdue")
        assert negated.total_count == 1
        none = await search.search_messages(conn, other_tenant, "overdue")
        assert none.total_count == 0 and none.items == []
        with pytest.raises(BadUserInput):
            await search.search_messages(conn, tenant, "   ")
