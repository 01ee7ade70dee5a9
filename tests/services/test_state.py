from __future__ import annotations

import uuid

import pytest

from app.errors import BadUserInput, Conflict, NotFound, PayloadTooLarge
from app.models import ConversationRef
from app.services import state
from db.session import Database
from tests.factories import count_rows, create_conversation


async def test_versions_and_compare_and_set(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    e1 = await db.run(lambda uow: state.set_(uow, tenant, conv.id, "step", {"n": 1}, expected_version=0))
    assert e1.version == 1 and e1.value == {"n": 1}
    with pytest.raises(Conflict):
        await db.run(lambda uow: state.set_(uow, tenant, conv.id, "step", {"n": 9}, expected_version=0))
    e2 = await db.run(lambda uow: state.set_(uow, tenant, conv.id, "step", {"n": 2}, expected_version=1))
    assert e2.version == 2
    with pytest.raises(Conflict) as err:
        await db.run(lambda uow: state.set_(uow, tenant, conv.id, "step", {"n": 3}, expected_version=1))
    assert err.value.details["currentVersion"] == 2
    e3 = await db.run(lambda uow: state.set_(uow, tenant, conv.id, "step", [1, 2, 3]))
    assert e3.version == 3 and e3.value == [1, 2, 3]
    with pytest.raises(Conflict):
        await db.run(lambda uow: state.set_(uow, tenant, conv.id, "missing", 1, expected_version=4))
    await db.run(lambda uow: state.set_(uow, tenant, conv.id, "a", "text"))
    async with db.read() as conn:
        assert [e.key for e in await state.list_(conn, tenant, conv.id)] == ["a", "step"]
        got = await state.get(conn, tenant, conv.id, "step")
        assert got is not None and got.value == [1, 2, 3]
    assert await db.run(lambda uow: state.delete(uow, tenant, conv.id, "a")) is True
    assert await db.run(lambda uow: state.delete(uow, tenant, conv.id, "a")) is False
    async with db.read() as conn:
        assert await state.get(conn, tenant, conv.id, "a") is None


async def test_state_is_tenant_scoped_and_validated(db: Database, tenant: str, other_tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    with pytest.raises(NotFound):
        await db.run(lambda uow: state.set_(uow, other_tenant, conv.id, "k", 1))
    with pytest.raises(NotFound):
        await db.run(lambda uow: state.set_(uow, tenant, uuid.uuid4(), "k", 1))
    with pytest.raises(NotFound):
        await db.run(lambda uow: state.delete(uow, other_tenant, conv.id, "k"))
    with pytest.raises(BadUserInput):
        await db.run(lambda uow: state.set_(uow, tenant, conv.id, "", 1))
    with pytest.raises(BadUserInput):
        await db.run(lambda uow: state.set_(uow, tenant, conv.id, "k", 1, expected_version=-1))
    with pytest.raises(PayloadTooLarge):
        await db.run(lambda uow: state.set_(uow, tenant, conv.id, "k", "x" * 300_000))
    assert await count_rows(db, "conversation_state", tenant) == 0


async def test_set_by_ref_names_the_conversation_by_session_id(db: Database, tenant: str, other_tenant: str) -> None:
    """The update_state action's use case in one service call: lookup and write in one
    transaction; an unknown or foreign sessionId is NOT_FOUND and writes nothing."""
    conv = await create_conversation(db, tenant, session_id="s-state-ref")
    ref = ConversationRef(session_id="s-state-ref")
    with pytest.raises(NotFound):
        await db.run(lambda uow: state.set_by_ref(uow, other_tenant, ref, "k", 1))
    with pytest.raises(NotFound):
        await db.run(lambda uow: state.set_by_ref(uow, tenant, ConversationRef(session_id="nope"), "k", 1))
    assert await count_rows(db, "conversation_state", tenant) == 0
    first = await db.run(lambda uow: state.set_by_ref(uow, tenant, ref, "k", {"n": 1}, expected_version=0))
    assert first.version == 1
    with pytest.raises(Conflict):
        await db.run(lambda uow: state.set_by_ref(uow, tenant, ref, "k", 2, expected_version=0))
    by_id = await db.run(lambda uow: state.set_by_ref(uow, tenant, ConversationRef(id=conv.id), "k", 3))
    assert by_id.version == 2 and by_id.value == 3
