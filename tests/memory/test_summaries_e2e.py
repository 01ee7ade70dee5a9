"""Summaries end to end: a real API (uvicorn) and a real worker process on one queue, a fake LLM
on loopback. A conversation growing past the threshold over GraphQL gets a READY summary, the
context window then carries it; concurrent triggers make one call; a server without a summarizer
says so."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers
from tests.jobs.conftest import WorkerProcess, eventually, start_worker, wait_ready
from tests.memory.fake_llm import FakeLlm
from tests.subscriptions.conftest import Server, serve, settings_for

THRESHOLD = 120
SUMMARY_Q = """query($id: ID!) { conversation(id: $id) {
  summaryInfo { status text upToSeq tokenCount model updatedAt error }
  contextWindow(maxTokens: 4000) { summary messages { seq } } } }"""
ADD = """mutation($s: String!, $c: String!) { addMessage(input: {sessionId: $s, role: USER, content: $c}) {
  conversation { id lastSeq } } }"""


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLlm]:
    with FakeLlm("slow", delay_s=0.3) as fake:
        yield fake


@pytest.fixture(scope="module")
async def summary_worker(
    servers: Servers, redis: Redis, queue: str, log_dir: Path, llm: FakeLlm
) -> AsyncIterator[WorkerProcess]:
    process = start_worker(
        servers,
        queue,
        log_dir,
        SUMMARIZER_URL=llm.url,
        SUMMARIZER_MODEL="tiny",
        SUMMARIZER_API_KEY="sk-test",
        SUMMARY_THRESHOLD_TOKENS=str(THRESHOLD),
        SUMMARIZER_RETRY_BASE_S="0.2",
        SUMMARIZER_RETRY_MAX_S="0.5",
        SUMMARIZER_TIMEOUT_S="5",
    )
    try:
        await wait_ready(process, redis)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def api_server(servers: Servers, queue: str, llm: FakeLlm) -> AsyncIterator[Server]:
    settings = settings_for(
        servers,
        arq_queue=queue,
        summarizer_url=llm.url,
        summarizer_model="tiny",
        summary_threshold_tokens=THRESHOLD,
    )
    async for server in serve(settings):
        yield server


@pytest.fixture
async def api(api_server: Server, db: Database, tenant: str) -> AsyncIterator[Caller]:
    async with httpx.AsyncClient(base_url=api_server.url) as http:
        yield await make_caller(db, http, tenant)


async def test_growing_past_the_threshold_gets_a_ready_summary_the_window_uses(
    api: Caller, summary_worker: WorkerProcess, llm: FakeLlm
) -> None:
    session = f"grow-{uuid.uuid4().hex[:8]}"
    before = llm.calls
    cid = ""
    for i in range(12):  # ~13 tokens each: crosses 120 tokens at about the 9th
        added = await api.data(ADD, {"s": session, "c": f"message {i} " + "word " * 9})
        cid = added["addMessage"]["conversation"]["id"]
    crossed_at = time.monotonic()

    async def ready() -> dict[str, Any] | None:
        conversation = (await api.data(SUMMARY_Q, {"id": cid}))["conversation"]
        return conversation if conversation["summaryInfo"]["status"] == "READY" else None

    conversation = await eventually(ready, within_s=15)
    elapsed = time.monotonic() - crossed_at
    info = conversation["summaryInfo"]
    assert info["text"].startswith("SUMMARY#") and info["model"] == "tiny-2026" and info["error"] is None
    assert info["upToSeq"] >= 9 and info["tokenCount"] > 0 and info["updatedAt"]
    window = conversation["contextWindow"]
    assert window["summary"] == info["text"]
    assert all(m["seq"] > info["upToSeq"] for m in window["messages"])
    assert llm.calls - before == 1 and llm.auth[-1] == "Bearer sk-test"
    assert elapsed < 10, f"READY only {elapsed:.1f} s after the crossing append"


async def test_two_summarize_requests_at_once_make_one_call(
    api: Caller, summary_worker: WorkerProcess, llm: FakeLlm
) -> None:
    session = f"twice-{uuid.uuid4().hex[:8]}"
    added = await api.data(ADD, {"s": session, "c": "just a short one"})
    cid = added["addMessage"]["conversation"]["id"]
    before = llm.calls
    mutation = "mutation($id: ID!) { summarizeConversation(conversationId: $id) { status upToSeq } }"
    answers = await asyncio.gather(*(api.data(mutation, {"id": cid}) for _ in range(2)))
    assert [a["summarizeConversation"]["status"] for a in answers] == ["PENDING", "PENDING"]

    async def ready() -> bool:
        info = (await api.data(SUMMARY_Q, {"id": cid}))["conversation"]["summaryInfo"]
        return bool(info["status"] == "READY" and info["upToSeq"] == 1)

    await eventually(ready, within_s=15)
    await asyncio.sleep(1.0)  # a second job, had there been one, would have called by now
    assert llm.calls - before == 1


async def test_other_tenants_cannot_summarize_or_read(
    api: Caller, api_server: Server, db: Database, other_tenant: str, summary_worker: WorkerProcess
) -> None:
    added = await api.data(ADD, {"s": f"mine-{uuid.uuid4().hex[:8]}", "c": "private"})
    cid = added["addMessage"]["conversation"]["id"]
    async with httpx.AsyncClient(base_url=api_server.url) as http:
        other = await make_caller(db, http, other_tenant)
        mutation = "mutation($id: ID!) { summarizeConversation(conversationId: $id) { status } }"
        assert await other.error_code(mutation, {"id": cid}) == "NOT_FOUND"
        assert (await other.data(SUMMARY_Q, {"id": cid}))["conversation"] is None
        assert await other.error_code(mutation, {"id": "not-a-uuid"}) == "BAD_USER_INPUT"


async def test_a_server_without_a_summarizer_says_so(db: Database, http: httpx.AsyncClient, tenant: str) -> None:
    """The session's API has no SUMMARIZER_URL."""
    api = await make_caller(db, http, tenant)
    added = await api.data(ADD, {"s": "off", "c": "hello"})
    cid = added["addMessage"]["conversation"]["id"]
    body = await api.gql("mutation($id: ID!) { summarizeConversation(conversationId: $id) { status } }", {"id": cid})
    error = body["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT" and "SUMMARIZER_URL" in error["message"]
    info = await api.data("query($id: ID!) { conversation(id: $id) { summaryInfo { status text } } }", {"id": cid})
    assert info["conversation"]["summaryInfo"] == {"status": "NONE", "text": None}


async def test_a_write_only_key_gets_the_receipt_not_the_text(
    api: Caller, api_server: Server, db: Database, tenant: str, summary_worker: WorkerProcess
) -> None:
    added = await api.data(ADD, {"s": f"wo-{uuid.uuid4().hex[:8]}", "c": "secret plans"})
    cid = added["addMessage"]["conversation"]["id"]
    async with httpx.AsyncClient(base_url=api_server.url) as http:
        writer = await make_caller(db, http, tenant, scopes="write")
        receipt = "mutation($id: ID!) { summarizeConversation(conversationId: $id) { status upToSeq updatedAt } }"
        assert (await writer.data(receipt, {"id": cid}))["summarizeConversation"]["status"] == "PENDING"
        text = "mutation($id: ID!) { summarizeConversation(conversationId: $id) { text } }"
        assert await writer.error_code(text, {"id": cid}) == "FORBIDDEN"
