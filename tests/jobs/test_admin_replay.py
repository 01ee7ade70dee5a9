"""Dead letters through a real arq worker: kept per tenant in Postgres, listed and replayed by
the admin API; replaying twice applies the action once (its action_id is the idempotency key)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from app.main import create_app
from app.settings import Settings
from db.session import Database
from jobs.client import ActionClient
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers
from tests.jobs.conftest import WorkerProcess, eventually

LETTERS = """{ deadLetters(first: 10) { edges { cursor node { id kind actionType actionId correlationId error
  envelope failedAt replayedAt } } pageInfo { hasNextPage } } }"""
REPLAY = "mutation($id: ID!) { replayDeadLetter(id: $id) }"


@pytest.fixture(scope="module")
async def queue_app(servers: Servers, queue: str) -> AsyncIterator[Starlette]:
    """The API on the module's queue (replays go where the worker listens)."""
    application = create_app(
        Settings(_env_file=None, arq_queue=queue), database_url=servers.database_url, redis_url=servers.redis_url
    )
    async with application.router.lifespan_context(application):
        yield application


async def _caller(db: Database, app: Starlette, tenant: str, scopes: str) -> tuple[Caller, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    return await make_caller(db, http, tenant, scopes), http


async def _state(db: Database, tenant: str, conversation_id: str) -> Any:
    async with db.read() as conn:
        return await conn.fetchrow(
            "SELECT value, version, deleted FROM conversation_state WHERE tenant_id = $1 AND conversation_id = $2 "
            "AND key = 'k'",
            tenant,
            uuid.UUID(conversation_id),
        )


async def test_a_dead_letter_replayed_twice_applies_once(
    worker: WorkerProcess,
    client: ActionClient,
    db: Database,
    redis: Redis,
    queue_app: Starlette,
    tenant: str,
    other_tenant: str,
) -> None:
    created = await client.call("conversation.create", tenant_id=tenant, session_id=f"s-{uuid.uuid4().hex}")
    conversation_id = created["data"]["conversation"]["id"]
    first = await client.call(
        "conversation.update_state", tenant_id=tenant, conversation_id=conversation_id, data={"key": "k", "value": 1}
    )
    assert first["success"], first
    # "Must not exist yet" while it does: a domain error, dead-lettered.
    failed = await client.call(
        "conversation.update_state",
        tenant_id=tenant,
        conversation_id=conversation_id,
        data={"key": "k", "value": 2, "expected_version": 0},
        correlation_id="corr-1",
    )
    assert failed["success"] is False and failed["error"]["code"] == "CONFLICT"
    admin, http = await _caller(db, queue_app, tenant, "read,write,admin")
    theirs, their_http = await _caller(db, queue_app, other_tenant, "read,write,admin")
    try:
        letters = await eventually(lambda: _letters(admin))
        assert len(letters) == 1
        letter = letters[0]
        assert letter["kind"] == "domain_error" and letter["actionType"] == "conversation.update_state"
        assert letter["actionId"] == failed["action_id"] and letter["correlationId"] == "corr-1"
        assert letter["error"]["code"] == "CONFLICT" and letter["envelope"]["data"]["value"] == 2
        assert letter["replayedAt"] is None
        # Another tenant neither sees nor replays it.
        assert await _letters(theirs) == []
        assert await theirs.error_code(REPLAY, {"id": letter["id"]}) == "NOT_FOUND"

        # What made it fail is gone: the key is deleted (a tombstone satisfies "must not exist").
        deleted = await admin.data(
            'mutation($c: ID!) { deleteState(conversationId: $c, key: "k") }', {"c": conversation_id}
        )
        assert deleted["deleteState"] is True
        assert (await admin.data(REPLAY, {"id": letter["id"]}))["replayDeadLetter"] is True

        async def applied() -> Any:
            row = await _state(db, tenant, conversation_id)
            return row if not row["deleted"] else None

        row = await eventually(applied)
        assert (row["value"], row["version"]) == (2, 3)
        result_key = f"arq:result:{letter['actionId']}"
        first_run = await eventually(lambda: redis.get(result_key))
        # The second replay runs the same action_id again (a new arq job: its result replaces the
        # first run's): the action log answers, nothing changes.
        assert (await admin.data(REPLAY, {"id": letter["id"]}))["replayDeadLetter"] is True

        async def ran_again() -> bool:
            result = await redis.get(result_key)
            return result is not None and result != first_run

        await eventually(ran_again)
        assert b'"success":true' in (await redis.get(result_key) or b"")
        row = await _state(db, tenant, conversation_id)
        assert (row["value"], row["version"], row["deleted"]) == (2, 3, False)
        async with db.read() as conn:
            applied_once = await conn.fetchval(
                "SELECT count(*) FROM action_log WHERE tenant_id = $1 AND action_id = $2", tenant, letter["actionId"]
            )
        assert applied_once == 1
        after = (await _letters(admin))[0]
        assert after["replayedAt"] is not None and len(await _letters(admin)) == 1  # no new failure
        audit = await admin.data("{ auditLog { edges { node { action details } } } }")
        replays = [e["node"] for e in audit["auditLog"]["edges"] if e["node"]["action"] == "replayDeadLetter"]
        assert len(replays) == 2 and replays[0]["details"]["actionId"] == letter["actionId"]
    finally:
        await http.aclose()
        await their_http.aclose()


async def _letters(caller: Caller) -> list[dict[str, Any]]:
    data = await caller.data(LETTERS)
    return [e["node"] for e in data["deadLetters"]["edges"]]


async def test_envelopes_without_a_known_tenant_stay_out_of_tenant_views(
    worker: WorkerProcess, client: ActionClient, db: Database, redis: Redis, queue: str
) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    answer = await client.call("conversation.create", tenant_id=ghost, session_id="s")
    assert answer["success"] is False

    async def in_redis() -> bool:
        raw = await redis.lrange(f"{queue}:dead-letters", 0, 50)  # type: ignore[misc]
        return any(ghost.encode() in r for r in raw)

    await eventually(in_redis)
    async with db.read() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dead_letters WHERE tenant_id = $1", ghost) == 0
