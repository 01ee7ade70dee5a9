"""Queue trust (issue 9, items 8 and 9) over a real worker: actions for unknown tenants, signed
envelopes, undecodable jobs, and an action_id bound to its payload."""

from __future__ import annotations

import json
import pickle
import time
import uuid
from typing import Any

from arq.jobs import Job
from redis.asyncio import Redis

from app.queue import json_deserializer
from db.session import Database
from jobs import signing
from jobs.actions import read_dead_letters
from jobs.client import ActionClient
from tests.conftest import Servers
from tests.factories import count_rows
from tests.jobs.conftest import WorkerProcess, eventually, wait_ready


async def _expire_result(redis: Redis, queue: str, action_id: str) -> None:
    """What ARQ_KEEP_RESULT_S does in time: arq forgets the job, so the same id can be sent again."""
    await Job(action_id, redis, _queue_name=queue, _deserializer=json_deserializer).result(timeout=10, poll_delay=0.02)
    assert await redis.delete(f"arq:result:{action_id}") == 1


async def _letters(redis: Redis, queue: str) -> dict[str, dict[str, Any]]:
    return {d["job_id"]: d for d in await read_dead_letters(redis, queue, 1000)}


async def test_an_action_for_a_tenant_that_does_not_exist_is_refused_and_writes_nothing(
    worker: WorkerProcess, client: ActionClient, db: Database, redis: Redis, queue: str
) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:12]}"
    answer = await client.call(
        "conversation.save_message", tenant_id=ghost, session_id="s", data={"role": "user", "content": "hi"}
    )
    assert answer["success"] is False and answer["error"]["code"] == "NOT_FOUND", answer
    assert ghost in answer["error"]["message"]
    created = await client.call("conversation.create", tenant_id=ghost, session_id="s2", data={})
    assert created["error"]["code"] == "NOT_FOUND"
    for table in ("conversations", "messages", "action_log"):
        assert await count_rows(db, table, ghost) == 0
    letters = await _letters(redis, queue)
    assert letters[answer["action_id"]]["error"]["code"] == "NOT_FOUND"
    assert letters[answer["action_id"]]["tenant_id"] == ghost


async def test_the_same_action_id_with_another_payload_is_idempotency_key_reused(
    worker: WorkerProcess, client: ActionClient, db: Database, redis: Redis, queue: str, tenant: str
) -> None:
    action_id = f"act-{uuid.uuid4().hex}"
    data = {"role": "user", "content": "the original"}
    first = await client.call(
        "conversation.save_message", tenant_id=tenant, session_id="r", data=data, action_id=action_id
    )
    assert first["success"] and first["data"]["created"] is True

    async def resend(action_type: str, **fields: Any) -> dict[str, Any]:
        await _expire_result(redis, queue, action_id)
        return await client.call(action_type, tenant_id=tenant, action_id=action_id, **fields)

    # A replay of the same payload still answers like the first.
    same = await resend("conversation.save_message", session_id="r", data=data)
    assert same["success"] and same["data"]["created"] is False
    assert same["data"]["message"] == first["data"]["message"]
    # Another content, another target, another action type: refused, nothing written.
    for action_type, fields in (
        ("conversation.save_message", {"session_id": "r", "data": {"role": "user", "content": "changed"}}),
        ("conversation.save_message", {"session_id": "elsewhere", "data": data}),
        ("conversation.update_state", {"session_id": "r", "data": {"key": "k", "value": 1}}),
    ):
        answer = await resend(action_type, **fields)
        assert answer["success"] is False, (action_type, fields, answer)
        assert answer["error"]["code"] == "IDEMPOTENCY_KEY_REUSED", answer
    assert await count_rows(db, "messages", tenant) == 1
    assert await count_rows(db, "conversations", tenant) == 1
    assert await count_rows(db, "conversation_state", tenant) == 0

    # Actions answered from the log (create, update_state, …) are bound the same way.
    create_id = f"act-{uuid.uuid4().hex}"
    made = await client.call(
        "conversation.create", tenant_id=tenant, session_id="c", data={"title": "one"}, action_id=create_id
    )
    assert made["success"]
    await _expire_result(redis, queue, create_id)
    replay = await client.call(
        "conversation.create", tenant_id=tenant, session_id="c", data={"title": "one"}, action_id=create_id
    )
    assert replay["data"] == made["data"]
    await _expire_result(redis, queue, create_id)
    other = await client.call(
        "conversation.create", tenant_id=tenant, session_id="c", data={"title": "two"}, action_id=create_id
    )
    assert other["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    letters = await _letters(redis, queue)
    assert letters[create_id]["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_with_signing_keys_only_intact_signed_envelopes_run(
    servers: Servers, db: Database, redis: Redis, tenant: str, worker_factory: Any
) -> None:
    queue = f"cs-test-signed-{uuid.uuid4().hex[:8]}"
    worker = worker_factory(queue, ACTION_SIGNING_KEYS="producer1:secret1,producer2:secret2")
    await wait_ready(worker, redis)
    message = {"role": "user", "content": "signed"}
    async with await ActionClient.connect(
        servers.redis_url, queue_name=queue, signing_key=("producer2", "secret2")
    ) as signed:
        ok = await signed.call("conversation.save_message", tenant_id=tenant, session_id="s", data=message)
        assert ok["success"] is True, ok
    assert await count_rows(db, "messages", tenant) == 1

    async with await ActionClient.connect(servers.redis_url, queue_name=queue) as plain:
        unsigned = plain.envelope("conversation.save_message", tenant_id=tenant, session_id="s", data=message)
        forged = signing.sign(
            plain.envelope("conversation.save_message", tenant_id=tenant, session_id="s", data=message),
            "producer1",
            "not-the-secret",
        )
        unknown_key = signing.sign(
            plain.envelope("conversation.save_message", tenant_id=tenant, session_id="s", data=message),
            "producer9",
            "secret1",
        )
        altered = signing.sign(
            plain.envelope("conversation.save_message", tenant_id=tenant, session_id="s", data=message),
            "producer1",
            "secret1",
        )
        altered["tenant_id"] = f"{tenant}-x"  # signed for one tenant, sent for another
        tampered = signing.sign(
            plain.envelope("conversation.save_message", tenant_id=tenant, session_id="s", data=message),
            "producer1",
            "secret1",
        )
        tampered["data"] = {"role": "user", "content": "rewritten in Redis"}
        bad = [unsigned, forged, unknown_key, altered, tampered]
        for envelope in bad:
            assert await plain.send(envelope)

        async def all_dead() -> bool:
            letters = await _letters(redis, queue)
            return all(e["action_id"] in letters for e in bad)

        await eventually(all_dead)
        letters = await _letters(redis, queue)
        for envelope in bad:
            letter = letters[envelope["action_id"]]
            assert letter["kind"] == "unauthenticated" and letter["error"]["code"] == "UNAUTHENTICATED", letter
            # Nothing answered on the callback list a forger chose.
            assert await redis.llen(plain.reply_queue) == 0  # type: ignore[misc]
    assert await count_rows(db, "messages", tenant) == 1


async def _enqueue_raw(redis: Redis, queue: str, job_id: str, raw: bytes) -> None:
    await redis.set(f"arq:job:{job_id}", raw, px=60_000)
    await redis.zadd(queue, {job_id: int(time.time() * 1000)})


async def test_every_undecodable_job_becomes_a_dead_letter(
    worker: WorkerProcess, redis: Redis, queue: str, tenant: str
) -> None:
    job = {"t": 1, "et": int(time.time() * 1000), "k": {}}
    envelope = {"action_id": "x", "action_type": "conversation.get_history", "tenant_id": tenant, "data": {}}
    deep: Any = {"end": True}
    for _ in range(150):
        deep = {"d": deep}
    cases = {
        "pickled": pickle.dumps({**job, "f": "conversation.get_history", "a": [envelope]}),
        "invalid-json": b'{"f": "conversation.get_history", "a": [',
        "too-deep-for-json": b"[" * 100_000 + b"]" * 100_000,
        "too-deep": json.dumps({**job, "f": "conversation.get_history", "a": [{**envelope, "data": deep}]}).encode(),
        "not-an-object": b'["conversation.get_history"]',
        "not-a-job": b'{"hello": "world"}',
        "unknown-function": json.dumps({**job, "f": "os.system", "a": ["rm -rf /"]}).encode(),
    }
    ids = {name: f"raw-{name}-{uuid.uuid4().hex[:8]}" for name in cases}
    for name, raw in cases.items():
        await _enqueue_raw(redis, queue, ids[name], raw)

    async def all_dead() -> bool:
        letters = await _letters(redis, queue)
        return all(i in letters for i in ids.values())

    await eventually(all_dead)
    letters = await _letters(redis, queue)
    for name, job_id in ids.items():
        letter = letters[job_id]
        assert letter["kind"] == "undecodable", (name, letter)
        assert letter["error"]["code"] == "BAD_USER_INPUT"
        assert letter["raw_bytes"] == len(cases[name])
    assert "deeper than" in letters[ids["too-deep"]]["error"]["message"]
    assert "os.system" in letters[ids["unknown-function"]]["error"]["message"]
    assert worker.proc.poll() is None
    assert await redis.zcard(queue) == 0  # nothing left behind to be picked up again
