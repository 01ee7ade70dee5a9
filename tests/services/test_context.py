"""Context windows: each rule on its own, then hypothesis against a plain reference that loads
the whole history, then the O(window) cost on a long conversation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from functools import partial
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app import tokens
from app.errors import BadUserInput, NotFound
from app.models import Conversation, ConversationRef, Message, NewMessage, Role
from app.services import context, messages, state
from app.services.context import ContextWindow, build_window
from db.repositories import context as context_repo
from db.repositories import messages as message_repo
from db.repositories.context import Prelude
from db.session import Database, UnitOfWork
from tests.factories import add_message, create_conversation

Spec = dict[str, Any]


# ---------------------------------------------------------------- helpers


def user(content: str) -> Spec:
    return {"role": Role.USER, "content": content}


def assistant(content: str) -> Spec:
    return {"role": Role.ASSISTANT, "content": content}


def system(content: str) -> Spec:
    return {"role": Role.SYSTEM, "content": content}


def call(*ids: str, content: str = "") -> Spec:
    calls = [{"id": i, "type": "function", "function": {"name": "lookup", "arguments": f'{{"q":"{i}"}}'}} for i in ids]
    return {"role": Role.ASSISTANT, "content": content, "tool_calls": calls}


def tool(call_id: str, content: str) -> Spec:
    return {"role": Role.TOOL, "content": content, "tool_call_id": call_id}


async def seed(db: Database, tenant: str, specs: list[Spec]) -> Conversation:
    """A new conversation holding `specs` (through the service: real token counts)."""
    conv = await create_conversation(db, tenant, session_id=f"s-{uuid.uuid4().hex}")
    target = ConversationRef(id=conv.id)

    async def append(uow: UnitOfWork, batch: list[NewMessage]) -> Conversation:
        return (await messages.append_batch(uow, tenant, target, batch)).conversation

    for i in range(0, len(specs), 100):
        batch = [messages.new_message(**s) for s in specs[i : i + 100]]
        conv = await db.run(partial(append, batch=batch))
    return conv


async def put_state(db: Database, tenant: str, conv: Conversation, key: str, value: Any) -> None:
    await db.run(lambda uow: state.set_(uow, tenant, conv.id, key, value))


async def window(db: Database, tenant: str, conv: Conversation, **kwargs: Any) -> ContextWindow:
    async with db.read() as conn:
        return await build_window(conn, tenant, conv, **kwargs)


def seqs(w: ContextWindow) -> list[int]:
    return [m.seq for m in w.messages]


def n_tokens(text: str, encoding: str = tokens.DEFAULT_ENCODING) -> int:
    return tokens.count_message(text, encoding=encoding)


# ---------------------------------------------------------------- rules, one at a time


async def test_a_window_that_holds_everything(db: Database, tenant: str) -> None:
    conv = await seed(
        db,
        tenant,
        [
            system("You are terse."),
            user("hi"),
            call("c1"),
            tool("c1", "42"),
            {**assistant("the answer is 42"), "name": "bot"},
        ],
    )
    w = await window(db, tenant, conv, max_tokens=10_000)
    assert seqs(w) == [1, 2, 3, 4, 5]
    assert (w.first_seq, w.last_seq, w.dropped_messages, w.truncated) == (1, 5, 0, False)
    assert (w.model, w.encoding, w.max_tokens, w.reserve_tokens, w.summary) == ("gpt-4o", "o200k_base", 10_000, 0, None)
    assert w.total_tokens == conv.token_count + tokens.REPLY_PRIMING
    assert w.openai_messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": call("c1")["tool_calls"]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "assistant", "content": "the answer is 42", "name": "bot"},
    ]


async def test_empty_conversation(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    w = await window(db, tenant, conv, max_tokens=3)
    assert (w.messages, w.openai_messages, w.first_seq, w.last_seq) == ([], [], None, None)
    assert (w.total_tokens, w.dropped_messages, w.truncated) == (3, 0, False)


async def test_budget_model_and_tenant_are_checked(db: Database, tenant: str, other_tenant: str) -> None:
    conv = await seed(db, tenant, [user("hello")])
    for kwargs in (
        {"max_tokens": 0},
        {"max_tokens": -5},
        {"max_tokens": 10, "reserve_tokens": -1},
        {"max_tokens": 10, "reserve_tokens": 11},  # budget < 0
        {"max_tokens": 10, "reserve_tokens": 8},  # budget 2: not even the reply priming fits
        {"max_tokens": 100, "model": "no such model"},
        {"max_tokens": 100, "model": ""},
    ):
        with pytest.raises(BadUserInput):
            await window(db, tenant, conv, **kwargs)
    with pytest.raises(NotFound):
        await window(db, other_tenant, conv, max_tokens=100)
    w = await window(db, tenant, conv, max_tokens=10, reserve_tokens=7)  # budget 3: an empty, truncated window
    assert (w.messages, w.total_tokens, w.truncated, w.dropped_messages) == ([], 3, True, 1)
    w = await window(db, tenant, conv, max_tokens=100, model="gpt-4", default_model="gpt-4o")
    assert (w.model, w.encoding) == ("gpt-4", "cl100k_base")
    w = await window(db, tenant, conv, max_tokens=100, default_model="gpt-3.5-turbo")
    assert (w.model, w.encoding) == ("gpt-3.5-turbo", "cl100k_base")


async def test_models_without_an_encoding_get_an_approximate_window_within_budget(db: Database, tenant: str) -> None:
    conv = await seed(db, tenant, [user(f"message number {i} " + "word " * 20) for i in range(40)])
    exact = await window(db, tenant, conv, max_tokens=400, model="gpt-4o")
    assert (exact.encoding, exact.approximate) == ("o200k_base", False)
    for model in ("claude-3-5-sonnet-latest", "llama-3", "gemini-1.5-pro", "zz-unknown-model-7b"):
        w = await window(db, tenant, conv, max_tokens=400, reserve_tokens=50, model=model)
        assert w.approximate and w.model == model
        assert w.encoding == tokens.model_tokens(model).encoding
        # Recounted independently in the counted encoding: within the budget, with the margin kept.
        recount = tokens.REPLY_PRIMING + sum(n_tokens(m.content, w.encoding) for m in w.messages)
        assert recount == w.total_tokens <= tokens.approximate_budget(350) < 350
        assert w.messages and w.messages[-1].seq == 40 and w.truncated


async def test_newest_contiguous_suffix_within_the_budget(db: Database, tenant: str) -> None:
    small, big = "ok", "word " * 200
    conv = await seed(db, tenant, [user(small), user(small), user(big), user(small), user(small)])
    per_small = n_tokens(small)
    # Room for the two newest small ones and much more, but not for the big one: the window stops
    # there even though the two oldest (small) messages would still fit.
    budget = 3 + 4 * per_small + 10
    w = await window(db, tenant, conv, max_tokens=budget + 50, reserve_tokens=50)
    assert seqs(w) == [4, 5]
    assert (w.total_tokens, w.truncated, w.dropped_messages) == (3 + 2 * per_small, True, 3)
    assert (w.first_seq, w.last_seq) == (4, 5)
    exact = await window(db, tenant, conv, max_tokens=3 + 2 * per_small)  # exactly full is allowed
    assert seqs(exact) == [4, 5] and exact.total_tokens == exact.max_tokens


async def test_first_system_message_is_pinned(db: Database, tenant: str) -> None:
    conv = await seed(
        db, tenant, [system("PROMPT"), *[user(f"message {i}") for i in range(20)], system("handoff to agent B")]
    )
    last = conv.last_seq
    room = n_tokens("PROMPT") + n_tokens("handoff to agent B") + n_tokens("message 19") + 3
    w = await window(db, tenant, conv, max_tokens=room)
    assert seqs(w) == [1, last - 1, last]  # pinned, then the newest; the later SYSTEM message is ordinary
    assert w.openai_messages[0] == {"role": "system", "content": "PROMPT"}
    assert (w.first_seq, w.last_seq, w.truncated, w.dropped_messages) == (1, last, True, last - 3)
    # include_system=False leaves the system prompt out everywhere, even when everything else fits.
    w = await window(db, tenant, conv, max_tokens=10_000, include_system=False)
    assert seqs(w) == list(range(2, last + 1)) and w.truncated is False and w.dropped_messages == 1
    assert w.openai_messages[0] == {"role": "user", "content": "message 0"}


async def test_first_system_message_is_pinned_even_when_it_is_not_message_one(db: Database, tenant: str) -> None:
    conv = await seed(db, tenant, [user("early"), system("PROMPT"), user("later"), system("second system")])
    w = await window(db, tenant, conv, max_tokens=10_000)
    assert seqs(w) == [2, 1, 3, 4]  # pinned first, then the rest in order
    assert (w.first_seq, w.last_seq) == (2, 4)
    assert [m["content"] for m in w.openai_messages] == ["PROMPT", "early", "later", "second system"]


async def test_system_prompt_state_key_overrides_the_stored_one(db: Database, tenant: str) -> None:
    conv = await seed(db, tenant, [system("OLD PROMPT"), user("a"), user("b")])
    await put_state(db, tenant, conv, "system_prompt", "NEW PROMPT")
    w = await window(db, tenant, conv, max_tokens=10_000)
    assert seqs(w) == [2, 3]  # not a stored message: firstSeq refers to messages only
    assert (w.first_seq, w.last_seq, w.dropped_messages, w.truncated) == (2, 3, 1, False)
    assert w.openai_messages[0] == {"role": "system", "content": "NEW PROMPT"}
    assert "OLD PROMPT" not in [m["content"] for m in w.openai_messages]
    assert w.total_tokens == 3 + n_tokens("NEW PROMPT") + n_tokens("a") + n_tokens("b")
    gpt4 = await window(db, tenant, conv, max_tokens=10_000, model="gpt-4")
    assert gpt4.total_tokens == 3 + sum(n_tokens(t, "cl100k_base") for t in ("NEW PROMPT", "a", "b"))
    # include_system=False ignores the key too.
    w = await window(db, tenant, conv, max_tokens=10_000, include_system=False)
    assert [m["content"] for m in w.openai_messages] == ["a", "b"]
    # A value that is not a non-empty string is ignored: the stored prompt is pinned again.
    for value in ({"text": "NEW"}, "", 7):
        await put_state(db, tenant, conv, "system_prompt", value)
        w = await window(db, tenant, conv, max_tokens=10_000)
        assert seqs(w) == [1, 2, 3] and w.openai_messages[0]["content"] == "OLD PROMPT"


async def test_state_key_system_prompt_without_messages(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    await put_state(db, tenant, conv, "system_prompt", "Be kind.")
    w = await window(db, tenant, conv, max_tokens=100)
    assert (w.messages, w.first_seq, w.last_seq) == ([], None, None)
    assert w.openai_messages == [{"role": "system", "content": "Be kind."}]
    assert w.total_tokens == 3 + n_tokens("Be kind.")


async def test_system_prompt_that_alone_exceeds_the_budget_is_bad_input(db: Database, tenant: str) -> None:
    prompt = "rule " * 100
    conv = await seed(db, tenant, [system(prompt), user("hi")])
    with pytest.raises(BadUserInput) as err:
        await window(db, tenant, conv, max_tokens=50)
    assert err.value.details["systemPromptTokens"] == n_tokens(prompt)
    w = await window(db, tenant, conv, max_tokens=50, include_system=False)  # the caller's way out
    assert seqs(w) == [2]
    conv2 = await seed(db, tenant, [user("hi")])
    await put_state(db, tenant, conv2, "system_prompt", prompt)
    with pytest.raises(BadUserInput):
        await window(db, tenant, conv2, max_tokens=50)
    w = await window(db, tenant, conv2, max_tokens=3 + n_tokens(prompt))  # exactly fits: no room for messages
    assert (w.messages, w.truncated, w.total_tokens) == ([], True, w.max_tokens)


async def test_summary_replaces_the_messages_it_covers(db: Database, tenant: str) -> None:
    conv = await seed(db, tenant, [system("PROMPT"), *[user(f"m{i}") for i in range(2, 9)]])  # seqs 1..8
    await put_state(db, tenant, conv, "summary", {"text": "They talked about m2..m5.", "upToSeq": 5})
    w = await window(db, tenant, conv, max_tokens=10_000)
    assert seqs(w) == [1, 6, 7, 8]  # the pinned prompt (covered, still pinned) and seq > 5
    assert w.summary == "They talked about m2..m5." and w.truncated is False and w.dropped_messages == 4
    assert [m["content"] for m in w.openai_messages] == ["PROMPT", "They talked about m2..m5.", "m6", "m7", "m8"]
    assert w.openai_messages[1]["role"] == "system"
    assert w.total_tokens == 3 + sum(m.token_count for m in w.messages) + n_tokens("They talked about m2..m5.")
    raw = await window(db, tenant, conv, max_tokens=10_000, include_summary=False)
    assert seqs(raw) == list(range(1, 9)) and raw.summary is None  # raw messages are never deleted
    # A summary that covers everything; snake_case up_to_seq works too.
    await put_state(db, tenant, conv, "summary", {"text": "all of it", "up_to_seq": 99})
    w = await window(db, tenant, conv, max_tokens=10_000)
    assert seqs(w) == [1] and w.summary == "all of it" and w.truncated is False
    # Malformed summaries are ignored.
    for value in ("plain text", {"text": "", "upToSeq": 3}, {"text": "x", "upToSeq": "3"}, {"text": "x"}):
        await put_state(db, tenant, conv, "summary", value)
        w = await window(db, tenant, conv, max_tokens=10_000)
        assert seqs(w) == list(range(1, 9)) and w.summary is None


async def test_summary_has_priority_over_messages_and_is_dropped_when_it_cannot_fit(db: Database, tenant: str) -> None:
    conv = await seed(db, tenant, [user(f"message number {i}") for i in range(1, 11)])
    summary = "a long summary of messages one to four " * 5
    await put_state(db, tenant, conv, "summary", {"text": summary, "upToSeq": 4})
    per = n_tokens("message number 10")
    room = 3 + n_tokens(summary) + 2 * per
    w = await window(db, tenant, conv, max_tokens=room)
    assert w.summary == summary and seqs(w) == [9, 10]  # a gap after the summary, reported:
    assert w.truncated is True and w.total_tokens == room
    tiny = await window(db, tenant, conv, max_tokens=3 + 2 * per)  # the summary does not fit at all
    assert tiny.summary is None and tiny.truncated is True and seqs(tiny) == [9, 10]
    assert all(m["role"] == "user" for m in tiny.openai_messages)
    # Covering everything and not fitting: nothing is left but the report says something was left out.
    await put_state(db, tenant, conv, "summary", {"text": summary, "upToSeq": 10})
    w = await window(db, tenant, conv, max_tokens=3 + 2 * per)
    assert (w.messages, w.summary, w.truncated, w.total_tokens) == ([], None, True, 3)


async def test_a_tool_call_is_never_split_from_its_answers(db: Database, tenant: str) -> None:
    conv = await seed(
        db,
        tenant,
        [
            user("what is the weather in Lima and Quito?"),  # 1
            call("c1", "c2", content="checking"),  # 2
            tool("c1", "Lima: 20C"),  # 3
            tool("c2", "Quito: 14C"),  # 4
            assistant("Lima 20C, Quito 14C"),  # 5
        ],
    )
    async with db.read() as conn:
        history = await message_repo.range_(conn, tenant, conv.id, 1, conv.last_seq)
    cost = {m.seq: m.token_count for m in history}
    # Room for 5, 4 and 3 but not 2: neither TOOL message may appear without its call.
    w = await window(db, tenant, conv, max_tokens=3 + cost[5] + cost[4] + cost[3] + cost[2] - 1)
    assert seqs(w) == [5] and w.truncated is True
    w = await window(db, tenant, conv, max_tokens=3 + cost[5] + cost[4] + cost[3] + cost[2])
    assert seqs(w) == [2, 3, 4, 5]
    assert [m.get("tool_call_id") for m in w.openai_messages] == [None, "c1", "c2", None]
    # A pending call (no answer yet) goes in alone: all its answers that exist are there.
    conv = await seed(db, tenant, [user("go"), call("c9")])
    w = await window(db, tenant, conv, max_tokens=1_000)
    assert seqs(w) == [1, 2]


async def test_tool_answers_pair_with_the_nearest_call_of_that_id(db: Database, tenant: str) -> None:
    conv = await seed(
        db,
        tenant,
        [user("u"), call("c1"), tool("c1", "first"), user("again"), call("c1"), tool("c1", "second")],
    )
    async with db.read() as conn:
        history = await message_repo.range_(conn, tenant, conv.id, 1, conv.last_seq)
    cost = {m.seq: m.token_count for m in history}
    w = await window(db, tenant, conv, max_tokens=3 + cost[6] + cost[5] + cost[4])
    assert seqs(w) == [4, 5, 6]


async def test_an_answer_whose_call_is_covered_by_the_summary_is_not_sent(db: Database, tenant: str) -> None:
    conv = await seed(
        db, tenant, [user("u"), call("c1"), tool("c1", "r"), user("next"), tool("zz", "orphan"), user("z")]
    )
    await put_state(db, tenant, conv, "summary", {"text": "earlier", "upToSeq": 2})
    w = await window(db, tenant, conv, max_tokens=10_000)
    # seq 3 answers a call the summary covers and seq 5 answers no call at all: the window stops after 5.
    assert seqs(w) == [6] and w.truncated is True and w.summary == "earlier"


async def test_another_encoding_counts_only_the_candidates_once(
    db: Database, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await seed(db, tenant, [system("PROMPT"), *[user(f"message {i} ñandú 数据") for i in range(100)]])
    counted: list[str] = []
    real = tokens.count_message

    def counting(content: str, **kwargs: Any) -> int:
        counted.append(content)
        return real(content, **kwargs)

    monkeypatch.setattr(tokens, "count_message", counting)
    context.token_counts.clear()
    w = await window(db, tenant, conv, max_tokens=120, model="gpt-4")
    assert w.encoding == "cl100k_base" and w.truncated is True
    expected = 3 + sum(real(m.content, encoding="cl100k_base") for m in w.messages)
    assert w.total_tokens == expected <= 120
    assert len(counted) == len(w.messages) + 1  # the window plus the first one that did not fit
    again = await window(db, tenant, conv, max_tokens=120, model="gpt-4")
    assert seqs(again) == seqs(w) and len(counted) == len(w.messages) + 1  # all from the LRU
    counted.clear()
    await window(db, tenant, conv, max_tokens=120)  # the stored encoding counts nothing
    assert counted == []


async def test_the_window_is_bounded_by_the_conversation_snapshot(db: Database, tenant: str) -> None:
    conv = await seed(db, tenant, [user("a"), user("b")])
    await add_message(db, tenant, conv, content="appended later")
    w = await window(db, tenant, conv, max_tokens=1_000)
    assert seqs(w) == [1, 2] and w.dropped_messages == 0


async def test_a_long_conversation_costs_o_window(db: Database, tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conv = await seed(db, tenant, [system("PROMPT"), *[user(f"message number {i}") for i in range(1, 2000)]])
    assert conv.message_count == 2000
    fetched: list[int] = []
    real = context_repo.newest

    async def counting(*args: Any, **kwargs: Any) -> list[Message]:
        rows = await real(*args, **kwargs)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(context_repo, "newest", counting)
    for model in (None, "gpt-4"):
        for max_tokens in (200, 4_000):
            fetched.clear()
            w = await window(db, tenant, conv, max_tokens=max_tokens, model=model)
            assert w.truncated and w.last_seq == 2000 and w.first_seq == 1
            assert max_tokens // 15 < len(w.messages) < max_tokens // 5
            # Sized from the room left: ~1.25x the window (+ a few rows), one or two round trips.
            assert len(fetched) <= 2 and sum(fetched) <= 1.5 * len(w.messages) + 2 * context.CHUNK_EXTRA
    fetched.clear()
    w = await window(db, tenant, conv, max_tokens=1_000_000)
    assert len(w.messages) == 2000 and w.truncated is False and w.dropped_messages == 0
    assert sum(fetched) == 2000 and len(fetched) == 1  # every row once


async def test_chunk_boundaries_lose_nothing(db: Database, tenant: str) -> None:
    conv = await seed(db, tenant, [user(f"m{i}") for i in range(1, 8)])
    per = n_tokens("m1")
    for size in (1, 2, 3, 7, 8):
        with mock.patch.object(context, "MIN_CHUNK", size), mock.patch.object(context, "MAX_CHUNK", size):
            w = await window(db, tenant, conv, max_tokens=1_000)
            assert seqs(w) == list(range(1, 8)) and w.truncated is False
            w = await window(db, tenant, conv, max_tokens=3 + 6 * per)
            assert seqs(w) == list(range(2, 8)) and w.truncated is True


async def test_where_the_system_prompt_is_is_remembered(
    db: Database, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    searched: list[tuple[int, int]] = []
    real = context_repo.prelude

    async def spy(*args: Any, from_seq: int, up_to_seq: int) -> Prelude:
        searched.append((from_seq, up_to_seq))
        return await real(*args, from_seq=from_seq, up_to_seq=up_to_seq)

    monkeypatch.setattr(context_repo, "prelude", spy)
    conv = await seed(db, tenant, [user(f"m{i}") for i in range(30)])
    await window(db, tenant, conv, max_tokens=100)
    await window(db, tenant, conv, max_tokens=100)
    assert searched == [(1, 30), (31, 30)]  # none through 30: not searched again
    conv = (await add_message(db, tenant, conv, role=Role.SYSTEM, content="late prompt")).conversation
    w = await window(db, tenant, conv, max_tokens=100)
    assert searched[-1] == (31, 31) and w.messages[0].seq == 31 and w.openai_messages[0]["content"] == "late prompt"
    conv = (await add_message(db, tenant, conv, content="after")).conversation
    w = await window(db, tenant, conv, max_tokens=100)
    assert searched[-1] == (31, 32) and seqs(w)[:1] == [31] and seqs(w)[-1] == 32
    # A stale snapshot (before the prompt existed) does not forget where it is.
    old = await window(db, tenant, replace(conv, last_seq=30, message_count=30), max_tokens=100)
    assert 31 not in seqs(old)
    w = await window(db, tenant, conv, max_tokens=100)
    assert searched[-1] == (31, 32) and seqs(w)[0] == 31


# ---------------------------------------------------------------- a plain reference


@dataclass
class Case:
    specs: list[Spec]
    system_prompt: Any  # None: no state key
    summary: Any  # None: no state key
    max_tokens: int
    reserve_tokens: int
    model: str | None
    include_system: bool
    include_summary: bool
    min_chunk: int
    max_chunk: int


def call_ids(m: Message) -> set[str]:
    if m.role is not Role.ASSISTANT or not m.tool_calls:
        return set()
    return {c["id"] for c in m.tool_calls}


def owners(history: list[Message]) -> dict[int, int | None]:
    """TOOL seq → seq of the nearest earlier ASSISTANT whose tool_calls hold its id."""
    found: dict[int, int | None] = {}
    for i, m in enumerate(history):
        if m.role is Role.TOOL:
            found[m.seq] = next(
                (a.seq for a in reversed(history[:i]) if m.tool_call_id in call_ids(a)),
                None,
            )
    return found


def as_openai(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role.value, "content": m.content if m.content or not m.tool_calls else None}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def reference_window(
    history: list[Message],
    conv: Conversation,
    *,
    system_prompt: Any,
    summary: Any,
    max_tokens: int,
    reserve_tokens: int = 0,
    model: str | None = None,
    include_system: bool = True,
    include_summary: bool = True,
) -> dict[str, Any]:
    """The rules of app/services/context.py, written the plain way over the whole history."""
    budget = max_tokens - reserve_tokens
    if max_tokens < 1 or reserve_tokens < 0 or budget < 3:
        raise BadUserInput("budget")
    model = model or "gpt-4o"
    encoding = tokens.encoding_name_for_model(model)

    def cost(m: Message) -> int:  # recounted: checks the stored counts too
        return tokens.count_message(m.content, name=m.name, tool_calls=m.tool_calls, encoding=encoding)

    first_system = next((m for m in history if m.role is Role.SYSTEM), None)
    fixed = 3
    pinned: list[Message] = []
    head: list[dict[str, Any]] = []
    if include_system:
        if isinstance(system_prompt, str) and system_prompt:
            fixed += tokens.count_message(system_prompt, encoding=encoding)
            head.append({"role": "system", "content": system_prompt})
        elif first_system is not None:
            fixed += cost(first_system)
            pinned = [first_system]
            head.append(as_openai(first_system))
        if fixed > budget:
            raise BadUserInput("system prompt")
    covered, kept_summary, summary_dropped = 0, None, False
    if include_summary and isinstance(summary, dict):
        text, up_to = summary.get("text"), summary.get("upToSeq", summary.get("up_to_seq"))
        if isinstance(text, str) and text and isinstance(up_to, int) and not isinstance(up_to, bool) and up_to >= 0:
            covered = up_to
            summary_cost = tokens.count_message(text, encoding=encoding)
            if fixed + summary_cost <= budget:
                fixed += summary_cost
                kept_summary = text
                head.append({"role": "system", "content": text})
            else:
                summary_dropped = True
    candidates = [m for m in history if m.seq > covered and m is not first_system]
    owner = owners(history)
    best: list[Message] = []
    for start in range(len(candidates) + 1):  # the longest suffix first
        suffix = candidates[start:]
        in_suffix = {m.seq for m in suffix}
        whole = all(owner[m.seq] in in_suffix for m in suffix if m.role is Role.TOOL)
        if whole and fixed + sum(cost(m) for m in suffix) <= budget:
            best = suffix
            break
    window_messages = pinned + best
    return {
        "seqs": [m.seq for m in window_messages],
        "encoding": encoding,
        "model": model,
        "total_tokens": fixed + sum(cost(m) for m in best),
        "summary": kept_summary,
        "dropped_messages": conv.message_count - len(window_messages),
        "truncated": summary_dropped or len(best) < len(candidates),
        "first_seq": window_messages[0].seq if window_messages else None,
        "last_seq": window_messages[-1].seq if window_messages else None,
        "openai_messages": head + [as_openai(m) for m in best],
    }


def observed(w: ContextWindow) -> dict[str, Any]:
    return {
        "seqs": seqs(w),
        "encoding": w.encoding,
        "model": w.model,
        "total_tokens": w.total_tokens,
        "summary": w.summary,
        "dropped_messages": w.dropped_messages,
        "truncated": w.truncated,
        "first_seq": w.first_seq,
        "last_seq": w.last_seq,
        "openai_messages": w.openai_messages,
    }


def check_invariants(w: ContextWindow, history: list[Message], case: Case) -> None:
    """The properties on their own, independent of the reference's loop."""
    budget = case.max_tokens - case.reserve_tokens
    assert w.total_tokens <= budget  # fits
    by_seq = {m.seq: m for m in history}
    in_window = set(seqs(w))
    owner = owners(history)
    for s in in_window:  # pairs intact, both ways
        m = by_seq[s]
        if m.role is Role.TOOL:
            assert owner[s] in in_window, f"TOOL {s} without its call"
        if call_ids(m):
            answers = [t for t, o in owner.items() if o == s]
            assert set(answers) <= in_window, f"call {s} without all its answers"
    # The ordinary messages are a contiguous newest suffix of the candidates.
    first_system = next((m.seq for m in history if m.role is Role.SYSTEM), None)
    ordinary = [s for s in seqs(w) if s != first_system]
    assert ordinary == sorted(ordinary)
    if ordinary:
        assert ordinary == [m.seq for m in history if m.seq >= ordinary[0] and m.seq != first_system]
    assert len(w.openai_messages) == len(w.messages) + (w.summary is not None) + (
        bool(case.include_system and isinstance(case.system_prompt, str) and case.system_prompt)
    )
    # The newest that fit: the next older start that splits no tool call would not fit.
    covered = summary_seq(case.summary) if case.include_summary else 0
    candidates = [m for m in history if m.seq > covered and m.seq != first_system]
    start = len(candidates) - len(ordinary)
    assert [m.seq for m in candidates[start:]] == ordinary
    for j in range(start - 1, -1, -1):
        suffix = {m.seq for m in candidates[j:]}
        if all(owner[m.seq] in suffix for m in candidates[j:] if m.role is Role.TOOL):
            extra = sum(
                tokens.count_message(m.content, name=m.name, tool_calls=m.tool_calls, encoding=w.encoding)
                for m in candidates[j:start]
            )
            assert w.total_tokens + extra > budget, "an older stretch would still have fit"
            break


def summary_seq(summary: Any) -> int:
    """upToSeq of a well-formed summary value, else 0 (nothing covered)."""
    if not isinstance(summary, dict) or not isinstance(summary.get("text"), str) or not summary["text"]:
        return 0
    up_to = summary.get("upToSeq", summary.get("up_to_seq"))
    return up_to if isinstance(up_to, int) and not isinstance(up_to, bool) and up_to >= 0 else 0


# ---------------------------------------------------------------- hypothesis

WORDS = ["hola", "world", "the", "answer", "is", "42", "¿qué", "tal?", "数据", "🙂", "lorem", "ipsum", "  ", "\n"]
IDS = ["call_a", "call_b", "call_c", "call_d"]
texts = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=25).map(" ".join),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=30),
)


@st.composite
def events(draw: st.DrawFn) -> list[Spec]:
    kind = draw(st.sampled_from(["user"] * 6 + ["assistant"] * 4 + ["exchange"] * 6 + ["system"] * 2 + ["stray_tool"]))
    if kind == "exchange":
        ids = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=3, unique=True))
        answered = draw(st.permutations(ids))[: draw(st.integers(0, len(ids)))]
        content = draw(st.one_of(st.just(""), texts))
        return [call(*ids, content=content)] + [tool(i, draw(texts)) for i in answered]
    if kind == "stray_tool":  # a late answer to an earlier call, or an orphan
        return [tool(draw(st.sampled_from([*IDS, "call_zz"])), draw(texts))]
    return [{"user": user, "assistant": assistant, "system": system}[kind](draw(texts))]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n_events = draw(st.integers(0, 30))
    specs = [s for group in draw(st.lists(events(), min_size=n_events, max_size=n_events)) for s in group]
    if draw(st.booleans()):
        specs.insert(0, system(draw(texts)))
    n = len(specs)
    summary = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries({"text": texts, "upToSeq": st.integers(0, n + 2)}),
            st.fixed_dictionaries({"text": texts, "upToSeq": st.integers(0, n + 2)}),
            st.fixed_dictionaries({"text": texts, "up_to_seq": st.integers(0, n + 2)}),
            st.sampled_from(["not a dict", {"text": "", "upToSeq": 1}, {"text": "x", "upToSeq": True}]),
        )
    )
    max_chunk = draw(st.sampled_from([1, 2, 5, context.MAX_CHUNK]))
    reserve_tokens = draw(st.integers(0, 60))
    if draw(st.sampled_from(["fits"] * 9 + ["too small"])) == "fits":
        budget = draw(st.integers(3, 1500))
    else:
        budget = draw(st.integers(-3, 2))
    return Case(
        specs=specs,
        system_prompt=draw(st.one_of(st.none(), st.none(), texts, st.sampled_from(["", 42]))),
        summary=summary,
        max_tokens=max(budget + reserve_tokens, draw(st.integers(-1, 1))),
        reserve_tokens=reserve_tokens,
        model=draw(st.sampled_from([None, "gpt-4o", "gpt-4", "gpt-3.5-turbo"])),
        include_system=draw(st.sampled_from([True, True, False])),
        include_summary=draw(st.sampled_from([True, True, False])),
        min_chunk=min(context.MIN_CHUNK, max_chunk),
        max_chunk=max_chunk,
    )


class MemorySource:
    """A whole-history WindowSource: what a Redis hot cache plugs in as."""

    def __init__(self, history: list[Message], prelude: Prelude) -> None:
        self.history = history
        self.state = prelude

    async def prelude(self, *, from_seq: int, up_to_seq: int) -> Prelude:
        first_system = next((m for m in self.history if from_seq <= m.seq <= up_to_seq and m.role is Role.SYSTEM), None)
        return Prelude(system_prompt=self.state.system_prompt, summary=self.state.summary, first_system=first_system)

    async def newest(self, before_seq: int, limit: int, *, after_seq: int = 0) -> list[Message]:
        return [m for m in reversed(self.history) if after_seq < m.seq < before_seq][:limit]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
async def test_windows_match_the_reference(db: Database, tenant: str, case: Case) -> None:
    conv = await seed(db, tenant, case.specs) if case.specs else await create_conversation(db, tenant)
    if case.system_prompt is not None:
        await put_state(db, tenant, conv, "system_prompt", case.system_prompt)
    if case.summary is not None:
        await put_state(db, tenant, conv, "summary", case.summary)
    async with db.read() as conn:
        history = await message_repo.range_(conn, tenant, conv.id, 1, conv.last_seq)
        prelude = await context_repo.prelude(conn, tenant, conv.id, up_to_seq=conv.last_seq)
    params: dict[str, Any] = {
        "max_tokens": case.max_tokens,
        "reserve_tokens": case.reserve_tokens,
        "model": case.model,
        "include_system": case.include_system,
        "include_summary": case.include_summary,
    }
    try:
        expected = reference_window(history, conv, system_prompt=case.system_prompt, summary=case.summary, **params)
    except BadUserInput as exc:
        event(f"BAD_USER_INPUT: {exc.message}")
        with pytest.raises(BadUserInput):
            await window(db, tenant, conv, **params)
        return
    with (
        mock.patch.object(context, "MIN_CHUNK", case.min_chunk),
        mock.patch.object(context, "MAX_CHUNK", case.max_chunk),
    ):
        got = await window(db, tenant, conv, **params)
        from_memory = await build_window(None, tenant, conv, source=MemorySource(history, prelude), **params)  # type: ignore[arg-type]
    event(f"truncated={got.truncated}")
    event(f"summary kept={got.summary is not None}")
    event(f"tool messages in window={sum(m.role is Role.TOOL for m in got.messages) > 0}")
    event(f"history messages {min(len(history) // 10 * 10, 40)}+")
    event(f"window messages {min(len(got.messages) // 5 * 5, 20)}+")
    check_invariants(got, history, case)
    assert observed(got) == expected
    assert observed(from_memory) == expected
