from __future__ import annotations

from tests.api.conftest import Caller
from tests.subscriptions.conftest import WS, Server

SUB = "subscription($s: String, $after: Int) { messageAdded(sessionId: $s, afterSeq: $after) { seq content } }"
ADD = "mutation($s: String!, $c: String!) { addMessage(input: {sessionId: $s, role: USER, content: $c}) { created } }"


async def test_replay_then_live(server: Server, writer: Caller) -> None:
    for i in range(3):
        await writer.data(ADD, {"s": "smoke", "c": f"m{i + 1}"})
    ws = await WS.open(server.ws)
    try:
        assert (await ws.init(writer.key))["type"] == "connection_ack"
        await ws.subscribe("1", SUB, {"s": "smoke", "after": 1})
        got = [(await ws.recv())["payload"]["data"]["messageAdded"]["seq"] for _ in range(2)]
        assert got == [2, 3]
        await writer.data(ADD, {"s": "smoke", "c": "m4"})
        msg = await ws.recv()
        assert msg["payload"]["data"]["messageAdded"] == {"seq": 4, "content": "m4"}
    finally:
        await ws.close()
