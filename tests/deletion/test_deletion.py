"""deleteConversation and eraseEndUser over real HTTP and WebSocket, with real keys: nothing of the
deleted conversations is left in any table, in Redis or in search; repeats return zeros; scopes,
bad input and tenant isolation hold; live subscriptions complete; retention takes the same path."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.errors import NotFound
from app.resources import Resources
from app.services import actions as act
from app.services import maintenance
from app.settings import Settings
from db.repositories import actions as action_repo
from db.repositories import admin as admin_repo
from db.session import Database
from tests.conftest import Servers
from tests.deletion.helpers import (
    ADD,
    DELETE,
    ERASE,
    HISTORY,
    SEARCH,
    cached_keys,
    caller,
    conversation_with_content,
    holds_content,
    leftovers,
)
from tests.subscriptions.both_protocols import PROTOCOLS, Client
from tests.subscriptions.conftest import Server


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


def _marker() -> str:
    return "zq" + uuid.uuid4().hex[:12]


async def _with_webhook(db: Database, tenant: str) -> None:
    """A webhook nobody answers: syncCrm then writes a CRM delivery (an outbox row)."""
    async with db.read() as conn:
        await conn.execute(
            'UPDATE tenants SET settings = settings || \'{"crm_webhook_url": "http://127.0.0.1:9/hook"}\'::jsonb '
            "WHERE tenant_id = $1",
            tenant,
        )


async def _log_actions(db: Database, tenant: str, cid: str, session_id: str, client_message_id: str) -> list[Any]:
    """What the worker logs for a conversation.create (its answer names the conversation) and a
    save_message (its action_id is the message's clientMessageId), written as the worker does."""
    create = act.Envelope(
        action_id=f"a-{uuid.uuid4()}", action_type=act.CREATE, tenant_id=tenant, session_id=session_id, data={}
    )
    save = act.Envelope(
        action_id=client_message_id, action_type=act.SAVE_MESSAGE, tenant_id=tenant, session_id=session_id, data={}
    )
    async with db.read() as conn:
        await action_repo.claim(conn, tenant, create.action_id, act.CREATE, act.payload_hash(create))
        await action_repo.set_response(conn, tenant, create.action_id, {"conversation": {"id": cid, "title": "x"}})
        await action_repo.claim(conn, tenant, save.action_id, act.SAVE_MESSAGE, act.payload_hash(save))
    return [create, save]


async def test_erasure_leaves_nothing_of_the_user_anywhere(
    db: Database, redis: Redis, http: httpx.AsyncClient, tenant: str, other_tenant: str
) -> None:
    marker, user = _marker(), f"user-{uuid.uuid4().hex[:8]}"
    admin, admin_key_id = await caller(db, http, tenant, "read,write,admin")
    other, _ = await caller(db, http, other_tenant, "read,write")
    await _with_webhook(db, tenant)
    mine = [await conversation_with_content(admin, f"s{n}-{marker}", user, marker) for n in range(2)]
    someone_else = await conversation_with_content(admin, f"x-{uuid.uuid4()}", "another-user", "keepme" + marker[2:])
    # Another tenant: the same user id and the same session id must stay untouched.
    theirs = await conversation_with_content(other, f"s0-{marker}", user, marker)
    await admin.data("mutation($c: ID!) { syncCrm(conversationId: $c) { status } }", {"c": mine[0]})
    history = (await admin.data(HISTORY, {"id": mine[0]}))["history"]["edges"]
    cmid = (
        await admin.data(
            "query($id: ID!) { history(conversationId: $id, first: 1) { edges { node { clientMessageId } } } }",
            {"id": mine[0]},
        )
    )["history"]["edges"][0]["node"]["clientMessageId"]
    envelopes = await _log_actions(db, tenant, mine[0], f"s0-{marker}", cmid)
    # Message vectors (issue 14.2) exist for every conversation before the erasure.
    from app.services import embedder, embeddings

    assert await embeddings.backfill(db, embedder.LocalEmbedder(), tenant_id=tenant) > 0
    # A failed action about the conversation, kept for the admin API: its envelope holds content.
    async with db.read() as conn:
        await admin_repo.insert_dead_letter(
            conn,
            tenant,
            uuid.uuid4(),
            {
                "kind": "domain_error",
                "action_type": "conversation.update_state",
                "action_id": f"dl-{marker}",
                "correlation_id": None,
                "error": {"code": "CONFLICT"},
                "envelope": {"payload": {"conversation_id": mine[0], "value": marker}},
            },
        )
    for cid in mine:  # reads fill the hot cache
        await admin.data(HISTORY, {"id": cid})
        await admin.data("query($id: ID!) { conversation(id: $id) { title states { key } } }", {"id": cid})
    assert len(history) == 3
    # The checks below see the data before the erasure (so they would catch it after).
    needles = [marker, user, *mine]
    before = await leftovers(db, tenant, mine, user, needles)
    assert {
        "conversations",
        "messages",
        "message_sources",
        "conversation_state",
        "crm_outbox",
        "action_log",
        "dead_letters",
    } <= set(before)
    assert holds_content(await cached_keys(redis, mine))
    assert len((await admin.data(SEARCH, {"q": marker}))["searchMessages"]["edges"]) == 6
    theirs_before = await leftovers(db, other_tenant, [theirs], user, [marker])

    result = await admin.data(ERASE, {"u": user})
    assert result["eraseEndUser"] == {"conversations": 2, "messages": 6, "stateKeys": 2}

    assert await leftovers(db, tenant, mine, user, needles) == {}
    assert holds_content(await cached_keys(redis, mine)) == {}
    assert (await admin.data(SEARCH, {"q": marker}))["searchMessages"]["edges"] == []
    for cid in mine:
        assert (await admin.data("query($id: ID!) { conversation(id: $id) { id } }", {"id": cid}))[
            "conversation"
        ] is None
    # Untouched: the tenant's other user, and the other tenant's same user and session.
    assert (await admin.data(HISTORY, {"id": someone_else}))["history"]["edges"]
    assert await leftovers(db, other_tenant, [theirs], user, [marker]) == theirs_before
    assert len((await other.data(SEARCH, {"q": marker}))["searchMessages"]["edges"]) == 3
    # The logged actions keep their id (a retry is not run again) but answer NOT_FOUND.
    async with db.read() as conn:
        for env in envelopes:
            with pytest.raises(NotFound):
                await act.answered(conn, env)
        audit = await conn.fetch(
            "SELECT actor, action, details FROM audit_log WHERE tenant_id = $1 AND action = 'eraseEndUser'", tenant
        )
    assert [(a["actor"], a["details"]["conversations"], a["details"]["messages"]) for a in audit] == [
        (admin_key_id, 2, 6)
    ]
    assert user not in str(audit[0]["details"]) and marker not in str(audit[0]["details"])

    again = await admin.data(ERASE, {"u": user})
    assert again["eraseEndUser"] == {"conversations": 0, "messages": 0, "stateKeys": 0}


async def test_delete_conversation_scopes_bad_input_and_other_tenants(
    db: Database, redis: Redis, http: httpx.AsyncClient, tenant: str, other_tenant: str
) -> None:
    marker = _marker()
    writer, writer_id = await caller(db, http, tenant, "read,write")
    reader, _ = await caller(db, http, tenant, "read")
    other, _ = await caller(db, http, other_tenant, "read,write,admin")
    cid = await conversation_with_content(writer, f"s-{marker}", "u1", marker)
    await writer.data(HISTORY, {"id": cid})

    assert await reader.error_code(DELETE, {"id": cid}) == "FORBIDDEN"
    assert await writer.error_code(ERASE, {"u": "u1"}) == "FORBIDDEN"
    assert await writer.error_code(DELETE, {"id": "not-a-uuid"}) == "BAD_USER_INPUT"
    assert await writer.error_code(ERASE, {"u": ""}) == "FORBIDDEN"  # the scope is checked first
    admin, _ = await caller(db, http, tenant, "admin")
    assert await admin.error_code(ERASE, {"u": ""}) == "BAD_USER_INPUT"
    assert await admin.error_code(ERASE, {"u": "x" * 201}) == "BAD_USER_INPUT"
    # Another tenant's id: nothing of ours goes.
    assert (await other.data(DELETE, {"id": cid}))["deleteConversation"]["conversations"] == 0
    assert len((await writer.data(HISTORY, {"id": cid}))["history"]["edges"]) == 3

    assert (await writer.data(DELETE, {"id": cid}))["deleteConversation"] == {
        "conversations": 1,
        "messages": 3,
        "stateKeys": 1,
    }
    assert await leftovers(db, tenant, [cid], None, [marker]) == {}
    assert holds_content(await cached_keys(redis, [cid])) == {}
    assert (await writer.data(DELETE, {"id": cid}))["deleteConversation"] == {
        "conversations": 0,
        "messages": 0,
        "stateKeys": 0,
    }
    async with db.read() as conn:
        rows = await conn.fetch(
            "SELECT actor, details FROM audit_log WHERE tenant_id = $1 AND action = 'deleteConversation' ORDER BY at",
            tenant,
        )
    assert [(r["actor"], r["details"]["conversations"]) for r in rows] == [(writer_id, 1), (writer_id, 0)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_live_subscription_to_a_deleted_conversation_completes(
    db: Database, http: httpx.AsyncClient, server: Server, tenant: str, protocol: str
) -> None:
    writer, _ = await caller(db, http, tenant, "read,write")
    cid = (
        await writer.data(
            "mutation($i: CreateConversationInput!) { createConversation(input: $i) { id } }",
            {"i": {"sessionId": f"live-{uuid.uuid4()}"}},
        )
    )["createConversation"]["id"]
    ws = await Client.open(server.ws, protocol)
    try:
        await ws.init_key(writer.key)
        await ws.subscribe(
            "1",
            {
                "query": "subscription($c: ID!) { messageAdded(conversationId: $c, afterSeq: 0) { seq } }",
                "variables": {"c": cid},
            },
        )
        await writer.data(ADD, {"i": {"conversationId": cid, "role": "USER", "content": "hi"}})
        assert (await ws.data())["data"]["messageAdded"]["seq"] == 1
        await writer.data(DELETE, {"id": cid})
        done = await ws.recv()
        assert done == {"id": "1", "type": "complete"}
    finally:
        await ws.connection.close()


async def test_appends_racing_a_deletion_leave_no_half_conversation(
    db: Database, http: httpx.AsyncClient, tenant: str
) -> None:
    """Writers append by sessionId and by conversationId while the conversation is deleted (and
    the deletion retried): afterwards the old conversation has no row anywhere, an append by its
    id answers NOT_FOUND, and an append by its sessionId starts a fresh conversation at seq 1."""
    writer, _ = await caller(db, http, tenant, "read,write")
    session = f"race-{uuid.uuid4()}"
    cid = (await writer.data(ADD, {"i": {"sessionId": session, "role": "USER", "content": "first"}}))["addMessage"][
        "conversation"
    ]["id"]
    stop = asyncio.Event()
    outcomes: list[str] = []

    async def append(by: dict[str, str]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            body = await writer.gql(ADD, {"i": {**by, "role": "USER", "content": f"m{n}"}})
            outcomes.append(body["errors"][0]["extensions"]["code"] if body.get("errors") else "ok")

    tasks = [asyncio.create_task(append({"sessionId": session})), asyncio.create_task(append({"conversationId": cid}))]
    await asyncio.sleep(0.3)
    first = (await writer.data(DELETE, {"id": cid}))["deleteConversation"]
    await asyncio.sleep(0.2)
    await writer.data(DELETE, {"id": cid})  # the retried deletion
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*tasks)
    assert first["conversations"] == 1 and first["messages"] >= 1
    assert "NOT_FOUND" in outcomes and set(outcomes) <= {"ok", "NOT_FOUND"}
    assert await leftovers(db, tenant, [cid], None, []) == {}
    body = await writer.gql(ADD, {"i": {"conversationId": cid, "role": "USER", "content": "late"}})
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    async with db.read() as conn:
        # Whatever conversation holds the sessionId now is whole: seqs 1..last_seq, no gaps.
        row = await conn.fetchrow(
            "SELECT c.id, c.last_seq, c.message_count, count(m.seq) AS n, min(m.seq) AS lo, max(m.seq) AS hi "
            "FROM conversations c LEFT JOIN messages m ON m.tenant_id = c.tenant_id AND m.conversation_id = c.id "
            "WHERE c.tenant_id = $1 AND c.session_id = $2 GROUP BY c.tenant_id, c.id",
            tenant,
            session,
        )
        orphans = await conn.fetchval(
            "SELECT count(*) FROM messages m WHERE m.tenant_id = $1 AND NOT EXISTS "
            "(SELECT 1 FROM conversations c WHERE c.tenant_id = m.tenant_id AND c.id = m.conversation_id)",
            tenant,
        )
    assert orphans == 0
    assert row is not None and row["id"] != uuid.UUID(cid)
    assert row["n"] == row["last_seq"] == row["message_count"] and row["lo"] == 1 and row["hi"] == row["last_seq"]


async def test_retention_purges_through_the_deletion_path(
    servers: Servers, db: Database, redis: Redis, http: httpx.AsyncClient, tenant: str
) -> None:
    marker = _marker()
    writer, _ = await caller(db, http, tenant, "read,write")
    cid = await conversation_with_content(writer, f"old-{marker}", "u-ret", marker)
    await writer.data("mutation($c: ID!) { closeSession(conversationId: $c) { status } }", {"c": cid})
    await writer.data(HISTORY, {"id": cid})  # cached (closed entries live CACHE_CLOSED_GRACE_S)
    assert holds_content(await cached_keys(redis, [cid]))
    async with db.read() as conn:
        await conn.execute(
            "UPDATE tenants SET settings = settings || '{\"retention_days\": 1}'::jsonb WHERE tenant_id = $1", tenant
        )
        await conn.execute(
            "UPDATE conversations SET closed_at = now() - interval '3 days' WHERE tenant_id = $1", tenant
        )
    # The worker's wiring: the deletion's events reach its hot cache and its fan-out.
    settings = Settings(_env_file=None, database_url=servers.database_url, redis_url=servers.redis_url)
    resources = await Resources.open(settings, servers.database_url, servers.redis_url)
    try:
        report = await maintenance.purge_expired(
            resources.db, resources.redis, datetime.now(UTC) + timedelta(seconds=1)
        )
    finally:
        await resources.close()
    assert report.conversations.get(tenant) == 1
    assert await leftovers(db, tenant, [cid], None, [marker]) == {}
    assert holds_content(await cached_keys(redis, [cid])) == {}
    async with db.read() as conn:
        audit = await conn.fetch("SELECT actor, action, details FROM audit_log WHERE tenant_id = $1", tenant)
    assert [(a["actor"], a["action"], a["details"]["conversations"], a["details"]["messages"]) for a in audit] == [
        ("system", "retentionPurge", 1, 3)
    ]


async def test_writes_after_deletion_by_caller_without_read_scope(
    db: Database, http: httpx.AsyncClient, tenant: str
) -> None:
    """A write-only key may delete (the counts are what the write decided, not stored data)."""
    writer, _ = await caller(db, http, tenant, "write")
    cid = (await writer.data(ADD, {"i": {"sessionId": f"w-{uuid.uuid4()}", "role": "USER", "content": "x"}}))[
        "addMessage"
    ]["conversation"]["id"]
    assert (await writer.data(DELETE, {"id": cid}))["deleteConversation"]["messages"] == 1


async def test_a_state_write_waiting_on_a_deletion_answers_not_found(
    db: Database, http: httpx.AsyncClient, tenant: str
) -> None:
    """The deletion holds the conversation row; a state write queued behind it must answer
    NOT_FOUND once it commits (not INTERNAL from the foreign key), and leave no row."""
    from app.services import deletion

    writer, _ = await caller(db, http, tenant, "read,write")
    cid = (await writer.data(ADD, {"i": {"sessionId": f"st-{uuid.uuid4()}", "role": "USER", "content": "x"}}))[
        "addMessage"
    ]["conversation"]["id"]
    locked = asyncio.Event()
    release = asyncio.Event()

    async def slow_delete(uow: Any) -> Any:
        result = await deletion.delete_conversation(uow, tenant, cid, "test")
        locked.set()
        await release.wait()  # the rows are gone but not committed: writers wait on the lock
        return result

    deleting = asyncio.create_task(db.run(slow_delete))
    await locked.wait()
    write = asyncio.create_task(
        writer.gql(
            "mutation($i: SetStateInput!) { setState(input: $i) { version } }",
            {"i": {"conversationId": cid, "key": "k", "value": 1}},
        )
    )
    await asyncio.sleep(0.3)
    assert not write.done()
    release.set()
    assert (await deleting).conversations == 1
    body = await write
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND", body
    assert await leftovers(db, tenant, [cid], None, []) == {}
