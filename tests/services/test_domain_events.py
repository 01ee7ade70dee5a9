"""Services emit domain events into the unit of work; listeners hear them only after commit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.errors import Conflict
from app.models import ConversationRef, DomainEvent, EventType, Role, Status
from app.services import conversations, messages, state
from db.session import Database
from tests.factories import add_message, create_conversation


@pytest.fixture
def heard(db: Database) -> Iterator[list[DomainEvent]]:
    events: list[DomainEvent] = []

    async def listener(batch: list[DomainEvent]) -> None:
        events.extend(batch)

    db.listen(listener)
    yield events
    db.listeners.remove(listener)


def kinds(events: list[DomainEvent], tenant: str) -> list[EventType]:
    return [e.type for e in events if e.tenant_id == tenant]


async def test_each_write_is_heard_once_after_commit(db: Database, tenant: str, heard: list[DomainEvent]) -> None:
    r = await add_message(db, tenant, session_id="ev", content="hi", client_message_id="k")
    assert kinds(heard, tenant) == [EventType.CREATED, EventType.MESSAGE_ADDED]
    added = heard[-1]
    assert added.message is not None and added.message.seq == 1 and added.conversation is not None
    assert added.conversation.last_seq == 1 and added.conversation_id == r.conversation.id

    heard.clear()
    await add_message(db, tenant, session_id="ev", content="hi", client_message_id="k")  # a retry
    with pytest.raises(Conflict):
        await add_message(db, tenant, session_id="ev", expected_seq=9)
    assert kinds(heard, tenant) == []

    target = ConversationRef(id=r.conversation.id)
    batch = [messages.new_message(role=Role.USER, content=str(i)) for i in range(3)]
    await db.run(lambda uow: messages.append_batch(uow, tenant, target, batch))
    assert [e.message.seq for e in heard if e.message] == [2, 3, 4]

    heard.clear()
    await db.run(lambda uow: state.set_(uow, tenant, r.conversation.id, "k", 1))
    await db.run(lambda uow: state.delete(uow, tenant, r.conversation.id, "k"))
    await db.run(lambda uow: state.delete(uow, tenant, r.conversation.id, "k"))  # nothing to delete
    assert kinds(heard, tenant) == [EventType.STATE_CHANGED, EventType.STATE_CHANGED]
    assert heard[0].state is not None and heard[0].state.version == 1 and heard[1].state is None

    heard.clear()
    await db.run(lambda uow: conversations.update(uow, tenant, r.conversation.id, title="t"))
    await db.run(lambda uow: conversations.close(uow, tenant, target, "bye"))
    await db.run(lambda uow: conversations.close(uow, tenant, target, "again"))
    assert kinds(heard, tenant) == [EventType.UPDATED, EventType.CLOSED]


async def test_archiving_an_active_conversation_is_a_close(db: Database, tenant: str, heard: list[DomainEvent]) -> None:
    conv = await create_conversation(db, tenant)
    await db.run(lambda uow: conversations.update(uow, tenant, conv.id, status=Status.ARCHIVED))
    await db.run(lambda uow: conversations.update(uow, tenant, conv.id, status=Status.CLOSED))
    assert kinds(heard, tenant) == [EventType.CREATED, EventType.CLOSED, EventType.UPDATED]


async def test_a_failing_listener_does_not_fail_the_write(db: Database, tenant: str) -> None:
    async def broken(batch: list[DomainEvent]) -> None:
        raise RuntimeError("redis is down")

    db.listen(broken)
    try:
        r = await add_message(db, tenant, session_id="s")
    finally:
        db.listeners.remove(broken)
    assert r.created and r.message.seq == 1
