"""Per-tenant CORS origins over HTTP: preflights granted for the union of the server-wide list and
every tenant's origins; actual requests from a tenant-only origin served to that tenant alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from app.main import create_app
from app.settings import Settings
from db.session import Database
from tests.api.conftest import make_caller
from tests.conftest import Servers

SERVER_WIDE = "https://crm.example.com"


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }


@pytest.fixture(scope="module")
async def cors_http(servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(_env_file=None, cors_allowed_origins=SERVER_WIDE)
    application: Starlette = create_app(settings, database_url=servers.database_url, redis_url=servers.redis_url)
    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url="http://api") as http,
    ):
        yield http


async def test_a_tenants_origins_are_granted_to_that_tenant_only(
    cors_http: httpx.AsyncClient, db: Database, tenant: str, other_tenant: str
) -> None:
    origin = f"https://{tenant}.example"
    mine = await make_caller(db, cors_http, tenant, "read,write,admin")
    theirs = await make_caller(db, cors_http, other_tenant)
    refused = await cors_http.options("/graphql", headers=_preflight(origin))
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    await mine.data(
        "mutation($o: [String!]) { updateTenantSettings(input: {corsOrigins: $o}) { corsOrigins } }", {"o": [origin]}
    )

    # Preflights carry no key: granted once the origins are re-read (within a few seconds).
    deadline = time.monotonic() + 8
    while (r := await cors_http.options("/graphql", headers=_preflight(origin))).status_code != 200:
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.2)
    assert r.headers["access-control-allow-origin"] == origin

    query = {"query": "{ __typename }"}
    ok = await cors_http.post("/graphql", json=query, headers={**mine.headers, "Origin": origin})
    assert ok.status_code == 200 and ok.json() == {"data": {"__typename": "Query"}}
    assert ok.headers["access-control-allow-origin"] == origin
    other = await cors_http.post("/graphql", json=query, headers={**theirs.headers, "Origin": origin})
    assert other.status_code == 403 and other.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "access-control-allow-origin" not in other.headers
    # The server-wide origin stays open to every tenant.
    wide = await cors_http.post("/graphql", json=query, headers={**theirs.headers, "Origin": SERVER_WIDE})
    assert wide.status_code == 200 and wide.headers["access-control-allow-origin"] == SERVER_WIDE
    # An origin nobody allows: no grant.
    nobody = await cors_http.options("/graphql", headers=_preflight("https://nobody.example"))
    assert nobody.status_code == 400
