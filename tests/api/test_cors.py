"""Browsers: CORS preflights and headers for the origins in CORS_ALLOWED_ORIGINS, and the same
list guarding WebSocket handshakes; with none configured no origin is granted anything."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from starlette.applications import Starlette

from app.main import create_app
from app.settings import Settings
from db.session import Database
from tests.api.conftest import make_caller
from tests.conftest import Servers
from tests.subscriptions.conftest import serve, settings_for

CRM = "https://crm.example.com"
PREFLIGHT = {
    "Origin": CRM,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


@pytest.fixture(scope="module")
async def cors_app(servers: Servers) -> AsyncIterator[Starlette]:
    settings = Settings(_env_file=None, cors_allowed_origins=f"{CRM}, https://other.example.com")
    application = create_app(settings, database_url=servers.database_url, redis_url=servers.redis_url)
    async with application.router.lifespan_context(application):
        yield application


async def test_preflight_from_an_allowed_origin_is_granted(cors_app: Starlette) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cors_app), base_url="http://api") as http:
        r = await http.options("/graphql", headers=PREFLIGHT)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == CRM
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


async def test_an_allowed_origin_reads_the_answer(cors_app: Starlette, db: Database, tenant: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cors_app), base_url="http://api") as http:
        caller = await make_caller(db, http, tenant)
        r = await http.post("/graphql", json={"query": "{ __typename }"}, headers={**caller.headers, "Origin": CRM})
    assert r.status_code == 200 and r.json() == {"data": {"__typename": "Query"}}
    assert r.headers["access-control-allow-origin"] == CRM
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


async def test_other_origins_get_nothing(cors_app: Starlette, http: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cors_app), base_url="http://api") as client:
        r = await client.options("/graphql", headers={**PREFLIGHT, "Origin": "https://evil.example.com"})
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    # The default app (no CORS_ALLOWED_ORIGINS) answers a preflight, granting no origin.
    r = await http.options("/graphql", headers=PREFLIGHT)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


async def test_websocket_origin_is_checked_against_the_same_list(servers: Servers, db: Database, tenant: str) -> None:
    async with httpx.AsyncClient() as client:
        caller = await make_caller(db, client, tenant)
    init = json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {caller.key}"}})
    async for server in serve(settings_for(servers, cors_allowed_origins=CRM)):
        ws_url = server.url.replace("http", "ws") + "/graphql"
        async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"], origin=CRM) as ws:  # type: ignore[list-item,arg-type]
            await ws.send(init)
            assert json.loads(await ws.recv())["type"] == "connection_ack"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(
                ws_url,
                subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                origin="https://evil.example.com",  # type: ignore[arg-type]
            ):
                pass
        assert refused.value.response.status_code == 403
