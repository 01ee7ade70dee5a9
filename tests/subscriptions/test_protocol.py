"""graphql-transport-ws rules as clients rely on them, the legacy graphql-ws protocol, and two
third-party clients: gql (Python) and graphql-ws (npm, run by Node)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import websockets
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from app.settings import PROJECT_ROOT
from tests.api.conftest import Caller
from tests.subscriptions.conftest import WS, Server

ADD = "mutation($s: String!, $c: String!) { addMessage(input: {sessionId: $s, role: USER, content: $c}) { message { seq } } }"
SUB = "subscription($s: String, $a: Int) { messageAdded(sessionId: $s, afterSeq: $a) { seq content } }"


async def close_code(ws: WS) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(5):
            await ws.recv(wait=5)
    return closed.value.rcvd.code if closed.value.rcvd else None


async def test_no_connection_init_is_closed_4408(server: Server) -> None:
    ws = await WS.open(server.ws)
    assert await close_code(ws) == 4408  # ws_init_timeout_s is 1 s in these tests


async def test_subscribe_before_ack_is_closed_4401(server: Server) -> None:
    ws = await WS.open(server.ws)
    await ws.subscribe("1", SUB, {"s": "x"})
    assert await close_code(ws) == 4401


async def test_a_bad_key_is_closed_4403(server: Server) -> None:
    ws = await WS.open(server.ws)
    await ws.send({"type": "connection_init", "payload": {"Authorization": "Bearer csk_nope"}})
    assert await close_code(ws) == 4403
    ws = await WS.open(server.ws)
    await ws.send({"type": "connection_init", "payload": {}})
    assert await close_code(ws) == 4403


async def test_a_duplicate_operation_id_is_closed_4409(server: Server, writer: Caller) -> None:
    ws = await WS.open(server.ws)
    assert (await ws.init(writer.key))["type"] == "connection_ack"
    await ws.subscribe("same", SUB, {"s": "dup"})
    await ws.subscribe("same", SUB, {"s": "dup"})
    assert await close_code(ws) == 4409


async def test_server_pings_keep_the_connection_alive(servers: Any, writer: Caller) -> None:
    from tests.subscriptions.conftest import serve, settings_for

    async for fast in serve(settings_for(servers, ws_keepalive_s=0.2)):
        connection = await websockets.connect(fast.ws, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        try:
            await connection.send(
                json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {writer.key}"}})
            )
            assert json.loads(await connection.recv())["type"] == "connection_ack"
            assert json.loads(await asyncio.wait_for(connection.recv(), 2))["type"] == "ping"
        finally:
            await connection.close()


async def test_legacy_graphql_ws_protocol(server: Server, writer: Caller) -> None:
    connection = await websockets.connect(server.ws, subprotocols=["graphql-ws"])  # type: ignore[list-item]
    try:
        await connection.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {writer.key}"}})
        )
        assert json.loads(await connection.recv())["type"] == "connection_ack"
        await writer.data(ADD, {"s": "legacy", "c": "old"})
        await connection.send(
            json.dumps({"id": "1", "type": "start", "payload": {"query": SUB, "variables": {"s": "legacy", "a": 0}}})
        )
        while True:
            msg = json.loads(await asyncio.wait_for(connection.recv(), 5))
            if msg["type"] != "ka":
                break
        assert msg["type"] == "data" and msg["payload"]["data"]["messageAdded"] == {"seq": 1, "content": "old"}
    finally:
        await connection.close()


async def test_gql_client_subscribes(server: Server, writer: Caller) -> None:
    transport = WebsocketsTransport(url=server.ws, init_payload={"Authorization": f"Bearer {writer.key}"})
    for i in range(3):
        await writer.data(ADD, {"s": "gql-sub", "c": f"m{i}"})
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        got = []
        async for result in session.subscribe(GraphQLRequest(SUB, variable_values={"s": "gql-sub", "a": 1})):
            got.append(result["messageAdded"]["seq"])
            if len(got) == 2:
                await writer.data(ADD, {"s": "gql-sub", "c": "live"})
            if len(got) == 3:
                break
    assert got == [2, 3, 4]


NODE_DIR = PROJECT_ROOT / "tests" / "subscriptions" / "node"


def _node_client() -> Path:
    if not (NODE_DIR / "node_modules" / "graphql-ws").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=300
        )
    return NODE_DIR / "subscribe.mjs"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node is not installed")
async def test_npm_graphql_ws_client_subscribes(server: Server, writer: Caller) -> None:
    script = _node_client()
    for i in range(2):
        await writer.data(ADD, {"s": "node-sub", "c": f"m{i}"})
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        server.ws,
        writer.key,
        SUB,
        json.dumps({"s": "node-sub", "a": 0}),
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 20)
    await writer.data(ADD, {"s": "node-sub", "c": "live 1"})
    await writer.data(ADD, {"s": "node-sub", "c": "live 2"})
    rest, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = [first.decode(), *rest.decode().splitlines()]
    seqs = [json.loads(line)["data"]["messageAdded"]["seq"] for line in lines if line.strip()]
    assert seqs == [1, 2, 3, 4], err.decode()
    assert proc.returncode == 0


async def test_subscriptions_per_connection_are_capped(servers: Any, writer: Caller) -> None:
    from tests.subscriptions.conftest import serve, settings_for

    async for capped in serve(settings_for(servers, max_subscriptions_per_connection=2)):
        ws = await WS.open(capped.ws)
        try:
            assert (await ws.init(writer.key))["type"] == "connection_ack"
            for op in ("a", "b", "c"):
                await ws.subscribe(op, SUB, {"s": f"cap-{op}"})
            refused = await ws.recv()
            assert refused["type"] == "error" and refused["id"] == "c"
            assert "limit" in refused["payload"][0]["message"].lower()
        finally:
            await ws.close()


async def test_a_revoked_key_ends_its_live_connections(servers: Any, writer: Caller, db: Any) -> None:
    from app.services import tenants
    from tests.subscriptions.conftest import serve, settings_for

    async for fast in serve(settings_for(servers, ws_keepalive_s=0.3)):
        ws = await WS.open(fast.ws)
        assert (await ws.init(writer.key))["type"] == "connection_ack"
        await ws.subscribe("1", SUB, {"s": "revoked"})
        async with db.read() as conn:
            (key,) = await tenants.list_api_keys(conn, writer.tenant)
        await db.run(partial(tenants.revoke_api_key, key_id=key.id))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for _ in range(100):
                await ws.recv(wait=6)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
