from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from app.errors import BadUserInput, Conflict, NotFound, PayloadTooLarge
from app.models import Conversation, ConversationFilter, ConversationOrder, ConversationRef, Status
from app.services import conversations
from db.session import Database
from tests.factories import add_message, count_rows, create_conversation


async def test_create_generates_session_id_and_rejects_taken_one(db: Database, tenant: str) -> None:
    a = await create_conversation(db, tenant, user_id="u1", tags=["x", "x", "y"], metadata={"plan": "pro"})
    assert a.session_id and a.status is Status.ACTIVE and a.tags == ["x", "y"] and a.metadata == {"plan": "pro"}
    b = await create_conversation(db, tenant, session_id="s-1")
    assert b.session_id == "s-1"
    with pytest.raises(Conflict):
        await create_conversation(db, tenant, session_id="s-1")
    assert await count_rows(db, "conversations", tenant) == 2


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"session_id": ""}, BadUserInput),
        ({"session_id": "x" * 201}, BadUserInput),
        ({"tags": ["t"] * 51}, BadUserInput),
        ({"tags": [""]}, BadUserInput),
        ({"metadata": {"big": "x" * 70_000}}, PayloadTooLarge),
        ({"metadata": "not-an-object"}, BadUserInput),
    ],
)
async def test_create_rejects_bad_input(db: Database, tenant: str, fields: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        await create_conversation(db, tenant, **fields)
    assert await count_rows(db, "conversations", tenant) == 0


async def test_bad_tenant_id_is_rejected(db: Database) -> None:
    with pytest.raises(BadUserInput):
        await create_conversation(db, "bad tenant/id")


async def test_get_by_id_or_session_is_tenant_scoped(db: Database, tenant: str, other_tenant: str) -> None:
    conv = await create_conversation(db, tenant, session_id="abc")
    async with db.read() as conn:
        assert (await conversations.get(conn, tenant, ConversationRef(id=conv.id))).id == conv.id
        assert (await conversations.get(conn, tenant, ConversationRef(session_id="abc"))).id == conv.id
        assert await conversations.find(conn, other_tenant, ConversationRef(id=conv.id)) is None
        assert await conversations.find(conn, other_tenant, ConversationRef(session_id="abc")) is None
        with pytest.raises(NotFound):
            await conversations.get(conn, other_tenant, ConversationRef(id=conv.id))


def test_ref_needs_exactly_one() -> None:
    with pytest.raises(BadUserInput):
        conversations.ref(None, None)
    with pytest.raises(BadUserInput):
        conversations.ref("0b6d9a3e-4f53-4f0f-9c47-1d2f4a9e5c11", "s")
    with pytest.raises(BadUserInput):
        conversations.ref("not-a-uuid", None)


async def test_update_merges_metadata_and_close_is_idempotent(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant, title="t", metadata={"a": 1, "b": 2})
    updated = await db.run(
        lambda uow: conversations.update(uow, tenant, conv.id, tags=["vip"], metadata={"b": 3, "c": 4})
    )
    assert updated.title == "t" and updated.tags == ["vip"] and updated.metadata == {"a": 1, "b": 3, "c": 4}
    cleared = await db.run(lambda uow: conversations.update(uow, tenant, conv.id, title=None))
    assert cleared.title is None
    ref = ConversationRef(id=conv.id)
    closed, did = await db.run(lambda uow: conversations.close(uow, tenant, ref, "user left"))
    assert did and closed.status is Status.CLOSED and closed.close_reason == "user left" and closed.closed_at
    again, did_again = await db.run(lambda uow: conversations.close(uow, tenant, ref, "other"))
    assert not did_again and again.closed_at == closed.closed_at and again.close_reason == "user left"
    archived = await db.run(lambda uow: conversations.update(uow, tenant, conv.id, status=Status.ARCHIVED))
    assert archived.status is Status.ARCHIVED and archived.closed_at == closed.closed_at
    with pytest.raises(NotFound):
        await db.run(lambda uow: conversations.update(uow, "someone-else", conv.id, title="x"))


def _matches(c: Conversation, f: ConversationFilter) -> bool:
    return (
        (f.user_id is None or c.user_id == f.user_id)
        and (f.agent_id is None or c.agent_id == f.agent_id)
        and (f.status is None or c.status == f.status)
        and (not f.tags or set(f.tags) <= set(c.tags))
        and (f.created_from is None or c.created_at >= f.created_from)
        and (f.created_to is None or c.created_at < f.created_to)
        and (not f.metadata or all(c.metadata.get(k) == v for k, v in f.metadata.items()))
    )


async def test_list_filters_pages_and_totals_equal_brute_force(db: Database, tenant: str) -> None:
    rng = random.Random(11)
    created: list[Conversation] = []
    for i in range(60):
        conv = await create_conversation(
            db,
            tenant,
            user_id=rng.choice(["u1", "u2", "u3"]),
            agent_id=rng.choice(["a1", "a2", None]),
            tags=rng.sample(["vip", "es", "bug", "sales"], rng.randint(0, 3)),
            metadata={"plan": rng.choice(["free", "pro"]), "n": i % 4},
        )
        for _ in range(rng.randint(0, 3)):
            await add_message(db, tenant, conv)
        if rng.random() < 0.3:
            await db.run(partial(conversations.close, tenant_id=tenant, target=ConversationRef(id=conv.id)))
        created.append(conv)
    async with db.read() as conn:
        everything = {c.id: c for c in (await conversations.get_many(conn, tenant, [c.id for c in created])).values()}
        mid = sorted(c.created_at for c in everything.values())[30]
        filters = [
            ConversationFilter(),
            ConversationFilter(user_id="u1"),
            ConversationFilter(agent_id="a2", status=Status.ACTIVE),
            ConversationFilter(tags=["vip"]),
            ConversationFilter(tags=["vip", "es"]),
            ConversationFilter(created_from=mid),
            ConversationFilter(created_to=mid, metadata={"plan": "pro"}),
            ConversationFilter(metadata={"n": 2}),
            ConversationFilter(status=Status.CLOSED, user_id="u3"),
        ]
        for f in filters:
            for order in ConversationOrder:
                expected = [c for c in everything.values() if _matches(c, f)]
                if order is ConversationOrder.LAST_ACTIVITY_DESC:
                    expected.sort(key=lambda c: (c.last_activity_at, c.id), reverse=True)
                elif order is ConversationOrder.CREATED_AT_DESC:
                    expected.sort(key=lambda c: (c.created_at, c.id), reverse=True)
                else:
                    expected.sort(key=lambda c: (c.created_at, c.id))
                seen: list[Conversation] = []
                after = None
                while True:
                    page = await conversations.list_(conn, tenant, f, first=7, after=after, order=order)
                    assert page.total_count == len(expected)
                    seen += page.items
                    if not page.has_next_page:
                        break
                    after = page.end_cursor
                assert [c.id for c in seen] == [c.id for c in expected], (f, order)


async def test_list_validates_input(db: Database, tenant: str) -> None:
    async with db.read() as conn:
        with pytest.raises(BadUserInput):
            await conversations.list_(conn, tenant, first=101)
        with pytest.raises(BadUserInput):
            await conversations.list_(conn, tenant, first=-1)
        with pytest.raises(BadUserInput):
            await conversations.list_(conn, tenant, after="garbage!")
        now = datetime.now(UTC)
        with pytest.raises(BadUserInput):
            await conversations.list_(
                conn, tenant, ConversationFilter(created_from=now, created_to=now - timedelta(days=1))
            )
        empty = await conversations.list_(conn, tenant, first=0)
        assert empty.items == [] and empty.total_count == 0
