"""WebSocket operations obey TRUSTED_DOCUMENTS_ONLY, and connections and subscriptions are
capped per process, tenant and key, with every way out releasing what it held."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from app.api.documents import DocumentRegistry
from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers
from tests.subscriptions.both_protocols import LEGACY, PROTOCOLS, TRANSPORT, Client
from tests.subscriptions.conftest import Server, serve, settings_for

ADD = "mutation($s: String!, $c: String!) { addMessage(input: {sessionId: $s, role: USER, content: $c}) { message { seq } } }"
SUB = "subscription($s: String, $a: Int) { messageAdded(sessionId: $s, afterSeq: $a) { seq content } }"


async def _caller(db: Database, server: Server, tenant: str | None = None) -> Caller:
    async with httpx.AsyncClient(base_url=server.url) as http:
        caller = await make_caller(db, http, tenant or f"wl-{uuid.uuid4().hex[:10]}")
    caller.http = httpx.AsyncClient(base_url=server.url)
    return caller


# --- trusted documents -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def trusted(servers: Servers) -> AsyncIterator[Server]:
    async for s in serve(settings_for(servers, trusted_documents_only=True)):
        yield s


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_trusted_mode_refuses_other_documents_over_websocket(
    protocol: str, trusted: Server, db: Database
) -> None:
    caller = await _caller(db, trusted)
    ws = await Client.open(trusted.ws, protocol)
    try:
        assert (await ws.init_key(caller.key))["type"] == "connection_ack"
        await ws.subscribe("free", {"query": SUB, "variables": {"s": "t", "a": 0}})
        refused = await ws.error()
        assert refused["extensions"]["code"] == "BAD_USER_INPUT" and "trusted" in refused["message"]
        await ws.subscribe("unknown", {"documentId": "0" * 64, "variables": {}})
        refused = await ws.error()
        assert refused["extensions"] == {"code": "BAD_USER_INPUT", "reason": "PERSISTED_QUERY_NOT_FOUND"}
        apollo = {"persistedQuery": {"version": 1, "sha256Hash": "f" * 64}}
        await ws.subscribe("apollo", {"query": "{ __typename }", "extensions": apollo})
        assert (await ws.error())["extensions"]["code"] == "BAD_USER_INPUT"
    finally:
        await ws.close()
        await caller.http.aclose()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_trusted_documents_by_id_run_over_websocket(protocol: str, trusted: Server, db: Database) -> None:
    documents = DocumentRegistry.load()
    live = documents.by_name("AgentMessageAdded")
    add = documents.by_name("ServiceAddMessage")
    assert live is not None and add is not None
    caller = await _caller(db, trusted)
    ws = await Client.open(trusted.ws, protocol)
    try:
        assert (await ws.init_key(caller.key))["type"] == "connection_ack"
        r = await caller.http.post(
            "/graphql",
            json={
                "documentId": add.sha256,
                "variables": {"input": {"sessionId": "by-id", "role": "USER", "content": "hi"}},
            },
            headers=caller.headers,
        )
        assert r.status_code == 200 and "errors" not in r.json(), r.text
        await ws.subscribe("1", {"documentId": live.sha256, "variables": {"sessionId": "by-id", "afterSeq": 0}})
        message = (await ws.data())["data"]["messageAdded"]
        assert message["seq"] == 1 and message["content"] == "hi"
    finally:
        await ws.close()
        await caller.http.aclose()


# --- caps ----------------------------------------------------------------------------------


async def _admitted(server: Server, key: str, protocol: str = TRANSPORT) -> Client | int | None:
    """An acknowledged connection, or the close code it was refused with."""
    ws = await Client.open(server.ws, protocol)
    try:
        answer = await ws.init_key(key)
    except Exception:
        code, _ = await ws.closed_within(1.0)
        return code
    if answer["type"] == "connection_ack":
        return ws
    assert answer["type"] == "connection_error", answer
    code, _ = await ws.closed_within(1.0)
    return code


async def test_connections_are_capped_per_key_tenant_and_process(servers: Servers, db: Database) -> None:
    settings = settings_for(
        servers, max_ws_connections=4, max_ws_connections_per_tenant=3, max_ws_connections_per_key=2
    )
    async for capped in serve(settings):
        a1 = await _caller(db, capped)
        a2 = await _caller(db, capped, a1.tenant)
        a3 = await _caller(db, capped, a1.tenant)
        b = await _caller(db, capped)
        held: list[Client] = []
        try:
            for caller in (a1, a1):
                ws = await _admitted(capped, caller.key)
                assert isinstance(ws, Client)
                held.append(ws)
            assert await _admitted(capped, a1.key) == 4429  # the key's cap
            assert await _admitted(capped, a1.key, LEGACY) == 4429
            ws = await _admitted(capped, a2.key)
            assert isinstance(ws, Client)
            held.append(ws)
            assert await _admitted(capped, a3.key) == 4429  # the tenant's cap
            ws = await _admitted(capped, b.key)
            assert isinstance(ws, Client)
            held.append(ws)
            c = await _caller(db, capped)
            assert await _admitted(capped, c.key) == 4429  # the process's cap
            await held.pop().close()
            for _ in range(50):  # the server notices the close asynchronously
                admitted = await _admitted(capped, c.key)
                if isinstance(admitted, Client):
                    held.append(admitted)
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("a closed connection's place was never released")
        finally:
            for ws in held:
                await ws.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscriptions_are_capped_per_tenant(protocol: str, servers: Servers, db: Database) -> None:
    async for capped in serve(settings_for(servers, max_subscriptions_per_tenant=2)):
        caller = await _caller(db, capped)
        first, second = await Client.open(capped.ws, protocol), await Client.open(capped.ws, protocol)
        try:
            for ws in (first, second):
                assert (await ws.init_key(caller.key))["type"] == "connection_ack"
            await first.subscribe("a", {"query": SUB, "variables": {"s": "cap-a"}})
            await first.subscribe("b", {"query": SUB, "variables": {"s": "cap-b"}})
            await second.subscribe("c", {"query": SUB, "variables": {"s": "cap-c"}})
            refused = await second.error()
            assert refused["extensions"]["code"] == "FORBIDDEN"
            assert refused["extensions"]["limit"] == "MAX_SUBSCRIPTIONS_PER_TENANT"
            await first.complete("a")
            await asyncio.sleep(0.3)
            await caller.data(ADD, {"s": "cap-c", "c": "x"})
            await second.subscribe("c", {"query": SUB, "variables": {"s": "cap-c", "a": 0}})
            assert (await second.data())["data"]["messageAdded"]["seq"] == 1
        finally:
            await first.close()
            await second.close()
            await caller.http.aclose()


async def _gauge(server: Server, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.url) as http:
        text = (await http.get("/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


async def test_every_way_out_releases_the_counts(servers: Servers, db: Database) -> None:
    settings = settings_for(
        servers, max_ws_connections_per_tenant=2, max_subscriptions_per_tenant=2, ws_auth_recheck_s=0.2
    )
    async for capped in serve(settings):
        caller = await _caller(db, capped)
        before = (await _gauge(capped, "ws_connections"), await _gauge(capped, "ws_operations"))
        for i, (way, protocol) in enumerate((w, p) for w in (0, 1, 2, 3) for p in PROTOCOLS for _ in range(2)):
            pair = [await Client.open(capped.ws, protocol) for _ in range(2)]
            for ws in pair:
                assert (await ws.init_key(caller.key))["type"] == "connection_ack", i
                await ws.subscribe("s", {"query": SUB, "variables": {"s": f"out-{i}"}})
            for ws in pair:
                if way == 0:
                    await ws.close()  # the client goes
                elif way == 1:  # a protocol error: the server closes
                    await ws.send({"type": "nonsense"} if protocol == TRANSPORT else {"type": "connection_terminate"})
                    await ws.closed_within(2.0)
                elif way == 2:  # the operation completes, then the client goes
                    await ws.complete("s")
                    await asyncio.sleep(0.05)
                    await ws.close()
                else:  # the TCP connection drops without a close handshake
                    ws.connection.transport.abort()
            for _ in range(100):
                after = (await _gauge(capped, "ws_connections"), await _gauge(capped, "ws_operations"))
                if after == before:
                    break
                await asyncio.sleep(0.05)
            assert after == before, (protocol, way)
        # Still room for the tenant's full allowance.
        pair = [await Client.open(capped.ws, TRANSPORT) for _ in range(2)]
        for ws in pair:
            assert (await ws.init_key(caller.key))["type"] == "connection_ack"
            await ws.subscribe("s", {"query": SUB, "variables": {"s": "after", "a": 0}})
        await caller.data(ADD, {"s": "after", "c": "x"})
        for ws in pair:
            assert (await ws.data())["data"]["messageAdded"]["seq"] == 1
            await ws.close()
        await caller.http.aclose()
