"""Apollo/Hasura conventions (issue 12, item 7): the automatic persisted-query flow over HTTP and
WebSocket, refused in trusted-only mode, and connection_init's `{"headers": {...}}` payload on both
WebSocket protocols."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.api.documents import AutomaticPersistedQueries
from tests.api.conftest import Caller
from tests.conftest import Servers
from tests.subscriptions.both_protocols import PROTOCOLS, Client
from tests.subscriptions.conftest import Server, serve, settings_for

ADD = "mutation($s: String!, $c: String!) { addMessage(input: {sessionId: $s, role: USER, content: $c}) { message { seq } } }"
SUB = "subscription($s: String, $a: Int) { messageAdded(sessionId: $s, afterSeq: $a) { seq content } }"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _persisted(sha256: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": sha256}}


@pytest.fixture(scope="module")
async def trusted_only(servers: Servers) -> AsyncIterator[Server]:
    async for s in serve(settings_for(servers, trusted_documents_only=True)):
        yield s


async def _post(server: Server, caller: Caller, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return await http.post("/graphql", json=body, headers=caller.headers)


def _code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["extensions"]["code"])


async def test_apollo_register_flow_over_http_and_websocket(server: Server, writer: Caller) -> None:
    # A query no trusted document has: its text differs by a unique alias.
    query = "query ApqCount { apqTotal: conversations { totalCount } }"
    sha = _sha(query)
    # 1. The hash alone, unknown: a JSON error with HTTP 200, so Apollo Client retries with the text.
    unknown = await _post(server, writer, {"extensions": _persisted(sha)})
    assert unknown.status_code == 200 and unknown.headers["content-type"] == "application/json"
    assert _code(unknown) == "PERSISTED_QUERY_NOT_FOUND"
    # The same over GET (Apollo's useGETForHashedQueries).
    async with httpx.AsyncClient(base_url=server.url) as http:
        got = await http.get(
            "/graphql",
            params={"extensions": f'{{"persistedQuery":{{"version":1,"sha256Hash":"{sha}"}}}}'},
            headers=writer.headers,
        )
    assert got.status_code == 200 and _code(got) == "PERSISTED_QUERY_NOT_FOUND"
    # 2. Hash + query: runs and registers.
    registered = await _post(server, writer, {"query": query, "extensions": _persisted(sha)})
    assert registered.status_code == 200, registered.text
    assert registered.json()["data"] == {"apqTotal": {"totalCount": 0}}
    # 3. The hash alone now runs the registered query.
    again = await _post(server, writer, {"extensions": _persisted(sha)})
    assert again.status_code == 200 and again.json()["data"] == {"apqTotal": {"totalCount": 0}}, again.text
    # A hash that is not its query's: BAD_USER_INPUT, and nothing registered under it.
    wrong = "f" * 64
    mismatch = await _post(server, writer, {"query": query, "extensions": _persisted(wrong)})
    assert mismatch.status_code == 400 and _code(mismatch) == "BAD_USER_INPUT"
    assert _code(await _post(server, writer, {"extensions": _persisted(wrong)})) == "PERSISTED_QUERY_NOT_FOUND"
    # 4. A subscription registered over WebSocket (hash + query), then subscribed by hash alone.
    for protocol in PROTOCOLS:
        sub = SUB + f" # {protocol}"
        ws = await Client.open(server.ws, protocol)
        try:
            assert (await ws.init_key(writer.key))["type"] == "connection_ack"
            await ws.subscribe("1", {"extensions": _persisted(_sha(sub)), "variables": {"s": "apq", "a": 0}})
            assert (await ws.error())["extensions"]["reason"] == "PERSISTED_QUERY_NOT_FOUND"
            await writer.data(ADD, {"s": f"apq-{protocol}", "c": protocol})
            variables = {"s": f"apq-{protocol}", "a": 0}  # replayed from seq 1: no race with the write
            await ws.subscribe("2", {"query": sub, "extensions": _persisted(_sha(sub)), "variables": variables})
            await ws.subscribe("3", {"extensions": _persisted(_sha(sub)), "variables": variables})
            seen = {}
            for _ in range(2):
                message = await ws.recv()
                seen[message["id"]] = message["payload"]["data"]["messageAdded"]
            assert seen == {"2": {"seq": 1, "content": protocol}, "3": {"seq": 1, "content": protocol}}
        finally:
            await ws.close()


async def test_trusted_only_refuses_registration(trusted_only: Server, writer: Caller) -> None:
    query = "query ApqRefused { refused: conversations { totalCount } }"
    sha = _sha(query)
    refused = await _post(trusted_only, writer, {"query": query, "extensions": _persisted(sha)})
    assert refused.status_code == 400 and _code(refused) == "BAD_USER_INPUT"
    still_unknown = await _post(trusted_only, writer, {"extensions": _persisted(sha)})
    assert still_unknown.status_code == 200 and _code(still_unknown) == "PERSISTED_QUERY_NOT_FOUND"


def test_apq_cache_is_bounded_by_bytes_and_query_size() -> None:
    cache = AutomaticPersistedQueries(max_bytes=3 * (64 + 100), max_query_bytes=200)
    texts = [f"{i:03d}" + "x" * 97 for i in range(5)]
    for text in texts:
        cache.register(_sha(text), text)
    assert cache.bytes <= cache.max_bytes and len(cache) == 3
    assert cache.get(_sha(texts[0])) is None and cache.get(_sha(texts[4])) == texts[4]
    big = "y" * 201  # over the cacheable size: run by the caller, never kept
    cache.register(_sha(big), big)
    assert cache.get(_sha(big)) is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_connection_init_accepts_headers_payload(server: Server, writer: Caller, protocol: str) -> None:
    """Apollo's and Hasura's clients nest the headers: `{"headers": {"Authorization": ...}}`."""
    ws = await Client.open(server.ws, protocol)
    try:
        ack = await ws.init({"headers": {"Authorization": f"Bearer {writer.key}"}})
        assert ack["type"] == "connection_ack", ack
        await writer.data(ADD, {"s": f"h-{protocol}", "c": "hi"})
        await ws.subscribe("1", {"query": SUB, "variables": {"s": f"h-{protocol}", "a": 0}})
        assert (await ws.data())["data"]["messageAdded"] == {"seq": 1, "content": "hi"}
    finally:
        await ws.close()
    # A wrong key in the nested form is refused like the flat one.
    ws = await Client.open(server.ws, protocol)
    try:
        answer = await ws.init({"headers": {"Authorization": "Bearer nope"}})
        assert answer["type"] == "connection_error", answer
    except Exception:  # graphql-transport-ws closes 4403 without a message
        code, _ = await ws.closed_within(1.0)
        assert code == 4403
    finally:
        await ws.close()
