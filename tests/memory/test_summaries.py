"""Summaries, service level: real Postgres, and a real HTTP server on loopback standing in for the
LLM (answering normally, slowly, with 500s, with malformed JSON)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.errors import BadUserInput, NotFound
from app.models import Conversation, ConversationRef, Role
from app.services import context, conversations, state, summaries, tenants
from app.services.summaries import SummarizerOptions, SummaryStatus
from db.session import Database
from tests.factories import add_message, create_conversation
from tests.memory.fake_llm import FakeLlm


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def options(llm: FakeLlm, **overrides: Any) -> SummarizerOptions:
    base: dict[str, Any] = {"url": llm.url, "model": "tiny", "threshold_tokens": 50, "timeout_s": 5.0}
    return SummarizerOptions(**(base | overrides))


async def chat(db: Database, tenant: str, n: int, words: int = 10, conv: Conversation | None = None) -> Conversation:
    conv = conv or await create_conversation(db, tenant, session_id=f"s-{uuid.uuid4().hex}")
    for i in range(n):
        role = Role.USER if i % 2 == 0 else Role.ASSISTANT
        await add_message(db, tenant, conv, role=role, content=f"turn {i} " + "word " * words)
    return await fresh(db, tenant, conv)


async def fresh(db: Database, tenant: str, conv: Conversation) -> Conversation:
    async with db.read() as conn:
        return await conversations.get(conn, tenant, ConversationRef(id=conv.id))


async def info(db: Database, tenant: str, conv: Conversation) -> summaries.SummaryInfo:
    async with db.read() as conn:
        return await summaries.info(conn, tenant, conv.id)


async def test_incremental_summary_is_stored_readable_and_used_by_the_window(
    db: Database, tenant: str, http: httpx.AsyncClient
) -> None:
    with FakeLlm() as llm:
        conv = await chat(db, tenant, 6)
        assert (await info(db, tenant, conv)).status is SummaryStatus.NONE
        outcome = await summaries.summarize(db, http, tenant, conv.id, options(llm))
        assert (outcome.summarized, outcome.up_to_seq, llm.calls) == (1, 6, 1)
        first = await info(db, tenant, conv)
        assert first.status is SummaryStatus.READY and first.text == "SUMMARY#1 of seqs 1-6"
        assert (first.up_to_seq, first.model, first.error) == (6, "tiny-2026", None)
        assert first.token_count and first.updated_at is not None
        assert llm.paths == ["/v1/chat/completions"] and "Previous summary:\n(none)" in llm.prompt(0)

        conv = await chat(db, tenant, 4, conv=conv)
        await summaries.summarize(db, http, tenant, conv.id, options(llm))
        # Incremental: the previous summary plus only the new messages, never the history again.
        second = llm.prompt(1)
        assert "SUMMARY#1 of seqs 1-6" in second and "[7]" in second and "[6]" not in second and "[1]" not in second
        assert (await info(db, tenant, conv)).up_to_seq == 10

        async with db.read() as conn:
            key = await state.get(conn, tenant, conv.id, "summary")
            window = await context.build_window(conn, tenant, await fresh(db, tenant, conv), max_tokens=10_000)
        assert key is not None and key.value["upToSeq"] == 10 and key.value["text"] == "SUMMARY#2 of seqs 7-10"
        assert window.summary == "SUMMARY#2 of seqs 7-10" and window.messages == []
        assert window.openai_messages[0] == {"role": "system", "content": "SUMMARY#2 of seqs 7-10"}


async def test_below_the_threshold_nothing_is_sent_unless_asked_or_closed(
    db: Database, tenant: str, http: httpx.AsyncClient
) -> None:
    with FakeLlm() as llm:
        conv = await chat(db, tenant, 2, words=2)
        assert conv.token_count < 50
        await summaries.summarize(db, http, tenant, conv.id, options(llm))
        assert llm.calls == 0 and (await info(db, tenant, conv)).status is SummaryStatus.NONE
        # The tenant's threshold wins over the server's default.
        await db.run(lambda uow: tenants.ensure_tenant(uow, tenant))
        await db.run(lambda uow: tenants.update_tenant_settings(uow, tenant, {"summary_threshold_tokens": 5}))
        await summaries.summarize(db, http, tenant, conv.id, options(llm))
        assert llm.calls == 1
        conv = await chat(db, tenant, 1, words=1, conv=conv)
        await db.run(lambda uow: tenants.update_tenant_settings(uow, tenant, {"summary_threshold_tokens": 10_000}))
        await summaries.summarize(db, http, tenant, conv.id, options(llm))
        assert llm.calls == 1
        # summarizeConversation forces it (PENDING first), and so does closing.
        pending = await db.run(lambda uow: summaries.request(uow, tenant, conv.id, options(llm)))
        assert pending.status is SummaryStatus.PENDING and pending.up_to_seq == 2  # the old one stays readable
        await summaries.summarize(db, http, tenant, conv.id, options(llm))
        assert llm.calls == 2 and (await info(db, tenant, conv)).up_to_seq == 3


async def test_a_failing_llm_leaves_failed_with_the_previous_summary_intact(
    db: Database, tenant: str, http: httpx.AsyncClient
) -> None:
    with FakeLlm() as llm:
        conv = await chat(db, tenant, 6)
        await summaries.summarize(db, http, tenant, conv.id, options(llm))
        conv = await chat(db, tenant, 6, conv=conv)
        for mode, expected in (
            ("500", "HTTP 500"),
            ("malformed", "not a chat completion"),
            ("no-choices", "not a chat completion"),
        ):
            llm.mode = mode
            outcome = await summaries.summarize(db, http, tenant, conv.id, options(llm, retry_base_s=2))
            assert outcome.error is not None and expected in outcome.error
            assert outcome.retry_in_s is not None and outcome.retry_in_s >= 2  # backoff grows with attempts
            now = await info(db, tenant, conv)
            assert now.status is SummaryStatus.FAILED and now.error is not None and expected in now.error
            assert (now.text, now.up_to_seq) == ("SUMMARY#1 of seqs 1-6", 6)
        llm.mode, llm.delay_s = "slow", 1.5
        outcome = await summaries.summarize(db, http, tenant, conv.id, options(llm, timeout_s=0.3, max_attempts=4))
        assert outcome.error is not None and "did not answer within 0.3 s" in outcome.error
        assert outcome.retry_in_s is None  # the 4th failure: no attempts left
        async with db.read() as conn:
            window = await context.build_window(conn, tenant, await fresh(db, tenant, conv), max_tokens=10_000)
        assert window.summary == "SUMMARY#1 of seqs 1-6" and window.messages[0].seq == 7
        llm.mode = "ok"
        await summaries.summarize(db, http, tenant, conv.id, options(llm))
        done = await info(db, tenant, conv)
        assert (done.status, done.up_to_seq, done.error) == (SummaryStatus.READY, 12, None)


async def test_two_runs_at_once_make_one_call(db: Database, tenant: str, http: httpx.AsyncClient) -> None:
    with FakeLlm("slow", delay_s=0.8) as llm:
        conv = await chat(db, tenant, 6)
        a, b = await asyncio.gather(
            summaries.summarize(db, http, tenant, conv.id, options(llm)),
            summaries.summarize(db, http, tenant, conv.id, options(llm)),
        )
        assert llm.calls == 1
        assert sorted([a.busy, b.busy]) == [False, True] and a.summarized + b.summarized == 1


def call(*ids: str) -> dict[str, Any]:
    return {
        "role": Role.ASSISTANT,
        "content": "",
        "tool_calls": [{"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids],
    }


async def test_a_summary_never_covers_a_tool_message_without_its_call(
    db: Database, tenant: str, http: httpx.AsyncClient
) -> None:
    with FakeLlm() as llm:
        conv = await create_conversation(db, tenant, session_id=f"s-{uuid.uuid4().hex}")
        long = "word " * 30
        specs: list[dict[str, Any]] = [
            {"role": Role.USER, "content": long},  # 1
            call("c1"),  # 2
            {"role": Role.TOOL, "content": long, "tool_call_id": "c1"},  # 3
            {"role": Role.USER, "content": long},  # 4
            call("c2", "c3"),  # 5: c3 is never answered
            {"role": Role.TOOL, "content": long, "tool_call_id": "c2"},  # 6
            {"role": Role.USER, "content": long},  # 7
        ]
        for spec in specs:
            await add_message(db, tenant, conv, **spec)
        await summaries.summarize(db, http, tenant, conv.id, options(llm))
        assert (await info(db, tenant, conv)).up_to_seq == 4  # cut before the unanswered call

        orphan = await create_conversation(db, tenant, session_id=f"s-{uuid.uuid4().hex}")
        await add_message(db, tenant, orphan, content=long)
        await add_message(db, tenant, orphan, role=Role.TOOL, content=long, tool_call_id="zz")
        await add_message(db, tenant, orphan, content=long)
        await summaries.summarize(db, http, tenant, orphan.id, options(llm))
        assert (await info(db, tenant, orphan)).up_to_seq == 1  # cut before the orphan tool result


async def test_a_long_backlog_is_summarized_in_bounded_calls(
    db: Database, tenant: str, http: httpx.AsyncClient
) -> None:
    with FakeLlm() as llm:
        conv = await chat(db, tenant, 30, words=20)  # ~25 tokens each
        await summaries.summarize(db, http, tenant, conv.id, options(llm, max_input_tokens=200))
        assert llm.calls >= 4 and (await info(db, tenant, conv)).up_to_seq == 30
        assert all(len(llm.prompt(i)) < 2500 for i in range(llm.calls))


async def test_disabled_summarizer_and_other_tenants_are_clear_errors(
    db: Database, tenant: str, other_tenant: str, http: httpx.AsyncClient
) -> None:
    conv = await chat(db, tenant, 2)
    with pytest.raises(BadUserInput, match="SUMMARIZER_URL"):
        await db.run(lambda uow: summaries.request(uow, tenant, conv.id, SummarizerOptions()))
    with FakeLlm() as llm:
        with pytest.raises(NotFound):
            await db.run(lambda uow: summaries.request(uow, other_tenant, conv.id, options(llm)))
        await summaries.summarize(db, http, other_tenant, conv.id, options(llm))
        assert llm.calls == 0
    assert (await info(db, tenant, conv)).status is SummaryStatus.NONE
    assert (await info(db, other_tenant, conv)).status is SummaryStatus.NONE


async def test_the_trigger_enqueues_on_crossing_and_on_close_only(db: Database, tenant: str) -> None:
    asked: list[tuple[str, uuid.UUID]] = []

    async def enqueue(tenant_id: str, conversation_id: uuid.UUID) -> None:
        asked.append((tenant_id, conversation_id))

    trigger = summaries.Trigger(db, SummarizerOptions(url="http://x", model="m", threshold_tokens=100), enqueue)
    db.listen(trigger)
    try:
        conv = await create_conversation(db, tenant, session_id=f"s-{uuid.uuid4().hex}")
        for _ in range(8):  # ~13 tokens each: crosses 100 once
            await add_message(db, tenant, conv, content="word " * 10)
        assert asked == [(tenant, conv.id)]
        await db.run(lambda uow: conversations.close(uow, tenant, ConversationRef(id=conv.id)))
        assert asked == [(tenant, conv.id)] * 2
    finally:
        db.listeners.remove(trigger)
