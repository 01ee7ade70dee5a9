"""Daily rollups (issue 11) equal brute force over the rows after random write sequences."""

from __future__ import annotations

import contextlib
import functools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.errors import ConversationClosed
from app.models import Conversation, ConversationRef, Role
from app.services import conversations, messages, stats, transfer
from db.repositories import stats as stats_repo
from db.session import Database, UnitOfWork, on_citus
from tests.factories import create_conversation


def _key(r: Any) -> tuple[Any, ...]:
    return (r["day"], r["agent_id"], r["role"], r["status"])


def _values(r: Any) -> tuple[Any, ...]:
    return (
        int(r["conversations"]),
        int(r["conversation_messages"]),
        int(r["closed"]),
        round(float(r["duration_seconds"]), 3),
        int(r["messages"]),
        int(r["tokens"]),
    )


async def _assert_rollups_equal_brute_force(db: Database, tenant: str) -> None:
    async with db.read() as conn:
        # The table itself at full grain (shards summed), against the rows.
        rolled = await conn.fetch(
            "SELECT day, agent_id, role, status, sum(conversations) AS conversations, "
            "sum(conversation_messages) AS conversation_messages, sum(closed) AS closed, "
            "sum(duration_seconds) AS duration_seconds, sum(messages) AS messages, sum(tokens) AS tokens "
            "FROM stats_daily WHERE tenant_id = $1 GROUP BY 1, 2, 3, 4 "
            "HAVING sum(conversations) <> 0 OR sum(messages) <> 0",
            tenant,
        )
        exact = await stats_repo.exact_facts(conn, tenant, None, None, None)
    assert {_key(r): _values(r) for r in rolled} == {_key(r): _values(r) for r in exact}


async def _batch(db: Database, tenant: str, conv_id: Any, rng: random.Random) -> None:
    """Append a batch (a closed conversation refuses it and nothing changes, which is checked too)."""
    batch = [
        messages.new_message(
            role=rng.choice([Role.USER, Role.ASSISTANT, Role.SYSTEM]), content="word " * rng.randint(1, 40)
        )
        for _ in range(rng.randint(1, 5))
    ]
    with contextlib.suppress(ConversationClosed):
        await db.run(lambda uow: messages.append_batch(uow, tenant, ConversationRef(id=conv_id), batch))


async def test_rollups_follow_appends_closes_imports_moves_and_deletions(db: Database, tenant: str) -> None:
    rng = random.Random(11)
    convs: list[Conversation] = []
    for step in range(60):
        op = rng.random()
        if op < 0.2 or not convs:
            convs.append(await create_conversation(db, tenant, agent_id=rng.choice(["a1", "a2", None])))
        elif op < 0.6:
            await _batch(db, tenant, rng.choice(convs).id, rng)
        elif op < 0.7:
            target = ConversationRef(id=rng.choice(convs).id)
            await db.run(functools.partial(conversations.close, tenant_id=tenant, target=target))
        elif op < 0.8:
            created = datetime(2025, 1, 1, 23, 30, tzinfo=UTC) + timedelta(days=step)
            raw = {
                "conversation": {
                    "session_id": f"imp-{step}",
                    "status": rng.choice(["active", "closed"]),
                    "agent_id": "a3",
                    "created_at": created.isoformat(),
                },
                "messages": [
                    {
                        "role": "user",
                        "content": f"m{i}",
                        "client_message_id": f"c{i}",
                        "created_at": (created + timedelta(minutes=20 * i)).isoformat(),
                    }
                    for i in range(rng.randint(1, 6))
                ],
            }
            line = transfer.parse_line(raw)
            await db.run(functools.partial(transfer.import_conversation, tenant_id=tenant, line=line))
            # Importing it again creates nothing and must not count twice.
            await db.run(functools.partial(transfer.import_conversation, tenant_id=tenant, line=line))
        elif op < 0.9:
            # Rewritten history (as tests and repairs do): facts move between days and agents.
            victim = rng.choice(convs)
            async with db.read() as conn:
                await conn.execute(
                    # UTC wall-clock arithmetic (immutable): Citus refuses a stable function over a column.
                    "UPDATE messages SET created_at = (created_at AT TIME ZONE 'UTC' - interval '2 days') "
                    "AT TIME ZONE 'UTC' "
                    "WHERE tenant_id = $1 AND conversation_id = $2",
                    tenant,
                    victim.id,
                )
                await conn.execute(
                    "UPDATE conversations SET agent_id = $3 WHERE tenant_id = $1 AND id = $2",
                    tenant,
                    victim.id,
                    rng.choice(["a1", "a9", None]),
                )
        else:
            victim = convs.pop(rng.randrange(len(convs)))
            async with db.read() as conn:
                if rng.random() < 0.5:
                    await conn.execute(
                        "DELETE FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND seq % 2 = 0",
                        tenant,
                        victim.id,
                    )
                    # As a deletion keeps the counter (the message facts went with the rows).
                    await conn.execute(
                        "UPDATE conversations SET message_count = (SELECT count(*) FROM messages "
                        "WHERE tenant_id = $1 AND conversation_id = $2) WHERE tenant_id = $1 AND id = $2",
                        tenant,
                        victim.id,
                    )
                    convs.append(victim)
                else:  # messages and sources go by cascade
                    await conn.execute("DELETE FROM conversations WHERE tenant_id = $1 AND id = $2", tenant, victim.id)
        if step % 10 == 9:
            await _assert_rollups_equal_brute_force(db, tenant)
    await _assert_rollups_equal_brute_force(db, tenant)
    # Folding the shards of past days changes no total, and writes after it still add up.
    async with db.read() as conn:
        shards_before = await conn.fetchval("SELECT count(*) FROM stats_daily WHERE tenant_id = $1", tenant)
    assert await stats.fold_rollups(db, datetime.now(UTC) + timedelta(days=2)) > 0
    async with db.read() as conn:
        left = await conn.fetchval("SELECT count(*) FROM stats_daily WHERE tenant_id = $1 AND shard <> 0", tenant)
        shards_after = await conn.fetchval("SELECT count(*) FROM stats_daily WHERE tenant_id = $1", tenant)
    assert left == 0 and shards_after < shards_before
    await _assert_rollups_equal_brute_force(db, tenant)
    await _batch(db, tenant, convs[0].id, rng)
    await _assert_rollups_equal_brute_force(db, tenant)


async def test_single_append_rolls_itself_up_and_later_statements_still_fire(db: Database, tenant: str) -> None:
    """The plain single append upserts its own rollup (the trigger skips that one statement);
    appends, batches and a sessionId-created conversation in ONE transaction are each counted
    exactly once: the skip marker never leaks into a later statement."""
    conv = await create_conversation(db, tenant, agent_id="a1")
    other = await create_conversation(db, tenant, agent_id="a2")

    def msg(role: Role, content: str) -> Any:
        return messages.new_message(role=role, content=content)

    async def mixed(uow: UnitOfWork) -> None:
        ref = ConversationRef(id=conv.id)
        await messages.append(uow, tenant, ref, msg(Role.USER, "one two three"))
        await messages.append_batch(uow, tenant, ref, [msg(Role.ASSISTANT, "four"), msg(Role.USER, "five six")])
        await messages.append(uow, tenant, ConversationRef(id=other.id), msg(Role.SYSTEM, "seven"))
        await messages.append(uow, tenant, ConversationRef(session_id="rollup-new"), msg(Role.USER, "eight"))
        await messages.append_batch(uow, tenant, ref, [msg(Role.ASSISTANT, "nine")])

    await db.run(mixed)
    await _assert_rollups_equal_brute_force(db, tenant)
    if on_citus():
        return  # the Citus append (append_message()) leaves its rollup to the shard's trigger
    # With the trigger out of the way (the import's deferred mode skips it), a single append is
    # still rolled up: the statement did it itself, a batch (trigger only) is not.

    async def deferred(uow: UnitOfWork) -> None:
        await (await uow.begin()).execute("SELECT set_config('conversation_service.rollups', 'deferred', true)")
        await messages.append(uow, tenant, ConversationRef(id=conv.id), msg(Role.USER, "ten eleven"))

    await db.run(deferred)
    await _assert_rollups_equal_brute_force(db, tenant)
    with pytest.raises(AssertionError):

        async def batch_deferred(uow: UnitOfWork) -> None:
            await (await uow.begin()).execute("SELECT set_config('conversation_service.rollups', 'deferred', true)")
            await messages.append_batch(uow, tenant, ConversationRef(id=conv.id), [msg(Role.USER, "twelve")])

        await db.run(batch_deferred)
        await _assert_rollups_equal_brute_force(db, tenant)


async def test_stats_over_unaligned_ranges_equal_exact_counts(db: Database, tenant: str) -> None:
    """Whole days come from the rollups, the partial edges from the rows: the sum is exact."""
    rng = random.Random(3)
    base = datetime(2026, 2, 1, tzinfo=UTC)
    for i in range(12):
        conv = await create_conversation(db, tenant, agent_id=rng.choice(["x", "y"]))
        await _batch(db, tenant, conv.id, rng)
        async with db.read() as conn:
            at = base + timedelta(hours=7 * i)
            await conn.execute(
                "UPDATE conversations SET created_at = $3 WHERE tenant_id = $1 AND id = $2", tenant, conv.id, at
            )
            await conn.execute(
                "UPDATE messages SET created_at = ($3::timestamptz AT TIME ZONE 'UTC' + interval '1 hour' * seq) "
                "AT TIME ZONE 'UTC' WHERE tenant_id = $1 "
                "AND conversation_id = $2",
                tenant,
                conv.id,
                at,
            )
    for lo_h, hi_h in [(0, 96), (5, 30), (3, 11), (13, 13), (25, 71)]:
        lo, hi = base + timedelta(hours=lo_h), base + timedelta(hours=hi_h)
        async with db.read() as conn:
            got = await stats.tenant_stats(conn, tenant, lo, hi)
            exact = await stats_repo.exact_facts(conn, tenant, lo, hi, None)
            by_agent = await stats.tenant_stats(conn, tenant, lo, hi, "x")
            exact_x = await stats_repo.exact_facts(conn, tenant, lo, hi, "x")
        assert got.conversations == sum(int(r["conversations"]) for r in exact)
        assert got.messages == sum(int(r["messages"]) for r in exact)
        assert got.tokens == sum(int(r["tokens"]) for r in exact)
        assert by_agent.messages == sum(int(r["messages"]) for r in exact_x)
        for agent in got.agents:
            rows = [r for r in exact if r["agent_id"] == agent.agent_id]
            assert agent.messages == sum(int(r["messages"]) for r in rows)
            assert agent.conversations == sum(int(r["conversations"]) for r in rows)
        assert {a.agent_id for a in got.agents} == {r["agent_id"] for r in exact if r["agent_id"]}
        assert {d.day for d in got.daily} == {r["day"].isoformat() for r in exact}
