"""Each domain action through a real worker process and a real Redis queue: its effect in
Postgres, its callback, its job result; repeated actions; malformed envelopes and dead letters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

from arq.jobs import Job
from redis.asyncio import Redis

from app import events
from app.models import ConversationRef, EventType, Role, Status
from app.queue import json_deserializer
from app.services import conversations, state
from db.session import Database
from jobs.actions import read_dead_letters
from jobs.client import ActionClient
from tests.conftest import Servers
from tests.factories import count_rows
from tests.jobs.conftest import WorkerProcess, pop_answer


async def test_each_action_changes_postgres_and_answers_on_its_callback(
    worker: WorkerProcess, client: ActionClient, db: Database, redis: Redis, tenant: str
) -> None:
    created = await client.call(
        "conversation.create",
        tenant_id=tenant,
        session_id="s-1",
        data={
            "user_id": "u-1",
            "agent_id": "a-1",
            "channel": "web",
            "title": "Hi",
            "tags": ["vip"],
            "metadata": {"k": 1},
        },
        correlation_id="corr-1",
    )
    assert created["success"] is True and created["correlation_id"] == "corr-1"
    conversation = created["data"]["conversation"]
    assert (
        conversation["session_id"] == "s-1" and conversation["status"] == "active" and conversation["tags"] == ["vip"]
    )
    async with db.read() as conn:
        stored = await conversations.get(conn, tenant, ConversationRef(session_id="s-1"))
    assert str(stored.id) == conversation["id"] and stored.user_id == "u-1" and stored.metadata == {"k": 1}

    saved = await client.call(
        "conversation.save_message",
        tenant_id=tenant,
        session_id="s-1",
        data={
            "role": "user",
            "content": "hello",
            "metadata": {"m": True},
            "sources": [{"document_id": "d1", "score": 0.5}],
        },
    )
    assert saved["success"], saved
    message = saved["data"]["message"]
    assert saved["data"]["created"] is True
    assert message["seq"] == 1 and message["role"] == "user" and message["client_message_id"] == saved["action_id"]
    assert message["sources"][0]["document_id"] == "d1" and message["token_count"] > 3

    # The alias, by conversation_id, an assistant answer with tool calls.
    answered = await client.call(
        "conversation.add_message",
        tenant_id=tenant,
        conversation_id=conversation["id"],
        data={
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            "execution": {"model": "gpt-4o", "latency_ms": 12},
        },
    )
    assert answered["success"] and answered["data"]["message"]["seq"] == 2
    tool = await client.call(
        "conversation.save_message",
        tenant_id=tenant,
        session_id="s-1",
        data={"role": "tool", "content": "42", "tool_call_id": "c1"},
    )
    assert tool["data"]["message"]["seq"] == 3

    history = await client.call("conversation.get_history", tenant_id=tenant, session_id="s-1", data={"limit": 2})
    assert [m["seq"] for m in history["data"]["messages"]] == [2, 3] and history["data"]["has_more"] is True
    after = await client.call(
        "conversation.get_history", tenant_id=tenant, session_id="s-1", data={"after_seq": 1, "limit": 1}
    )
    assert [m["seq"] for m in after["data"]["messages"]] == [2] and after["data"]["has_more"] is True
    first = await client.call("conversation.get_history", tenant_id=tenant, session_id="s-1", data={})
    assert first["data"]["messages"][0]["sources"][0]["score"] == 0.5

    window = await client.call(
        "conversation.get_context", tenant_id=tenant, session_id="s-1", data={"max_tokens": 1000, "reserve_tokens": 100}
    )
    w = window["data"]
    assert window["success"], window
    assert [m["seq"] for m in w["messages"]] == [1, 2, 3] and w["first_seq"] == 1 and w["last_seq"] == 3
    assert w["total_tokens"] <= 900 and w["encoding"] == "o200k_base" and w["model"] == "gpt-4o"
    assert [m["role"] for m in w["openai_messages"]] == ["user", "assistant", "tool"]
    assert w["truncated"] is False and w["dropped_messages"] == 0 and w["customer_note"] is None
    assert w["approximate"] is False
    claude = await client.call(
        "conversation.get_context",
        tenant_id=tenant,
        session_id="s-1",
        data={"max_tokens": 1000, "reserve_tokens": 100, "model": "claude-3-5-sonnet-latest"},
    )
    c = claude["data"]
    assert c["approximate"] is True and c["encoding"] == "cl100k_base" and c["total_tokens"] <= 900 * 0.85

    put = await client.call(
        "conversation.update_state", tenant_id=tenant, session_id="s-1", data={"key": "step", "value": {"n": 1}}
    )
    assert put["data"]["state"]["version"] == 1 and put["data"]["state"]["value"] == {"n": 1}
    async with db.read() as conn:
        entry = await state.get(conn, tenant, stored.id, "step")
    assert entry is not None and entry.value == {"n": 1}

    # The worker's writes reach the live fan-out like the API's: CLOSED on the tenant channel.
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(events.tenant_channel(tenant))
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        closed = await client.call(
            "conversation.session_closed", tenant_id=tenant, session_id="s-1", data={"reason": "user left"}
        )
        assert closed["data"]["conversation"]["status"] == "closed"
        assert closed["data"]["conversation"]["close_reason"] == "user left"
        # Events are published in the background: update_state's may still be in flight.
        event = None
        async with asyncio.timeout(10):
            while event is None or event.type is not EventType.CLOSED:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                if message is not None:
                    event = events.decode(message["data"])
    assert event.type is EventType.CLOSED and str(event.conversation_id) == conversation["id"]
    async with db.read() as conn:
        assert (await conversations.get(conn, tenant, ConversationRef(id=stored.id))).status is Status.CLOSED


async def test_domain_errors_answer_with_their_code_once_and_land_in_dead_letters(
    worker: WorkerProcess, client: ActionClient, db: Database, redis: Redis, queue: str, tenant: str
) -> None:
    await client.call("conversation.create", tenant_id=tenant, session_id="s", data={})
    closed = await client.call("conversation.session_closed", tenant_id=tenant, session_id="s", data={})
    assert closed["success"]

    late = await client.call(
        "conversation.save_message", tenant_id=tenant, session_id="s", data={"role": "user", "content": "x"}
    )
    assert late["success"] is False and late["error"]["code"] == "CONVERSATION_CLOSED"
    missing = await client.call(
        "conversation.get_history", tenant_id=tenant, conversation_id=str(uuid.uuid4()), data={}
    )
    assert missing["error"]["code"] == "NOT_FOUND"
    taken = await client.call("conversation.create", tenant_id=tenant, session_id="s", data={})
    assert taken["error"]["code"] == "CONFLICT"
    stale = await client.call(
        "conversation.update_state",
        tenant_id=tenant,
        session_id="s",
        data={"key": "k", "value": 1, "expected_version": 3},
    )
    assert stale["error"]["code"] == "CONFLICT"
    no_crm = await client.call("conversation.sync_crm", tenant_id=tenant, session_id="s", data={})
    assert no_crm["error"]["code"] == "BAD_USER_INPUT"
    big = await client.call(
        "conversation.create", tenant_id=tenant, session_id="big", data={"metadata": {"x": "y" * 70_000}}
    )
    assert big["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert await count_rows(db, "messages", tenant) == 0

    # Not retried: each ran once (the job result says try 1) and each is a dead letter.
    for answer in (late, missing, taken, stale, no_crm, big):
        job = Job(answer["action_id"], redis, _queue_name=queue, _deserializer=json_deserializer)
        await job.result(timeout=10, poll_delay=0.02)  # arq stores it just after the callback went out
        info = await job.result_info()
        assert info is not None and info.job_try == 1 and info.result == answer
    letters = {d["action_id"]: d for d in await read_dead_letters(redis, queue, 200)}
    assert letters[late["action_id"]]["kind"] == "domain_error"
    assert letters[late["action_id"]]["error"]["code"] == "CONVERSATION_CLOSED"
    assert letters[late["action_id"]]["tenant_id"] == tenant


async def _expire_result(redis: Redis, queue: str, action_id: str) -> None:
    """What ARQ_KEEP_RESULT_S does in time: arq forgets the job (once it has stored its result)."""
    await Job(action_id, redis, _queue_name=queue, _deserializer=json_deserializer).result(timeout=10, poll_delay=0.02)
    assert await redis.delete(f"arq:result:{action_id}") == 1


async def test_a_repeated_action_answers_like_the_first_and_writes_nothing_new(
    worker: WorkerProcess, client: ActionClient, db: Database, redis: Redis, tenant: str
) -> None:
    action_id = f"act-{uuid.uuid4().hex}"
    data = {"role": "user", "content": "once"}
    first = await client.call(
        "conversation.save_message", tenant_id=tenant, session_id="r", data=data, action_id=action_id
    )
    assert first["data"]["created"] is True
    # arq still holds the job id: nothing is enqueued, the client returns the kept result.
    again = await client.call(
        "conversation.save_message", tenant_id=tenant, session_id="r", data=data, action_id=action_id
    )
    assert again == first
    # After the kept result expires the action runs again: the original message, created false.
    await _expire_result(redis, client.queue_name, action_id)
    rerun = await client.call(
        "conversation.save_message", tenant_id=tenant, session_id="r", data=data, action_id=action_id
    )
    assert rerun["data"]["created"] is False and rerun["data"]["message"]["id"] == first["data"]["message"]["id"]
    assert await count_rows(db, "messages", tenant) == 1

    # Logged actions: a re-run create answers with the same conversation instead of CONFLICT,
    # and a re-run update_state does not bump the version again.
    create_id = f"act-{uuid.uuid4().hex}"
    made = await client.call("conversation.create", tenant_id=tenant, session_id="c", action_id=create_id)
    await _expire_result(redis, client.queue_name, create_id)
    remade = await client.call("conversation.create", tenant_id=tenant, session_id="c", action_id=create_id)
    assert remade["success"] and remade["data"] == made["data"]
    state_id = f"act-{uuid.uuid4().hex}"
    put = await client.call(
        "conversation.update_state", tenant_id=tenant, session_id="c", data={"key": "k", "value": 1}, action_id=state_id
    )
    await _expire_result(redis, client.queue_name, state_id)
    reput = await client.call(
        "conversation.update_state", tenant_id=tenant, session_id="c", data={"key": "k", "value": 1}, action_id=state_id
    )
    assert reput["data"] == put["data"] and put["data"]["state"]["version"] == 1
    assert await count_rows(db, "conversations", tenant) == 2


async def _raw_enqueue(client: ActionClient, function: str, *args: Any, job_id: str | None = None) -> str:
    job_id = job_id or uuid.uuid4().hex
    job = await client.redis.enqueue_job(function, *args, _job_id=job_id, _queue_name=client.queue_name)
    assert job is not None
    return job_id


async def test_malformed_envelopes_get_an_error_answer_and_a_dead_letter_and_are_not_retried(
    worker: WorkerProcess, client: ActionClient, servers: Servers, db: Database, redis: Redis, queue: str, tenant: str
) -> None:
    callback = f"test-callbacks:{uuid.uuid4().hex}"
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("no tenant", {"data": {"role": "user", "content": "x"}, "session_id": "s"}, "tenant_id"),
        (
            "bad tenant",
            {"tenant_id": "has space", "session_id": "s", "data": {"role": "user", "content": "x"}},
            "tenant",
        ),
        ("bad role", {"tenant_id": tenant, "session_id": "s", "data": {"role": "USER", "content": "x"}}, "data.role"),
        (
            "unknown field",
            {"tenant_id": tenant, "session_id": "s", "data": {"role": "user", "content": "x", "x": 1}},
            "data.x",
        ),
        ("no target", {"tenant_id": tenant, "data": {"role": "user", "content": "x"}}, "conversation_id"),
        (
            "bad uuid",
            {"tenant_id": tenant, "conversation_id": "nope", "data": {"role": "user", "content": "x"}},
            "UUID",
        ),
        (
            "wrong type",
            {"tenant_id": tenant, "session_id": "s", "data": {"role": "user", "content": 5}},
            "data.content",
        ),
    ]
    sent: dict[str, str] = {}
    for name, body, _ in cases:
        job_id = uuid.uuid4().hex
        envelope = {
            "action_id": job_id,
            "action_type": "conversation.save_message",
            "correlation_id": name,
            "callback_queue_name": callback,
            **body,
        }
        await _raw_enqueue(client, "conversation.save_message", envelope, job_id=job_id)
        sent[name] = job_id
    # An action_id that is not the job id, and an action_type sent to another function.
    mismatch = {"action_id": "other", "action_type": "conversation.save_message", "tenant_id": tenant,
                "session_id": "s", "data": {"role": "user", "content": "x"}, "correlation_id": "mismatch",
                "callback_queue_name": callback}  # fmt: skip
    sent["mismatch"] = await _raw_enqueue(client, "conversation.save_message", mismatch)
    wrong_fn: dict[str, Any] = {
        **mismatch,
        "action_id": "wrong-fn-" + uuid.uuid4().hex,
        "correlation_id": "wrong function",
    }
    sent["wrong function"] = await _raw_enqueue(
        client, "conversation.get_history", wrong_fn, job_id=wrong_fn["action_id"]
    )

    answers = {}
    for _ in range(len(sent)):
        answer = await pop_answer(redis, callback)
        answers[answer["correlation_id"]] = answer
    assert set(answers) == set(sent)
    for name, _, expected in cases:
        assert answers[name]["success"] is False, name
        assert answers[name]["error"]["code"] == "BAD_USER_INPUT", name
        assert expected in answers[name]["error"]["message"], (name, answers[name])
    assert "job id" in answers["mismatch"]["error"]["message"]
    assert "was sent to" in answers["wrong function"]["error"]["message"]

    # Not an object at all, and two arguments: no callback possible, but a dead letter each.
    not_object = await _raw_enqueue(client, "conversation.save_message", "just a string")
    two_args = await _raw_enqueue(client, "conversation.create", {"a": 1}, {"b": 2})

    async def lettered() -> dict[str, Any]:
        letters = {d["job_id"]: d for d in await read_dead_letters(redis, queue, 500)}
        return letters if {not_object, two_args, *sent.values()} <= set(letters) else {}

    from tests.jobs.conftest import eventually

    letters = await eventually(lettered)
    for job_id in [not_object, two_args, *sent.values()]:
        letter = letters[job_id]
        assert letter["kind"] == "invalid_envelope" and letter["job_try"] == 1, letter
        assert letter["error"]["code"] == "BAD_USER_INPUT"
    assert json.loads(letters[sent["bad role"]]["envelope"])["data"]["role"] == "USER"
    # Exactly one dead letter per job (never retried), and nothing written.
    all_letters = await read_dead_letters(redis, queue, 500)
    for job_id in [not_object, two_args, *sent.values()]:
        assert sum(1 for d in all_letters if d["job_id"] == job_id) == 1
    await asyncio.sleep(0.3)  # a retry, if there were one, would have run by now
    assert len(await read_dead_letters(redis, queue, 500)) == len(all_letters)
    assert await count_rows(db, "messages", tenant) == 0

    # What an admin reads: the newest first, one JSON object a line.
    env = {**os.environ, "DATABASE_URL": servers.database_url, "REDIS_URL": servers.redis_url, "ARQ_QUEUE": queue}
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "dead-letters", "--limit", "2"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["job_id"] for line in shown.stdout.splitlines()] == [d["job_id"] for d in all_letters[:2]]


async def test_a_callback_queue_may_not_name_the_services_own_keys(
    worker: WorkerProcess, client: ActionClient, redis: Redis, queue: str, tenant: str
) -> None:
    job_id = uuid.uuid4().hex
    envelope = {"action_id": job_id, "action_type": "conversation.create", "tenant_id": tenant,
                "session_id": "x", "data": {}, "callback_queue_name": f"cs:{{{tenant}:x}}:messages"}  # fmt: skip
    await _raw_enqueue(client, "conversation.create", envelope, job_id=job_id)
    result = await Job(job_id, redis, _queue_name=queue, _deserializer=json_deserializer).result(
        timeout=10, poll_delay=0.05
    )
    assert result["success"] is False and "callback_queue_name" in result["error"]["message"]
    assert not await redis.exists(f"cs:{{{tenant}:x}}:messages")


async def test_role_values_are_lowercase_in_results(
    worker: WorkerProcess, client: ActionClient, servers: Servers, tenant: str
) -> None:
    saved = await client.call(
        "conversation.save_message", tenant_id=tenant, session_id="roles", data={"role": "system", "content": "be nice"}
    )
    assert saved["data"]["message"]["role"] == Role.SYSTEM.value == "system"
