"""Auth, scopes, request limits and HTTP-level refusals."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from app.embedded.postgres import start_postgres
from app.main import create_app
from app.services import tenants
from app.settings import Settings
from db.migrate import upgrade_async
from db.session import Database
from tests.api.conftest import Caller
from tests.conftest import Servers
from tests.factories import count_rows

ADD = 'mutation { addMessage(input: {sessionId: "s", role: USER, content: "x"}) { created } }'


async def post(http: httpx.AsyncClient, query: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return await http.post("/graphql", json={"query": query}, headers=headers or {})


def code(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    value: str = r.json()["errors"][0]["extensions"]["code"]
    return value


async def test_missing_and_unknown_keys_are_unauthenticated(http: httpx.AsyncClient) -> None:
    assert code(await post(http, "query { conversations { totalCount } }")) == "UNAUTHENTICATED"
    bad = {"Authorization": "Bearer csk_not-a-real-key"}
    assert code(await post(http, "query { conversations { totalCount } }", bad)) == "UNAUTHENTICATED"
    assert (
        code(await post(http, "query { conversations { totalCount } }", {"Authorization": "Basic abc"}))
        == "UNAUTHENTICATED"
    )


async def test_read_key_cannot_mutate(reader: Caller, db: Database) -> None:
    assert await reader.error_code(ADD) == "FORBIDDEN"
    assert await count_rows(db, "conversations", reader.tenant) == 0
    assert (await reader.data("query { conversations { totalCount } }"))["conversations"]["totalCount"] == 0


async def test_tenant_header_must_match_the_key(api: Caller) -> None:
    r = await post(api.http, "query { conversations { totalCount } }", {**api.headers, "X-Tenant-ID": "someone-else"})
    assert code(r) == "FORBIDDEN"
    r = await post(api.http, "query { conversations { totalCount } }", {**api.headers, "X-Tenant-ID": api.tenant})
    assert "errors" not in r.json()


async def test_revoked_key_is_refused_within_five_seconds(api: Caller, db: Database) -> None:
    assert "errors" not in await api.gql("query { conversations { totalCount } }")
    async with db.read() as conn:
        (key,) = await tenants.list_api_keys(conn, api.tenant)
    await db.run(lambda uow: tenants.revoke_api_key(uow, key.id))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        body = await api.gql("query { conversations { totalCount } }")
        if body.get("errors"):
            assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
            return
        await asyncio.sleep(0.25)
    pytest.fail("a revoked key still worked after 5 s")


async def test_query_limits(api: Caller) -> None:
    deep = "query { conversations { edges { node { messages { edges { node { sources { documentId } } } } } } } }"
    assert "errors" not in await api.gql(deep)
    nested = "{ __typename " + "conversations { edges { node { " * 5 + "id" + " } } }" * 5 + " }"
    assert await api.error_code(nested) == "BAD_USER_INPUT"  # depth 20
    aliases = "query { " + " ".join(f"a{i}: conversations {{ totalCount }}" for i in range(100)) + " }"
    assert await api.error_code(aliases) == "BAD_USER_INPUT"
    tokens = "query { conversations { " + " ".join(["totalCount"] * 2500) + " } }"
    assert await api.error_code(tokens) == "BAD_USER_INPUT"


async def test_mutation_over_get_is_refused_before_running(api: Caller, db: Database) -> None:
    r = await api.http.get("/graphql", params={"query": ADD}, headers=api.headers)
    assert 400 <= r.status_code < 500
    assert await count_rows(db, "conversations", api.tenant) == 0
    ok = await api.http.get("/graphql", params={"query": "{ conversations { totalCount } }"}, headers=api.headers)
    assert ok.status_code == 200 and ok.json()["data"]["conversations"]["totalCount"] == 0


async def test_oversized_body_is_refused_at_http_level(api: Caller, db: Database) -> None:
    big = "x" * (4 * 1024 * 1024 + 10)
    r = await api.http.post(
        "/graphql",
        json={"query": ADD.replace('"x"', f'"{big}"')},
        headers=api.headers,
    )
    assert r.status_code == 413
    assert await count_rows(db, "conversations", api.tenant) == 0


async def test_batches_are_capped(api: Caller) -> None:
    one = {"query": "{ conversations { totalCount } }"}
    r = await api.http.post("/graphql", json=[one, one], headers=api.headers)
    assert r.status_code == 200 and [x["data"]["conversations"]["totalCount"] for x in r.json()] == [0, 0]
    r = await api.http.post("/graphql", json=[one] * 11, headers=api.headers)
    assert r.status_code == 400


async def test_postgres_vanishing_is_service_unavailable_with_a_request_id(
    servers: Servers, db: Database, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Postgres vanishing mid-flight is neither the client's fault nor a bug: SERVICE_UNAVAILABLE
    with 503 (nothing ran: retry), no internals, and the request id in the response is the one
    in our logs."""
    data = Path(tempfile.mkdtemp(prefix="cs-pg-"))
    pg = start_postgres(data, fsync=False)
    try:
        await upgrade_async(pg.url)
        app = create_app(
            Settings(_env_file=None, auth_mode="trusted"), database_url=pg.url, redis_url=servers.redis_url
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                headers = {"X-Tenant-ID": tenant, "X-Request-ID": "req-123"}
                assert "errors" not in (await post(http, "{ conversations { totalCount } }", headers)).json()
                pg.stop()
                r = await post(http, "{ conversations { totalCount } }", headers)
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/json")
        error = r.json()["errors"][0]
        assert error["extensions"] == {"code": "SERVICE_UNAVAILABLE", "requestId": "req-123"}
        assert "retry" in error["message"] and "Connection" not in error["message"]
        assert any(getattr(rec, "request_id", None) == "req-123" for rec in caplog.records)
    finally:
        pg.stop()


@pytest.fixture
async def production_app(servers: Servers) -> AsyncIterator[Starlette]:
    settings = Settings(
        _env_file=None,
        environment="production",
        database_url=servers.database_url,
        redis_url=servers.redis_url,
        auth_mode="trusted",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def test_production_mode_hides_the_schema_and_trusted_mode_takes_the_header(
    production_app: Starlette, tenant: str
) -> None:
    transport = httpx.ASGITransport(app=production_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        headers = {"X-Tenant-ID": tenant}
        r = await post(http, "{ __schema { types { name } } }", headers)
        assert code(r) == "BAD_USER_INPUT"
        r = await post(http, "{ conversations { totalCountt } }", headers)
        assert "Did you mean" not in r.text
        assert code(await post(http, "{ conversations { totalCount } }")) == "UNAUTHENTICATED"
        r = await post(http, "{ conversations { totalCount } }", headers)
        assert r.json()["data"]["conversations"]["totalCount"] == 0
        assert (await http.get("/graphql", headers={"Accept": "text/html"})).status_code == 404
        assert (await http.get("/static/graphiql/graphiql.min.js")).status_code == 404


async def test_graphiql_in_development(http: httpx.AsyncClient) -> None:
    r = await http.get("/graphql", headers={"Accept": "text/html"})
    assert r.status_code == 200 and "graphiql" in r.text.lower()
    # Packaged, not from a CDN: the page names only its own assets, and the CSP pins them there.
    assert "https://" not in r.text and "static/graphiql/graphiql.min.js" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    asset = await http.get("/static/graphiql/graphiql.min.js")
    assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
    assert len(asset.content) > 100_000
