"""The HTTP gate under attack (issue 9): auth before parsing, a document cache bounded by bytes,
the query cost limit on every path, bounded metric labels, slow bodies, and JSON refusals."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from graphql import parse
from starlette.applications import Starlette

from app.api.cost import plan
from app.api.documents import DocumentRegistry
from app.api.documents_cache import DocumentCache
from app.api.http import GraphQLView
from app.api.schema import build_schema
from app.embedded.process import free_port
from app.main import create_app
from app.settings import Settings
from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers
from tests.subscriptions.conftest import WS, serve, settings_for

_ALIAS = (
    "a{i}: conversations(first:100){{edges{{node{{messages(first:100){{edges{{node{{"
    "content tokenCount metadata sources{{documentId}}}}}}}}}}}}}}"
)
#: The issue's query: 30 aliases (the alias limit) of 100 conversations × 100 messages.
ATTACK = "query { " + " ".join(_ALIAS.format(i=i) for i in range(30)) + " }"
COUNT = "{ conversations { totalCount } }"
#: One root field, scalars for arguments: the engine (app/api/engine/) serves it.
NESTED = "query { conversations(first: 100) { edges { node { messages(first: 100) { edges { node { id } } } } } } }"


def rss_bytes() -> int:
    """This process's resident memory after a collection, with the allocator's free pages given
    back (glibc keeps freed 4 MB blocks on its heap once its mmap threshold has grown): what is
    left is what objects still hold."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def view_of(app: Starlette) -> GraphQLView:
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, GraphQLView):
            return endpoint
    raise AssertionError("no GraphQL route")


def cache_of(app: Starlette) -> DocumentCache:
    cache = view_of(app).schema.document_cache  # type: ignore[attr-defined]
    assert isinstance(cache, DocumentCache)
    return cache


def error(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("errors"), body
    first: dict[str, Any] = body["errors"][0]
    return first


@pytest.fixture(scope="module")
async def tight_app(servers: Servers) -> AsyncIterator[Starlette]:
    """Small limits, so each one is reached with a few small requests."""
    settings = Settings(_env_file=None, max_query_cost=100, document_cache_bytes=200_000, metrics_token="s3cret")
    application = create_app(settings, database_url=servers.database_url, redis_url=servers.redis_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def tight(tight_app: Starlette, db: Database, tenant: str) -> AsyncIterator[Caller]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=tight_app), base_url="http://t") as http:
        yield await make_caller(db, http, tenant)


# 1. Authenticate before parsing; the document cache bounded by bytes.


async def test_unauthenticated_4mb_documents_are_neither_parsed_nor_kept(
    app: Starlette, http: httpx.AsyncClient
) -> None:
    cache = cache_of(app)
    before_entries = len(cache)
    await http.post("/graphql", json={"query": "query { __typename } # warm-up " + "x" * 4_000_000})
    before = rss_bytes()
    started = time.perf_counter()
    for i in range(40):
        query = f"query {{ __typename }} # {i} " + "x" * 4_000_000
        r = await http.post("/graphql", json={"query": query})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert error(r.json())["extensions"]["code"] == "UNAUTHENTICATED"
        del query, r
    elapsed = time.perf_counter() - started
    grown = rss_bytes() - before
    print(f"\n40 unauthenticated 4 MB documents: {elapsed:.2f} s, retained RSS {grown / 1e6:+.1f} MB")
    assert grown <= 50 * 1024 * 1024
    assert len(cache) == before_entries  # nothing parsed, nothing cached
    r = await http.get("/graphql", params={"query": "query NoKeyGet { __typename }"})
    assert error(r.json())["extensions"]["code"] == "UNAUTHENTICATED"
    assert len(cache) == before_entries


async def test_long_queries_are_refused_and_big_ones_never_cached(app: Starlette, api: Caller) -> None:
    r = await api.http.post(
        "/graphql", json={"query": COUNT + " # " + "x" * 70_000}, headers=api.headers
    )  # over MAX_QUERY_BYTES (64 KiB)
    assert r.status_code == 400 and error(r.json())["extensions"]["code"] == "BAD_USER_INPUT"
    cache = cache_of(app)
    big = "query Big { conversations { totalCount } } # " + "y" * 20_000  # over MAX_CACHED_DOCUMENT_BYTES
    assert (await api.data(big))["conversations"]["totalCount"] == 0
    small = "query Small { conversations { totalCount } } # unique-" + str(time.time_ns())
    await api.data(small)
    assert small in cache._entries and big not in cache._entries


async def test_the_document_cache_holds_at_most_its_bytes(tight_app: Starlette, tight: Caller) -> None:
    cache = cache_of(tight_app)
    for i in range(200):
        await tight.data(f"query Doc{i} {{ conversations {{ totalCount }} }} # padding {'z' * 1000}")
        assert cache.bytes <= 200_000
    assert 0 < len(cache) < 200


# 3. The query cost limit.


def test_every_trusted_document_fits_under_the_default_cost_even_at_full_pages() -> None:
    settings = Settings(_env_file=None)
    core = build_schema(settings)._schema
    full = {name: settings.max_page_size for name in ("first", "last", "lastMessages")}
    for document in DocumentRegistry.load().documents:
        cost_plan = plan(core, parse(document.text), None, max_page_size=settings.max_page_size)
        assert cost_plan is not None, document.name
        for variables in ({}, full):
            assert cost_plan.cost(variables) <= settings.max_query_cost, (document.name, variables)
    attack = plan(core, parse(ATTACK), None, max_page_size=settings.max_page_size)
    assert attack is not None and attack.cost({}) > settings.max_query_cost


async def test_the_30_alias_query_is_refused_by_cost_quickly_and_others_are_not_delayed(
    reader: Caller, other_api: Caller
) -> None:
    await reader.data(COUNT)  # the key lookup cached: both timings measure only the request

    async def timed(caller: Caller, query: str) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        body = await caller.gql(query)
        return time.perf_counter() - started, body

    (attack_s, refused), (other_s, answered) = await asyncio.gather(timed(reader, ATTACK), timed(other_api, COUNT))
    print(f"\n30-alias query refused in {attack_s * 1000:.1f} ms; concurrent request {other_s * 1000:.1f} ms")
    extensions = error(refused)["extensions"]
    assert extensions["code"] == "BAD_USER_INPUT"
    assert extensions["maxCost"] == 150_000 and extensions["cost"] > 150_000
    assert refused.get("data") is None
    assert answered["data"]["conversations"]["totalCount"] == 0
    assert attack_s < 1.0 and other_s < 1.0
    # The same document, small enough, runs; its cost follows the variables.
    sized = "query($n: Int) { a: conversations(first: $n) { edges { node { messages(first: $n) { totalCount } } } } }"
    assert "errors" not in await reader.gql(sized, {"n": 10})
    full = DocumentRegistry.load().by_name("CrmConversations")
    assert full is not None
    assert "errors" not in await reader.gql(full.text, {"first": 100, "lastMessages": 100})


async def test_cost_on_the_compiled_path_and_in_batches(tight_app: Starlette, tight: Caller) -> None:
    engine = view_of(tight_app).engine
    assert engine is not None
    await tight.data('mutation { createConversation(input: {sessionId: "c"}) { id } }')
    page = 'query { history(sessionId: "c", last: 100) { edges { cursor node { id } } } }'  # 1 + 100 × 2
    body = await tight.gql(page)
    assert error(body)["extensions"] == {"code": "BAD_USER_INPUT", "cost": 201, "maxCost": 100}
    assert engine.get(page, None, {}) is not None  # the request met a plan
    assert "errors" not in await tight.gql(page.replace("100", "40"))  # 81
    # Batch items add up: each costs 1 + 10 × 2 = 21; four of them 84, five 105.
    item = {"query": "query { conversations(first: 10) { edges { node { id } } } }"}
    r = await tight.http.post("/graphql", json=[item] * 4, headers=tight.headers)
    assert r.status_code == 200 and all("errors" not in x for x in r.json())
    r = await tight.http.post("/graphql", json=[item] * 5, headers=tight.headers)
    assert r.status_code == 200
    for entry in r.json():
        assert entry["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "cost": 105, "maxCost": 100}


async def test_cost_limit_over_websocket(servers: Servers, writer_key: str) -> None:
    async for server in serve(settings_for(servers, max_query_cost=10)):
        ws = await WS.open(server.ws)
        try:
            assert (await ws.init(writer_key))["type"] == "connection_ack"
            await ws.subscribe("q", NESTED)
            answer = await ws.recv()
            assert answer["type"] == "error" and answer["id"] == "q", answer
            assert answer["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "cost": 20_301, "maxCost": 10}
            # A subscription's cost is its payload's: 1 message + 10 sources (an unpaged list).
            await ws.subscribe("s", 'subscription { messageAdded(sessionId: "s") { seq sources { documentId } } }')
            answer = await ws.recv()
            assert answer["type"] == "error" and answer["id"] == "s", answer
            assert answer["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "cost": 11, "maxCost": 10}
            await ws.subscribe("cheap", "query { conversations(first: 5) { totalCount } }")
            answer = await ws.recv()
            assert answer["type"] == "next" and answer["id"] == "cheap", answer
        finally:
            await ws.close()
        legacy = await WS.open(server.ws, protocol="graphql-ws")
        try:
            await legacy.send({"type": "connection_init", "payload": {"Authorization": f"Bearer {writer_key}"}})
            assert (await legacy.recv())["type"] == "connection_ack"
            costly = 'subscription { messageAdded(sessionId: "s") { seq sources { documentId } } }'
            await legacy.send({"id": "1", "type": "start", "payload": {"query": costly}})
            while (answer := await legacy.recv())["type"] == "ka":
                pass
            assert answer["type"] == "error", answer
            assert answer["payload"]["extensions"] == {"code": "BAD_USER_INPUT", "cost": 11, "maxCost": 10}
        finally:
            await legacy.close()


@pytest.fixture
async def writer_key(db: Database, tenant: str) -> str:
    async with httpx.AsyncClient() as http:
        return (await make_caller(db, http, tenant)).key


# 4. Bounded metric labels; /metrics behind a token or on its own port.


async def test_metrics_stay_small_after_5000_operation_names(api: Caller, http: httpx.AsyncClient) -> None:
    for start in range(0, 5000, 10):
        batch = [{"query": f"query Op{i}x{'n' * 40} {{ __typename }}"} for i in range(start, start + 10)]
        r = await api.http.post("/graphql", json=batch, headers=api.headers)
        assert r.status_code == 200
    for i in range(200):  # unauthenticated ones are refused before their names are read
        await http.post("/graphql", json={"query": f"query NoKey{i} {{ __typename }}"})
    text = (await http.get("/metrics")).text
    print(f"\n/metrics after 5,000 operation names: {len(text.encode())} bytes")
    assert len(text.encode()) <= 1024 * 1024
    assert "Op4999" not in text and 'operation="other"' in text


async def test_metrics_token(tight_app: Starlette) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=tight_app), base_url="http://t") as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        r = await http.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and "graphql_operations_total" in r.text


async def test_metrics_port(servers: Servers) -> None:
    port = free_port()
    settings = Settings(_env_file=None, metrics_port=port, metrics_token="tok")
    application = create_app(settings, database_url=servers.database_url, redis_url=servers.redis_url)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/metrics")).status_code == 404  # not on the API port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper:
            assert (await scraper.get("/metrics")).status_code == 401
            r = await scraper.get("/metrics", headers={"Authorization": "Bearer tok"})
            assert r.status_code == 200 and "db_pool_connections" in r.text
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as scraper:
            await scraper.get(f"http://127.0.0.1:{port}/metrics")


# 5. Slow bodies.


async def test_a_trickling_body_is_cut_off_with_408(servers: Servers, writer_key: str) -> None:
    async for server in serve(settings_for(servers, body_read_timeout_s=1.0)):
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'{"query": "{ conversations { totalCount } }"}'
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {writer_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        started = time.perf_counter()

        trickling = asyncio.create_task(trickle(writer, body))
        try:
            answer = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        finally:
            trickling.cancel()
            writer.close()
        elapsed = time.perf_counter() - started
        print(f"\nslow body cut off after {elapsed:.2f} s")
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b'"code":"BAD_USER_INPUT"' in answer
        assert 0.9 < elapsed < 5
        async with httpx.AsyncClient(base_url=server.url) as http:  # a prompt body is untouched
            r = await http.post(
                "/graphql",
                content=body,
                headers={"Authorization": f"Bearer {writer_key}", "Content-Type": "application/json"},
            )
            assert r.json()["data"]["conversations"]["totalCount"] == 0


async def trickle(writer: asyncio.StreamWriter, body: bytes) -> None:
    for byte in body:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.2)


# 6. Operations the spec refuses, bad batch items, refusals as JSON.


async def test_several_operations_without_a_name_are_refused_on_every_path(api: Caller) -> None:
    two = "query A { conversations { totalCount } } query B { conversations(first: 1) { totalCount } }"
    # A document error like any validation error: HTTP 200, nothing ran.
    r = await api.http.post("/graphql", json={"query": two}, headers=api.headers)
    assert r.status_code == 200 and error(r.json())["extensions"]["code"] == "BAD_USER_INPUT"
    assert "operationName" in error(r.json())["message"] and r.json()["data"] is None
    r = await api.http.post("/graphql", json={"query": two, "operationName": "B"}, headers=api.headers)
    assert r.json()["data"]["conversations"]["totalCount"] == 0
    r = await api.http.post("/graphql", json={"query": two, "operationName": "C"}, headers=api.headers)
    assert r.status_code == 400 and error(r.json())["extensions"]["code"] == "BAD_USER_INPUT"
    r = await api.http.get("/graphql", params={"query": two}, headers=api.headers)
    assert r.status_code == 200 and error(r.json())["extensions"]["code"] == "BAD_USER_INPUT"
    r = await api.http.post("/graphql", json=[{"query": two}, {"query": COUNT}], headers=api.headers)
    assert r.status_code == 200
    first, second = r.json()
    assert error(first)["extensions"]["code"] == "BAD_USER_INPUT"
    assert second["data"]["conversations"]["totalCount"] == 0


async def test_several_operations_without_a_name_over_websocket(server_url_ws: str, writer_key: str) -> None:
    ws = await WS.open(server_url_ws)
    try:
        assert (await ws.init(writer_key))["type"] == "connection_ack"
        await ws.subscribe("two", "query A { conversations { totalCount } } query B { __typename }")
        answer = await ws.recv()
        assert answer["type"] == "error", answer
        assert answer["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    finally:
        await ws.close()


@pytest.fixture
async def server_url_ws(servers: Servers) -> AsyncIterator[str]:
    async for server in serve(settings_for(servers)):
        yield server.ws


async def test_bad_batch_items_and_refusals_are_json_errors(api: Caller) -> None:
    sub = {"query": 'subscription { messageAdded(sessionId: "s") { seq } }'}
    batch = [sub, "not an object", {"query": 1}, {"documentId": "0" * 64}, {"query": COUNT}]
    r = await api.http.post("/graphql", json=batch, headers=api.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answers = r.json()
    codes = [error(a)["extensions"]["code"] for a in answers[:4]]
    assert codes == ["BAD_USER_INPUT", "BAD_USER_INPUT", "BAD_USER_INPUT", "PERSISTED_QUERY_NOT_FOUND"]
    assert answers[4]["data"]["conversations"]["totalCount"] == 0
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b"{nope"}, 400, "BAD_USER_INPUT"),
        ({"json": ["x"] * 11}, 400, "BAD_USER_INPUT"),
        ({"json": []}, 400, "BAD_USER_INPUT"),
        ({"json": 42}, 400, "BAD_USER_INPUT"),
        ({"json": {"query": COUNT, "variables": []}}, 400, "BAD_USER_INPUT"),
        ({"json": {"documentId": "f" * 64}}, 200, "PERSISTED_QUERY_NOT_FOUND"),
        ({"json": {"query": sub["query"]}}, 400, "BAD_USER_INPUT"),
        ({"json": {}}, 400, "BAD_USER_INPUT"),
    ]
    for kwargs, status, code in cases:
        headers = {**api.headers, "Content-Type": "application/json"}
        r = await api.http.post("/graphql", headers=headers, **kwargs)
        assert (r.status_code, r.headers["content-type"]) == (status, "application/json"), (kwargs, r.text)
        assert error(r.json())["extensions"]["code"] == code, (kwargs, r.text)
    r = await api.http.get("/graphql", params={"query": COUNT, "variables": "{nope"}, headers=api.headers)
    assert r.status_code == 400 and error(r.json())["extensions"]["code"] == "BAD_USER_INPUT"
