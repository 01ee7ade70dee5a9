"""messageAdded and conversationEvents over a real uvicorn: exactly once, in order, across
reconnects, processes and a Redis restart."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.embedded.process import EmbeddedServer
from app.embedded.redis import start_redis
from app.events import EventHub, SubscriberOverflow, conversation_channel
from app.models import DomainEvent, EventType
from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers
from tests.subscriptions.conftest import WS, Server, serve, settings_for

SUB = """subscription($id: ID, $s: String, $after: Int) {
  messageAdded(conversationId: $id, sessionId: $s, afterSeq: $after) { seq content role } }"""
ADD = "mutation($s: String!, $c: String!) { addMessage(input: {sessionId: $s, role: USER, content: $c}) { message { seq } conversation { id } } }"


async def seqs(ws: WS, count: int, op: str = "1", wait: float = 5.0) -> list[int]:
    out: list[int] = []
    while len(out) < count:
        msg = await ws.recv(wait=wait)
        assert msg["type"] == "next" and msg["id"] == op, msg
        out.append(msg["payload"]["data"]["messageAdded"]["seq"])
    return out


async def subscriber(server: Server, key: str, variables: dict[str, Any]) -> WS:
    ws = await WS.open(server.ws)
    assert (await ws.init(key))["type"] == "connection_ack"
    await ws.subscribe("1", SUB, variables)
    return ws


async def test_writes_through_one_process_reach_subscribers_of_another(
    server: Server, server_b: Server, writer: Caller
) -> None:
    first = await writer.data(ADD, {"s": "x-proc", "c": "one"})
    ws = await subscriber(server_b, writer.key, {"s": "x-proc", "after": 0})
    try:
        assert await seqs(ws, 1) == [1]
        for i in range(2, 6):
            await writer.data(ADD, {"s": "x-proc", "c": str(i)})
        assert await seqs(ws, 4) == [2, 3, 4, 5]
        assert first["addMessage"]["conversation"]["id"]
    finally:
        await ws.close()


async def test_a_dropped_socket_resumes_from_the_last_seq(server: Server, writer: Caller) -> None:
    for i in range(3):
        await writer.data(ADD, {"s": "resume", "c": str(i)})
    ws = await subscriber(server, writer.key, {"s": "resume", "after": 0})
    got = await seqs(ws, 3)
    await ws.close()  # mid-stream: the client goes away
    for i in range(4):
        await writer.data(ADD, {"s": "resume", "c": f"while away {i}"})
    ws = await subscriber(server, writer.key, {"s": "resume", "after": got[-1]})
    try:
        got += await seqs(ws, 4)
        await writer.data(ADD, {"s": "resume", "c": "live"})
        got += await seqs(ws, 1)
        assert got == list(range(1, 9))
        with pytest.raises(TimeoutError):
            await ws.recv(wait=0.5)  # nothing twice
    finally:
        await ws.close()


async def test_live_only_without_after_seq(server: Server, writer: Caller) -> None:
    await writer.data(ADD, {"s": "live-only", "c": "old"})
    ws = await subscriber(server, writer.key, {"s": "live-only"})
    try:
        # Live only means from when the subscription is set up, which the protocol does not ack.
        await asyncio.sleep(0.5)
        await writer.data(ADD, {"s": "live-only", "c": "new"})
        msg = await ws.recv()
        assert msg["payload"]["data"]["messageAdded"] == {"seq": 2, "content": "new", "role": "USER"}
    finally:
        await ws.close()


async def test_a_session_that_does_not_exist_yet_is_waited_for(server: Server, writer: Caller) -> None:
    ws = await subscriber(server, writer.key, {"s": "future", "after": 0})
    try:
        await asyncio.sleep(0.2)
        await writer.data(ADD, {"s": "future", "c": "hello"})
        await writer.data(ADD, {"s": "future", "c": "again"})
        assert await seqs(ws, 2) == [1, 2]
    finally:
        await ws.close()


async def test_ten_writers_and_fifty_subscribers_see_every_message_once_in_order(
    server: Server, server_b: Server, writer: Caller
) -> None:
    first = await writer.data(ADD, {"s": "crowd", "c": "start"})
    cid = first["addMessage"]["conversation"]["id"]
    sockets = [await subscriber(server if i % 2 else server_b, writer.key, {"id": cid, "after": 0}) for i in range(50)]
    per_writer = 20
    # The claim is exactly once and in order, not latency: on a loaded 2-core box (Citus: four
    # Postgres servers beside this process's two APIs and 60 clients) one write can take seconds.
    patient = Caller(http=httpx.AsyncClient(base_url=server.url, timeout=60), tenant=writer.tenant, key=writer.key)

    async def write(w: int) -> None:
        for i in range(per_writer):
            await patient.data(ADD, {"s": "crowd", "c": f"{w}-{i}"})

    try:
        receivers = [asyncio.create_task(seqs(ws, 1 + 10 * per_writer, wait=30)) for ws in sockets]
        await asyncio.gather(*(write(w) for w in range(10)))
        results = await asyncio.wait_for(asyncio.gather(*receivers), 60)
        for got in results:
            assert got == list(range(1, 2 + 10 * per_writer))
    finally:
        await patient.http.aclose()
        await asyncio.gather(*(ws.close() for ws in sockets))


async def test_closing_the_conversation_completes_the_stream(server: Server, writer: Caller) -> None:
    await writer.data(ADD, {"s": "ending", "c": "a"})
    ws = await subscriber(server, writer.key, {"s": "ending", "after": 0})
    try:
        assert await seqs(ws, 1) == [1]
        await writer.data(ADD, {"s": "ending", "c": "b"})
        await writer.data('mutation { closeSession(sessionId: "ending") { status } }')
        assert await seqs(ws, 1) == [2]
        assert (await ws.recv()) == {"id": "1", "type": "complete"}
    finally:
        await ws.close()


async def test_another_tenants_conversation_fails_only_that_operation(
    server: Server, writer: Caller, db: Database, other_tenant: str
) -> None:
    created = await writer.data(ADD, {"s": "private", "c": "secret"})
    cid = created["addMessage"]["conversation"]["id"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        intruder = await make_caller(db, http, other_tenant)
    ws = await WS.open(server.ws)
    try:
        assert (await ws.init(intruder.key))["type"] == "connection_ack"
        await ws.subscribe("1", SUB, {"id": cid, "after": 0})
        msg = await ws.recv()
        assert msg["type"] in ("error", "next")
        errors = msg["payload"] if msg["type"] == "error" else msg["payload"]["errors"]
        assert errors[0]["extensions"]["code"] == "NOT_FOUND" and "secret" not in str(msg)
        if msg["type"] == "next":
            assert await ws.recv() == {"id": "1", "type": "complete"}
        await ws.subscribe("2", SUB, {"s": "intruder-own", "after": 0})
        await intruder.http.aclose()
        async with httpx.AsyncClient(base_url=server.url) as http:
            own = Caller(http=http, tenant=other_tenant, key=intruder.key)
            await own.data(ADD, {"s": "intruder-own", "c": "mine"})
        assert await seqs(ws, 1, op="2") == [1]
    finally:
        await ws.close()


async def test_conversation_events_filter_by_agent(server: Server, writer: Caller) -> None:
    ws = await WS.open(server.ws)
    try:
        assert (await ws.init(writer.key))["type"] == "connection_ack"
        await ws.subscribe(
            "e",
            'subscription { conversationEvents(agentId: "bot-7") { type stateKey conversation { sessionId agentId } message { seq } } }',
        )
        await asyncio.sleep(0.2)
        await writer.data('mutation { createConversation(input: {sessionId: "other", agentId: "bot-1"}) { id } }')
        conv = await writer.data('mutation { createConversation(input: {sessionId: "ev7", agentId: "bot-7"}) { id } }')
        cid = conv["createConversation"]["id"]
        await writer.data(ADD, {"s": "ev7", "c": "hi"})
        await writer.data(
            f'mutation {{ setState(input: {{conversationId: "{cid}", key: "mood", value: 1}}) {{ version }} }}'
        )
        await writer.data('mutation { closeSession(sessionId: "ev7") { status } }')
        events = [(await ws.recv())["payload"]["data"]["conversationEvents"] for _ in range(4)]
        assert [e["type"] for e in events] == ["CREATED", "MESSAGE_ADDED", "STATE_CHANGED", "CLOSED"]
        assert all(e["conversation"] == {"sessionId": "ev7", "agentId": "bot-7"} for e in events)
        assert events[1]["message"] == {"seq": 1} and events[2]["stateKey"] == "mood"
    finally:
        await ws.close()


async def test_a_redis_restart_loses_nothing(
    servers: Servers, db: Database, tenant: str, redis_of_its_own: EmbeddedServer
) -> None:
    """The hub reconnects by itself and subscribers backfill from Postgres: no one reconnects."""
    settings = settings_for(servers).model_copy(update={"redis_url": redis_of_its_own.url})
    async for own in serve(settings):
        async with httpx.AsyncClient(base_url=own.url) as http:
            writer = await make_caller(db, http, tenant)
            await writer.data(ADD, {"s": "bounce", "c": "0"})
            ws = await subscriber(own, writer.key, {"s": "bounce", "after": 0})
            try:
                assert await seqs(ws, 1) == [1]
                redis_of_its_own.stop()
                for i in range(3):  # Postgres is the truth: writes still succeed
                    await writer.data(ADD, {"s": "bounce", "c": f"dark {i}"})
                restarted = start_redis(redis_of_its_own.data_dir, persist=False, port=redis_of_its_own.port)
                try:
                    got = await asyncio.wait_for(seqs(ws, 3), 15)
                    await writer.data(ADD, {"s": "bounce", "c": "after"})
                    got += await seqs(ws, 1)
                    assert got == [2, 3, 4, 5]
                finally:
                    restarted.stop()
            finally:
                await ws.close()


async def test_a_subscriber_that_falls_behind_is_ended_not_buffered(servers: Servers, tenant: str) -> None:
    import uuid
    from datetime import UTC, datetime

    hub = EventHub(servers.redis_url, queue_size=3)
    await hub.start()
    try:
        cid = uuid.uuid4()
        async with hub.subscribe(conversation_channel(tenant, cid)) as sub:
            events = [
                DomainEvent(EventType.STATE_CHANGED, tenant, cid, datetime.now(UTC), state_key=str(i))
                for i in range(10)
            ]
            await hub.publish(events)
            await asyncio.sleep(0.3)
            assert sub.queue.qsize() <= 3 and sub.overflowed
            with pytest.raises(SubscriberOverflow):
                await sub.get()
    finally:
        await hub.close()


async def test_one_execution_per_event_is_shared_by_every_subscriber(server: Server, writer: Caller) -> None:
    from app import metrics

    await writer.data(ADD, {"s": "shared", "c": "first"})
    sockets = [await subscriber(server, writer.key, {"s": "shared"}) for _ in range(20)]
    await asyncio.sleep(0.5)  # live only: let every subscription be set up
    executed = metrics.EVENT_EXECUTIONS._value.get()
    reused = metrics.SHARED_EVENT_RESULTS._value.get()
    try:
        receivers = [asyncio.create_task(seqs(ws, 5)) for ws in sockets]
        for i in range(5):
            await writer.data(ADD, {"s": "shared", "c": f"live {i}"})
        for got in await asyncio.wait_for(asyncio.gather(*receivers), 20):
            assert got == [2, 3, 4, 5, 6]
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    assert metrics.EVENT_EXECUTIONS._value.get() - executed == 5
    assert metrics.SHARED_EVENT_RESULTS._value.get() - reused == 5 * 19


async def test_long_lived_subscriptions_keep_nothing_per_event(server: Server, writer: Caller) -> None:
    """The soak (docs/benchmarks.md "Soak") found two things kept per event for as long as the
    process or the subscription lived: every event with its shared result (until 4,096 later
    events pushed it out) and graphql-core's subfield memo entries (never dropped)."""
    import gc

    from app.api import shared_events
    from app.api.engine.plans import EngineExecutionContext

    await writer.data(ADD, {"s": "released", "c": "first"})
    sockets = [await subscriber(server, writer.key, {"s": "released"}) for _ in range(3)]
    await asyncio.sleep(0.5)  # live only: let every subscription be set up
    before = set(shared_events._RESULTS)
    try:
        receivers = [asyncio.create_task(seqs(ws, 20)) for ws in sockets]
        for i in range(20):
            await writer.data(ADD, {"s": "released", "c": f"live {i} " + "x" * 10_000})
        for got in await asyncio.wait_for(asyncio.gather(*receivers), 20):
            assert got == list(range(2, 22))
        gc.collect()
        # Only the last event may remain: the hub's reader and each subscription hold the one
        # they handled last until the next one comes.
        assert len(set(shared_events._RESULTS) - before) <= 1
        memos = [len(o._relevant_sub_fields) for o in gc.get_objects() if isinstance(o, EngineExecutionContext)]
        assert memos and max(memos) < 5, memos
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))


async def test_nested_fields_of_events_are_fresh_on_every_event(server: Server, writer: Caller) -> None:
    """A WebSocket's context lives for the whole connection: its loaders must not serve an
    earlier event's answer (here, the conversation's state) to a later one."""
    ws = await WS.open(server.ws)
    try:
        assert (await ws.init(writer.key))["type"] == "connection_ack"
        await ws.subscribe(
            "e",
            'subscription { conversationEvents(agentId: "fresh") { type conversation { states { key version } } } }',
        )
        await asyncio.sleep(0.3)
        conv = await writer.data('mutation { createConversation(input: {sessionId: "fr", agentId: "fresh"}) { id } }')
        cid = conv["createConversation"]["id"]
        for _ in range(3):
            await writer.data(
                f'mutation {{ setState(input: {{conversationId: "{cid}", key: "k", value: 1}}) {{ version }} }}'
            )
        events = [(await ws.recv())["payload"]["data"]["conversationEvents"] for _ in range(4)]
        versions = [e["conversation"]["states"][0]["version"] if e["conversation"]["states"] else 0 for e in events]
        # Nested fields read the current state when the event is delivered (it may already be
        # newer than the event); what must never happen is an earlier event's answer.
        assert versions[0] == 0 and versions[1:] == sorted(versions[1:]) and versions[-1] == 3, events
    finally:
        await ws.close()
