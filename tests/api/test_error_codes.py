"""Issue 9 (items 6, 7): one depth rule for stored JSON, SERVICE_UNAVAILABLE for an unreachable
Postgres (503 when nothing ran), BAD_USER_INPUT for client mistakes in dates, cursors and text,
and JSON with a code from every failure path."""

from __future__ import annotations

import base64
import urllib.parse
import uuid
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.cache.keys import conversation_keys
from app.main import create_app
from app.services import tenants
from app.settings import Settings
from db.session import Database, asyncpg_dsn
from tests.api.conftest import Caller
from tests.conftest import Servers
from tests.jobs.test_failures import TcpProxy, _via

CREATE = "mutation($m: JSON) { createConversation(input: {metadata: $m}) { id sessionId metadata } }"


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` containers, alternating objects and lists."""
    value = leaf
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


async def test_json_nested_deeper_than_the_limit_is_refused_at_write_naming_the_field(api: Caller) -> None:
    ok = await api.data(CREATE, {"m": {"a": nested(31)}})
    cid = ok["createConversation"]["id"]
    assert ok["createConversation"]["metadata"] == {"a": nested(31)}
    writes: list[tuple[str, Any, str]] = [
        (CREATE, {"m": {"a": nested(32)}}, "metadata"),
        (CREATE, {"m": {"a": nested(250)}}, "metadata"),  # was stored, then unreadable
        (CREATE, "RAW1020", "metadata"),  # was INTERNAL; too deep for the clients' encoders
        (
            'mutation($m: JSON) { addMessage(input: {conversationId: $c, role: USER, content: "x", metadata: $m})'
            " { created } }".replace("$m: JSON", "$m: JSON, $c: ID"),
            {"m": {"a": nested(40)}, "c": cid},
            "metadata",
        ),
        (
            'mutation($t: JSON, $c: ID) { addMessage(input: {conversationId: $c, role: ASSISTANT, content: "",'
            " toolCalls: $t}) { created } }",
            {
                "t": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}, "x": nested(40)}],
                "c": cid,
            },
            "toolCalls",
        ),
        (
            'mutation($v: JSON!, $c: ID!) { setState(input: {conversationId: $c, key: "k", value: $v}) { version } }',
            {"v": nested(250), "c": cid},
            "value",
        ),
        (
            "mutation($m: JSON, $c: ID!) { updateConversation(input: {id: $c, metadata: $m}) { id } }",
            {"m": {"a": nested(33)}, "c": cid},
            "metadata",
        ),
    ]
    for query, variables, field in writes:
        if variables == "RAW1020":  # the client's own encoders stop earlier: write the text
            raw = '{"query":' + orjson.dumps(query).decode() + ',"variables":{"m":{"a":' + "[" * 1020 + "]" * 1020
            r = await api.http.post(
                "/graphql", content=raw + "}}}", headers={**api.headers, "content-type": "application/json"}
            )
            assert r.status_code == 200, r.text
            body = r.json()
        else:
            body = await api.gql(query, variables)
        assert codes(body) == ["BAD_USER_INPUT"], (field, body)
        assert body["errors"][0]["extensions"]["field"] == field
    conversation = await api.data(
        "query($c: ID) { conversation(id: $c) { messageCount metadata states { key } } }", {"c": cid}
    )
    assert conversation["conversation"] == {"messageCount": 0, "metadata": {"a": nested(31)}, "states": []}


async def test_json_stored_deeper_before_the_rule_is_still_served(api: Caller, db: Database, redis: Redis) -> None:
    """A row written before MAX_JSON_DEPTH (250 deep: orjson, the responses' encoder, stops at
    255 with the response around it) is answered as JSON, not a bare text/plain 500."""
    created = (await api.data(CREATE, {"m": {"a": 1}}))["createConversation"]
    cid = uuid.UUID(created["id"])
    await api.data(
        'mutation($c: ID!) { setState(input: {conversationId: $c, key: "k", value: 1}) { version } }',
        {"c": str(cid)},
    )
    await api.data(
        'mutation($c: ID) { addMessage(input: {conversationId: $c, role: USER, content: "x"}) { created } }',
        {"c": str(cid)},
    )
    deep = nested(250)
    async with db.read() as conn:
        text = orjson.dumps({"a": deep}).decode()
        await conn.execute(
            "UPDATE conversations SET metadata = $1::text::jsonb WHERE tenant_id = $2 AND id = $3",
            text,
            api.tenant,
            cid,
        )
        await conn.execute(
            "UPDATE messages SET metadata = $1::text::jsonb WHERE tenant_id = $2 AND conversation_id = $3",
            text,
            api.tenant,
            cid,
        )
        await conn.execute(
            "UPDATE conversation_state SET value = $1::text::jsonb WHERE tenant_id = $2 AND conversation_id = $3",
            orjson.dumps(deep).decode(),
            api.tenant,
            cid,
        )
    await redis.delete(*conversation_keys(api.tenant, cid))
    query = (
        'query($c: ID) { conversation(id: $c) { metadata state(key: "k") { value }'
        " messages(first: 5) { edges { node { metadata } } } } }"
    )
    for _ in range(2):  # from Postgres, then from whatever the first read cached
        r = await api.http.post("/graphql", json={"query": query, "variables": {"c": str(cid)}}, headers=api.headers)
        assert r.headers["content-type"].startswith("application/json"), r.text[:200]
        body = r.json()
        assert r.status_code == 200 and "errors" not in body, body.get("errors")
        got = body["data"]["conversation"]
        assert got["metadata"] == {"a": deep}
        assert got["state"]["value"] == deep
        assert got["messages"]["edges"][0]["node"]["metadata"] == {"a": deep}


OVERFLOWING = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]


async def test_datetimes_that_overflow_in_utc_are_bad_user_input(api: Caller) -> None:
    cid = (await api.data(CREATE, {"m": None}))["createConversation"]["id"]
    queries = [
        "query($d: DateTime) { stats(from: $d) { messages } }",
        "query($d: DateTime) { stats(to: $d) { messages } }",
        "query($d: DateTime, $c: ID) { history(conversationId: $c, since: $d) { totalCount } }",
        "query($d: DateTime) { conversations(filter: {createdFrom: $d}) { totalCount } }",
        "query($d: DateTime) { conversations(filter: {createdTo: $d}) { totalCount } }",
        'query($d: DateTime) { searchMessages(query: "x", filter: {createdFrom: $d}) { totalCount } }',
        "query($d: DateTime, $c: ID) { conversation(id: $c) { messages(since: $d) { totalCount } } }",
    ]
    for query in queries:
        for value in OVERFLOWING:
            assert codes(await api.gql(query, {"d": value, "c": cid})) == ["BAD_USER_INPUT"], (query, value)
            inline = query.replace("$d", f'"{value}"').replace("$d: DateTime, ", "").replace("($d: DateTime)", "")
            assert codes(await api.gql(inline, {"c": cid})) == ["BAD_USER_INPUT"], (inline, value)


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


U = str(uuid.uuid4())
CRAFTED_CURSORS = [
    "!!!!",
    "é",
    "a\x00b",
    b64("s|99999999999999999999"),
    b64("s|-1"),
    b64("s|x"),
    b64("c|9999-12-31T23:59:59-14:00|" + U),
    b64("c|2026-01-01T00:00:00|" + U),  # no offset
    b64("c|2026-01-01T00:00:00+00:00|not-a-uuid"),
    b64("m|2026-01-01T00:00:00+00:00|" + U + "|99999999999"),
    b64("m|0001-01-01T00:00:00+14:00|" + U + "|1"),
    b64("m|x\x00|" + U + "|1"),
    b64("z|1"),
    base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
]


async def test_crafted_cursors_are_bad_user_input(api: Caller) -> None:
    cid = (await api.data(CREATE, {"m": None}))["createConversation"]["id"]
    queries = [
        "query($a: String) { conversations(after: $a) { totalCount } }",
        "query($a: String, $c: ID) { history(conversationId: $c, after: $a) { totalCount } }",
        "query($a: String, $c: ID) { history(conversationId: $c, before: $a) { totalCount } }",
        'query($a: String) { searchMessages(query: "hello", after: $a) { totalCount } }',
        "query($a: String, $c: ID) { conversation(id: $c) { messages(after: $a) { totalCount } } }",
    ]
    for query in queries:
        for cursor in CRAFTED_CURSORS:
            body = await api.gql(query, {"a": cursor, "c": cid})
            assert codes(body) == ["BAD_USER_INPUT"], (query, cursor, body)


async def test_nul_in_text_arguments_is_bad_user_input(api: Caller) -> None:
    cid = (await api.data(CREATE, {"m": None}))["createConversation"]["id"]
    queries = [
        "query($s: String) { stats(agentId: $s) { messages } }",
        "query($s: String) { conversations(filter: {agentId: $s}) { totalCount } }",
        "query($s: String) { conversation(sessionId: $s) { id } }",
        "query($s: String) { history(sessionId: $s) { totalCount } }",
        "query($s: String!) { searchMessages(query: $s) { totalCount } }",
        "query($s: String!, $c: ID) { conversation(id: $c) { state(key: $s) { version } } }",
    ]
    for query in queries:
        body = await api.gql(query, {"s": "a\x00b", "c": cid})
        assert codes(body) == ["BAD_USER_INPUT"], (query, body)


async def test_postgres_unreachable_is_service_unavailable_503_also_for_the_key_lookup(
    servers: Servers, db: Database, tenant: str
) -> None:
    async def make_key(uow: Any) -> str:
        await tenants.ensure_tenant(uow, tenant)
        _, secret = await tenants.create_api_key(uow, tenant, tenants.parse_scopes("read,write"))
        return secret

    secret = await db.run(make_key)
    pg = urllib.parse.urlsplit(asyncpg_dsn(servers.database_url))
    proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    await proxy.start()
    app = create_app(
        Settings(_env_file=None), database_url=_via(servers.database_url, proxy.port), redis_url=servers.redis_url
    )
    try:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as http,
        ):
            known = {"Authorization": f"Bearer {secret}", "X-Request-ID": "req-down"}
            query = {"query": "{ conversations { totalCount } }"}
            r = await http.post("/graphql", json=query, headers=known)
            assert r.status_code == 200 and "errors" not in r.json(), r.text  # the key is now cached
            proxy.cut()
            unknown = {"Authorization": "Bearer csk_never-seen-before"}
            attempts = [
                await http.post("/graphql", json=query, headers=unknown),  # the key lookup
                await http.post("/graphql", json=query, headers=known),  # the query itself
                await http.get("/graphql", params=query, headers=unknown),  # Strawberry's GET path
                await http.post(
                    "/graphql",
                    json={"query": "mutation { createConversation(input: {}) { id } }"},
                    headers=known,
                ),
            ]
            for r in attempts:
                assert r.status_code == 503, r.text
                assert r.headers["content-type"].startswith("application/json"), r.text
                errors = r.json()["errors"]
                assert {e["extensions"]["code"] for e in errors} == {"SERVICE_UNAVAILABLE"}, errors
            proxy.restore()
            r = await http.post("/graphql", json=query, headers=unknown)
            assert r.status_code == 200 and codes(r.json()) == ["UNAUTHENTICATED"]
    finally:
        await proxy.close()


async def test_an_exception_escaping_the_app_is_answered_as_json(servers: Servers) -> None:
    """Starlette's own last resort is a bare text/plain 500: the guard answers first."""

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    app = create_app(Settings(_env_file=None), database_url=servers.database_url, redis_url=servers.redis_url)
    app.router.routes.append(Route("/broken", broken))  # a route with a bug, behind the real middleware
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.get("/broken", headers={"X-Request-ID": "req-9"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "errors": [{"message": "Internal error", "extensions": {"code": "INTERNAL", "requestId": "req-9"}}]
    }


async def test_routing_refusals_are_json(http: httpx.AsyncClient) -> None:
    for r in (await http.get("/no-such-path"), await http.put("/graphql", content=b"{}")):
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["errors"][0]["extensions"]["code"] in {"NOT_FOUND", "BAD_USER_INPUT"}
