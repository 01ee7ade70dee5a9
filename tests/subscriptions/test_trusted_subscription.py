"""The orchestrator's trusted subscription document (graphql/AgentMessageAdded.graphql) replays
and then streams a session's messages with every field it selects, sources included."""

from __future__ import annotations

from app.api.documents import DocumentRegistry
from db.session import Database
from tests.api.conftest import Caller
from tests.subscriptions.conftest import WS, Server

ADD = """mutation($s: String!, $c: String!, $src: [SourceInput!]) {
  addMessage(input: {sessionId: $s, role: ASSISTANT, content: $c, sources: $src}) { message { seq } } }"""


async def test_the_orchestrator_document_streams_a_session(server: Server, writer: Caller, db: Database) -> None:
    document = DocumentRegistry.load().by_name("AgentMessageAdded")
    assert document is not None
    await writer.data(ADD, {"s": "orch-1", "c": "before", "src": None})
    ws = await WS.open(server.ws)
    try:
        assert (await ws.init(writer.key))["type"] == "connection_ack"
        await ws.subscribe("1", document.text, {"sessionId": "orch-1", "afterSeq": 0})
        replayed = await ws.recv()
        assert replayed["type"] == "next", replayed
        assert replayed["payload"]["data"]["messageAdded"]["content"] == "before"
        source = {"documentId": "doc-7", "chunkId": "c1", "title": "Manual", "score": 0.9}
        await writer.data(ADD, {"s": "orch-1", "c": "live", "src": [source]})
        live = (await ws.recv())["payload"]["data"]["messageAdded"]
        assert live["seq"] == 2 and live["content"] == "live" and live["role"] == "ASSISTANT"
        assert live["sources"] == [{**source, "uri": None, "snippet": None}]
        assert live["conversationId"] == replayed["payload"]["data"]["messageAdded"]["conversationId"]
    finally:
        await ws.close()
