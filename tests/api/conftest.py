"""An app per test session (real servers), and a tenant with keys per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.main import create_app
from app.services import tenants
from app.settings import Settings
from db.session import Database
from tests.conftest import Servers


@pytest.fixture(scope="session")
async def app(servers: Servers) -> AsyncIterator[Starlette]:
    application = create_app(Settings(_env_file=None), database_url=servers.database_url, redis_url=servers.redis_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


@dataclass
class Caller:
    """A tenant's client: `await api.gql(query, variables)` returns the parsed response."""

    http: httpx.AsyncClient
    tenant: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def gql(self, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        r = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=self.headers, **kw
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = await self.gql(query, variables)
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    async def error_code(self, query: str, variables: dict[str, Any] | None = None) -> str:
        body = await self.gql(query, variables)
        assert body.get("errors"), body
        code: str = body["errors"][0]["extensions"]["code"]
        return code


async def make_caller(db: Database, http: httpx.AsyncClient, tenant: str, scopes: str = "read,write") -> Caller:
    async def setup(uow: Any) -> str:
        await tenants.ensure_tenant(uow, tenant)
        _, secret = await tenants.create_api_key(uow, tenant, tenants.parse_scopes(scopes))
        return secret

    return Caller(http=http, tenant=tenant, key=await db.run(setup))


@pytest.fixture
async def api(db: Database, http: httpx.AsyncClient, tenant: str) -> Caller:
    return await make_caller(db, http, tenant)


@pytest.fixture
async def other_api(db: Database, http: httpx.AsyncClient, other_tenant: str) -> Caller:
    return await make_caller(db, http, other_tenant)


@pytest.fixture
async def reader(db: Database, http: httpx.AsyncClient, tenant: str) -> Caller:
    return await make_caller(db, http, tenant, "read")


@pytest.fixture(scope="session")
async def ordinary_app(servers: Servers) -> AsyncIterator[Starlette]:
    """The same service with GRAPHQL_ENGINE=false: every operation through graphql-core's executor
    (the reference the engine's answers are compared with)."""
    settings = Settings(_env_file=None, graphql_engine=False)
    application = create_app(settings, database_url=servers.database_url, redis_url=servers.redis_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def ordinary_http(ordinary_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ordinary_app), base_url="http://test") as client:
        yield client


@pytest.fixture
async def ordinary(api: Caller, ordinary_http: httpx.AsyncClient) -> Caller:
    """`api`'s tenant and key, answered by the ordinary path."""
    return Caller(http=ordinary_http, tenant=api.tenant, key=api.key)
