from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from app.errors import BadUserInput, Conflict, ConversationClosed, NotFound, PayloadTooLarge
from app.models import ConversationRef, Role, Source
from app.services import conversations, messages
from app.services.limits import Limits
from db.session import Database
from tests.factories import add_message, count_rows, create_conversation

TOOL_CALLS = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]


async def test_append_assigns_gap_free_seq_and_keeps_counters(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant, session_id="s1", agent_id="agent-a")
    results = [await add_message(db, tenant, conv, content=f"message {i}") for i in range(5)]
    assert [r.message.seq for r in results] == [1, 2, 3, 4, 5]
    assert all(r.created for r in results)
    last = results[-1].conversation
    assert last.last_seq == 5 and last.message_count == 5
    assert last.token_count == sum(r.message.token_count for r in results)
    assert last.last_message_at == results[-1].message.created_at
    created = [r.message.created_at for r in results]
    assert created == sorted(created)


async def test_append_stores_every_field(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    src = [Source(document_id="doc-1", chunk_id="c1", title="T", uri="https://x", score=0.9, snippet="s")]
    r = await add_message(
        db,
        tenant,
        conv,
        role=Role.ASSISTANT,
        content="",
        name="helper",
        tool_calls=TOOL_CALLS,
        metadata={"lang": "es"},
        sources=src,
        execution={"run_id": "r1", "model": "gpt-4o", "latency_ms": 120, "prompt_tokens": 10},
        client_message_id="c-1",
    )
    tool = await add_message(db, tenant, conv, role=Role.TOOL, content="42", tool_call_id="call_1")
    async with db.read() as conn:
        page = await messages.history(conn, tenant, tool.conversation)
        loaded = await messages.with_sources(conn, tenant, page.items)
    first, second = loaded
    assert first.id == r.message.id and first.role is Role.ASSISTANT and first.name == "helper"
    assert first.tool_calls == TOOL_CALLS and first.metadata == {"lang": "es"}
    assert first.execution == {"run_id": "r1", "model": "gpt-4o", "latency_ms": 120, "prompt_tokens": 10}
    assert first.client_message_id == "c-1" and first.sources == src
    assert second.tool_call_id == "call_1" and second.sources == []


async def test_token_count_follows_the_chat_recipe(db: Database, tenant: str) -> None:
    from app import tokens

    conv = await create_conversation(db, tenant)
    r = await add_message(db, tenant, conv, role=Role.ASSISTANT, content="hi there", name="bot", tool_calls=TOOL_CALLS)
    expected = (
        3
        + tokens.count_text("hi there")
        + tokens.count_text("bot")
        + tokens.count_text(tokens.compact_json(TOOL_CALLS))
    )
    assert r.message.token_count == expected


async def test_retry_with_client_message_id_returns_original(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    first = await add_message(db, tenant, conv, content="a", client_message_id="k1")
    again = await add_message(db, tenant, conv, content="a", client_message_id="k1")
    assert again.created is False
    assert again.message.id == first.message.id and again.message.content == "a"
    assert again.conversation.message_count == 1
    assert await count_rows(db, "messages", tenant) == 1


async def test_retry_after_close_still_returns_original(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    first = await add_message(db, tenant, conv, client_message_id="k1")
    await db.run(lambda uow: conversations.close(uow, tenant, ConversationRef(id=conv.id)))
    again = await add_message(db, tenant, conv, client_message_id="k1")
    assert again.created is False and again.message.id == first.message.id
    with pytest.raises(ConversationClosed):
        await add_message(db, tenant, conv, client_message_id="k2")


async def test_expected_seq(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    assert (await add_message(db, tenant, conv, expected_seq=1)).message.seq == 1
    with pytest.raises(Conflict) as err:
        await add_message(db, tenant, conv, expected_seq=1)
    assert err.value.details["nextSeq"] == 2
    assert (await add_message(db, tenant, conv, expected_seq=2)).message.seq == 2
    assert await count_rows(db, "messages", tenant) == 2


async def test_new_session_id_creates_the_conversation(db: Database, tenant: str) -> None:
    target = ConversationRef(session_id="fresh-session")
    msg = messages.new_message(role=Role.USER, content="hi")
    from app.models import ConversationDefaults

    r = await db.run(
        lambda uow: messages.append(
            uow, tenant, target, msg, defaults=ConversationDefaults(user_id="u1", agent_id="a1", channel="web")
        )
    )
    assert r.created and r.message.seq == 1
    assert r.conversation.session_id == "fresh-session"
    assert (r.conversation.user_id, r.conversation.agent_id, r.conversation.channel) == ("u1", "a1", "web")
    r2 = await add_message(db, tenant, session_id="fresh-session", content="again")
    assert r2.message.seq == 2 and r2.conversation.id == r.conversation.id


async def test_new_session_with_stale_expected_seq_creates_nothing(db: Database, tenant: str) -> None:
    with pytest.raises(Conflict):
        await add_message(db, tenant, session_id="s-new", expected_seq=5)
    assert await count_rows(db, "conversations", tenant) == 0


async def test_concurrent_first_appends_to_a_new_session_share_one_conversation(db: Database, tenant: str) -> None:
    results = await asyncio.gather(*(add_message(db, tenant, session_id="race", content=str(i)) for i in range(10)))
    assert len({r.conversation.id for r in results}) == 1
    assert sorted(r.message.seq for r in results) == list(range(1, 11))
    assert await count_rows(db, "conversations", tenant) == 1


async def test_unknown_conversation_id_is_not_found_and_other_tenant_too(
    db: Database, tenant: str, other_tenant: str
) -> None:
    with pytest.raises(NotFound):
        target = ConversationRef(id=uuid.uuid4())
        msg = messages.new_message(role=Role.USER, content="x")
        await db.run(lambda uow: messages.append(uow, tenant, target, msg))
    mine = await create_conversation(db, tenant, session_id="mine")
    with pytest.raises(NotFound):
        await add_message(db, other_tenant, mine)
    # by sessionId, another tenant's session is simply a new session of its own
    r = await add_message(db, other_tenant, session_id="mine")
    assert r.conversation.id != mine.id and r.conversation.tenant_id == other_tenant
    assert await count_rows(db, "messages", tenant) == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"role": Role.USER, "content": ""}, BadUserInput),
        ({"role": Role.USER, "content": "x" * (256 * 1024 + 1)}, PayloadTooLarge),
        ({"role": Role.USER, "content": "é" * (128 * 1024 + 1)}, PayloadTooLarge),
        ({"role": Role.USER, "content": "x", "metadata": {"k": "v" * 70_000}}, PayloadTooLarge),
        ({"role": Role.USER, "content": "x", "metadata": ["not", "an", "object"]}, BadUserInput),
        ({"role": Role.USER, "content": "nul\x00byte"}, BadUserInput),
        ({"role": Role.TOOL, "content": "no call id"}, BadUserInput),
        ({"role": Role.USER, "content": "x", "tool_calls": TOOL_CALLS}, BadUserInput),
        ({"role": Role.ASSISTANT, "content": "", "tool_calls": [{"id": "x"}]}, BadUserInput),
        ({"role": Role.USER, "content": "x", "tool_call_id": "c"}, BadUserInput),
        ({"role": Role.USER, "content": "x", "execution": {"latency_ms": "slow"}}, BadUserInput),
        ({"role": Role.USER, "content": "x", "execution": {"bogus": 1}}, BadUserInput),
        ({"role": Role.USER, "content": "x", "sources": [Source(document_id="")]}, BadUserInput),
        ({"role": Role.USER, "content": "x", "client_message_id": ""}, BadUserInput),
        ({"role": Role.USER, "content": "x", "metadata": {"k": "nul\x00"}}, BadUserInput),
    ],
)
async def test_bad_messages_are_rejected_before_anything_is_written(
    db: Database, tenant: str, kwargs: dict[str, object], error: type[Exception]
) -> None:
    conv = await create_conversation(db, tenant)
    with pytest.raises(error):
        await add_message(db, tenant, conv, **kwargs)  # type: ignore[arg-type]
    assert await count_rows(db, "messages", tenant) == 0
    async with db.read() as conn:
        fresh = await conversations.get(conn, tenant, ConversationRef(id=conv.id))
    assert fresh.last_seq == 0 and fresh.message_count == 0


async def test_limits_are_configurable() -> None:
    small = Limits(max_content_bytes=10)
    with pytest.raises(PayloadTooLarge):
        messages.new_message(role=Role.USER, content="x" * 11, limits=small)
    assert messages.new_message(role=Role.USER, content="x" * 10, limits=small).content == "x" * 10


async def test_batch_is_atomic_and_ordered(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    await add_message(db, tenant, conv, content="before", client_message_id="old")
    batch = [
        messages.new_message(role=Role.USER, content="q", client_message_id="b1"),
        messages.new_message(role=Role.ASSISTANT, content="", tool_calls=TOOL_CALLS, client_message_id="b2"),
        messages.new_message(role=Role.TOOL, content="r", tool_call_id="call_1", sources=[Source(document_id="d")]),
        messages.new_message(role=Role.USER, content="before", client_message_id="old"),  # a retry
    ]
    target = ConversationRef(id=conv.id)
    result = await db.run(lambda uow: messages.append_batch(uow, tenant, target, batch))
    assert [m.seq for m in result.messages] == [2, 3, 4, 1]
    assert result.created_count == 3
    assert result.messages[3].content == "before"
    assert result.conversation.last_seq == 4 and result.conversation.message_count == 4
    again = await db.run(lambda uow: messages.append_batch(uow, tenant, target, batch[:2]))
    assert again.created_count == 0 and [m.seq for m in again.messages] == [2, 3]
    async with db.read() as conn:
        page = await messages.history(conn, tenant, result.conversation)
        loaded = await messages.with_sources(conn, tenant, page.items)
    assert [m.content for m in loaded] == ["before", "q", "", "r"]
    assert loaded[3].sources == [Source(document_id="d")]


async def test_failed_batch_writes_nothing(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    target = ConversationRef(id=conv.id)
    dup = [messages.new_message(role=Role.USER, content="a", client_message_id="same")] * 2
    with pytest.raises(BadUserInput):
        await db.run(lambda uow: messages.append_batch(uow, tenant, target, dup))
    with pytest.raises(BadUserInput):
        await db.run(lambda uow: messages.append_batch(uow, tenant, target, []))
    too_many = [messages.new_message(role=Role.USER, content="a")] * 101
    with pytest.raises(BadUserInput):
        await db.run(lambda uow: messages.append_batch(uow, tenant, target, too_many))
    await db.run(lambda uow: conversations.close(uow, tenant, target))
    with pytest.raises(ConversationClosed):
        await db.run(lambda uow: messages.append_batch(uow, tenant, target, dup[:1]))
    new_session = ConversationRef(session_id="never")
    with pytest.raises(BadUserInput):
        await db.run(lambda uow: messages.append_batch(uow, tenant, new_session, dup))
    assert await count_rows(db, "messages", tenant) == 0
    assert await count_rows(db, "conversations", tenant) == 1


async def test_twenty_writers_with_retries_end_gap_free(db: Database, tenant: str) -> None:
    """20 concurrent writers x 50 appends to one conversation, 10% of them retries of an
    earlier clientMessageId (some racing their original): exactly the unique messages,
    seq 1..N without gaps, and counters equal to a recount."""
    conv = await create_conversation(db, tenant, session_id="hot")
    rng = random.Random(7)
    sent: list[str] = []

    async def writer(w: int) -> list[tuple[str, int, bool]]:
        out = []
        own: list[str] = []
        for i in range(50):
            if own and rng.random() < 0.10:
                key = rng.choice(own)
            else:
                key = f"w{w}-{i}"
                own.append(key)
                sent.append(key)
            r = await add_message(db, tenant, conv, content=f"{key} body", client_message_id=key)
            out.append((key, r.message.seq, r.created))
        return out

    async def racer() -> list[tuple[str, int, bool]]:
        # Same key from two tasks at the same moment: one creates, the other gets the original.
        out = []
        for i in range(20):
            key = f"race-{i}"
            sent.append(key)
            a, b = await asyncio.gather(
                add_message(db, tenant, conv, content=key, client_message_id=key),
                add_message(db, tenant, conv, content=key, client_message_id=key),
            )
            assert a.message.id == b.message.id and sorted([a.created, b.created]) == [False, True]
            out += [(key, a.message.seq, a.created), (key, b.message.seq, b.created)]
        return out

    results = await asyncio.gather(*(writer(w) for w in range(20)), racer())
    flat = [x for r in results for x in r]
    unique = set(sent)
    seq_by_key: dict[str, int] = {}
    for key, seq, _ in flat:
        assert seq_by_key.setdefault(key, seq) == seq, "a retry got a different message"
    assert sum(created for _, _, created in flat) == len(unique)
    async with db.read() as conn:
        rows = await conn.fetch(
            "SELECT seq, client_message_id, token_count FROM messages WHERE tenant_id = $1 ORDER BY seq", tenant
        )
        header = await conversations.get(conn, tenant, ConversationRef(id=conv.id))
    assert [r["seq"] for r in rows] == list(range(1, len(unique) + 1))
    assert {r["client_message_id"] for r in rows} == unique
    assert header.last_seq == header.message_count == len(unique)
    assert header.token_count == sum(r["token_count"] for r in rows)


async def test_history_pages(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    for i in range(1, 121):
        await add_message(db, tenant, conv, content=f"m{i}")
    async with db.read() as conn:
        conv = await conversations.get(conn, tenant, ConversationRef(id=conv.id))
        default = await messages.history(conn, tenant, conv)
        assert [m.seq for m in default.items] == list(range(71, 121))
        assert default.has_previous_page and not default.has_next_page and default.total_count == 120

        fwd = await messages.history(conn, tenant, conv, messages.HistoryArgs(first=30))
        assert [m.seq for m in fwd.items] == list(range(1, 31)) and fwd.has_next_page and not fwd.has_previous_page
        fwd2 = await messages.history(conn, tenant, conv, messages.HistoryArgs(first=100, after=fwd.end_cursor))
        assert [m.seq for m in fwd2.items] == list(range(31, 121)) and not fwd2.has_next_page
        assert fwd2.has_previous_page

        back = await messages.history(conn, tenant, conv, messages.HistoryArgs(last=20, before=default.start_cursor))
        assert [m.seq for m in back.items] == list(range(51, 71)) and back.has_next_page and back.has_previous_page

        after_seq = await messages.history(conn, tenant, conv, messages.HistoryArgs(after_seq=115))
        assert [m.seq for m in after_seq.items] == [116, 117, 118, 119, 120] and after_seq.total_count == 5
        assert not after_seq.has_next_page

        past_end = await messages.history(conn, tenant, conv, messages.HistoryArgs(after_seq=500))
        assert past_end.items == [] and past_end.total_count == 0

        m60 = (await messages.history(conn, tenant, conv, messages.HistoryArgs(after_seq=59, first=1))).items[0]
        since = await messages.history(conn, tenant, conv, messages.HistoryArgs(since=m60.created_at, first=3))
        assert next(m.seq for m in since.items) <= 60
        assert all(m.created_at >= m60.created_at for m in since.items)

        with pytest.raises(BadUserInput):
            await messages.history(conn, tenant, conv, messages.HistoryArgs(first=101))
        with pytest.raises(BadUserInput):
            await messages.history(conn, tenant, conv, messages.HistoryArgs(last=-1))
        with pytest.raises(BadUserInput):
            await messages.history(conn, tenant, conv, messages.HistoryArgs(first=1, last=1))
        with pytest.raises(BadUserInput):
            await messages.history(conn, tenant, conv, messages.HistoryArgs(after="not-a-cursor"))


async def test_one_statement_history_equals_the_planned_one(db: Database, tenant: str) -> None:
    """history_by_ref computes the page bounds in SQL; they must equal PageRequest.plan's."""
    from app.services import cursors

    conv = await create_conversation(db, tenant, session_id="paging")
    for i in range(1, 38):
        await add_message(db, tenant, conv, content=f"m{i}")
    async with db.read() as conn:
        conv = await conversations.get(conn, tenant, ConversationRef(id=conv.id))
        rng = random.Random(3)
        for _ in range(300):
            args: dict[str, object] = {}
            if rng.random() < 0.5:
                args["first" if rng.random() < 0.5 else "last"] = rng.randint(0, 12)
            if rng.random() < 0.4:
                args["after"] = cursors.seq_cursor(rng.randint(0, 40))
            if rng.random() < 0.4:
                args["before"] = cursors.seq_cursor(rng.randint(0, 40))
            if rng.random() < 0.3:
                args["after_seq"] = rng.randint(0, 40)
            ref = ConversationRef(id=conv.id) if rng.random() < 0.5 else ConversationRef(session_id="paging")
            one = await messages.history_by_ref(conn, tenant, ref, messages.HistoryArgs(**args))  # type: ignore[arg-type]
            two = await messages.history(conn, tenant, conv, messages.HistoryArgs(**args))  # type: ignore[arg-type]
            assert [m.seq for m in one.items] == [m.seq for m in two.items], args
            assert (one.has_next_page, one.has_previous_page, one.total_count) == (
                two.has_next_page,
                two.has_previous_page,
                two.total_count,
            ), args
        with pytest.raises(NotFound):
            await messages.history_by_ref(conn, tenant, ConversationRef(session_id="nope"))
