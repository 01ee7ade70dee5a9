"""A real uvicorn on a loopback port, driven by a third-party client (gql) running the
trusted documents in graphql/, plus documentId / persisted-query requests and /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest
from gql.transport.httpx import HTTPXAsyncTransport

from app.api.documents import DocumentRegistry
from app.settings import Settings
from db.session import Database
from tests.api.conftest import make_caller
from tests.conftest import Servers
from tests.subscriptions.conftest import serve


async def _serve(settings: Settings) -> AsyncIterator[str]:
    async for server in serve(settings):
        yield server.url


@pytest.fixture(scope="module")
async def server_url(servers: Servers) -> AsyncIterator[str]:
    settings = Settings(_env_file=None, database_url=servers.database_url, redis_url=servers.redis_url)
    async for url in _serve(settings):
        yield url


@pytest.fixture(scope="module")
async def trusted_server_url(servers: Servers) -> AsyncIterator[str]:
    settings = Settings(
        _env_file=None, database_url=servers.database_url, redis_url=servers.redis_url, trusted_documents_only=True
    )
    async for url in _serve(settings):
        yield url


async def test_gql_client_runs_every_document(server_url: str, db: Database, tenant: str) -> None:
    async with httpx.AsyncClient() as http:
        caller = await make_caller(db, http, tenant)
    docs = {d.name: d.text for d in DocumentRegistry.load().documents}
    transport = HTTPXAsyncTransport(url=f"{server_url}/graphql", headers={"Authorization": f"Bearer {caller.key}"})
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:

        async def run(name: str, **variables: Any) -> dict[str, Any]:
            result: dict[str, Any] = await session.execute(GraphQLRequest(docs[name], variable_values=variables))
            return result

        conv = (await run("ServiceCreateConversation", input={"sessionId": "gql-1", "agentId": "a", "tags": ["t"]}))[
            "createConversation"
        ]
        added = await run(
            "ServiceAddMessage",
            input={"conversationId": conv["id"], "role": "USER", "content": "hello from gql", "clientMessageId": "c1"},
        )
        assert added["addMessage"]["message"]["seq"] == 1
        batch = await run(
            "ServiceAddMessages",
            input={
                "sessionId": "gql-1",
                "messages": [{"role": "ASSISTANT", "content": "hi!"}, {"role": "USER", "content": "bye"}],
            },
        )
        assert batch["addMessages"]["createdCount"] == 2
        assert (await run("ServiceSetState", input={"conversationId": conv["id"], "key": "k", "value": {"a": 1}}))[
            "setState"
        ]["version"] == 1
        assert (await run("ServiceDeleteState", conversationId=conv["id"], key="k"))["deleteState"] is True
        assert (await run("ServiceUpdateConversation", input={"id": conv["id"], "title": "T"}))["updateConversation"][
            "title"
        ] == "T"
        listed = await run("CrmConversations", first=10)
        assert listed["conversations"]["totalCount"] == 1
        assert len(listed["conversations"]["edges"][0]["node"]["messages"]["edges"]) == 3
        detail = await run("CrmConversationDetail", sessionId="gql-1")
        assert detail["conversation"]["messages"]["totalCount"] == 3
        last = await run("AgentLastMessages", conversationId=conv["id"], last=2)
        assert [e["node"]["content"] for e in last["history"]["edges"]] == ["hi!", "bye"]
        found = await run("CrmSearch", query="gql")
        assert found["searchMessages"]["totalCount"] == 1
        stats = await run("CrmStats")
        assert stats["stats"]["messages"] == 3
        closed = await run("ServiceCloseSession", sessionId="gql-1", reason="done")
        assert closed["closeSession"]["status"] == "CLOSED"


async def test_trusted_documents_only(trusted_server_url: str, db: Database, tenant: str) -> None:
    registry = DocumentRegistry.load()
    doc = registry.by_name("CrmConversations")
    assert doc is not None
    async with httpx.AsyncClient(base_url=trusted_server_url) as http:
        caller = await make_caller(db, http, tenant)
        headers = caller.headers
        r = await http.post("/graphql", json={"documentId": doc.sha256, "variables": {"first": 5}}, headers=headers)
        assert r.status_code == 200 and r.json()["data"]["conversations"]["totalCount"] == 0
        apollo = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": doc.sha256}}, "variables": {}}
        r = await http.post("/graphql", json=apollo, headers=headers)
        assert r.status_code == 200 and "errors" not in r.json()
        r = await http.post("/graphql", json={"query": doc.text, "variables": {}}, headers=headers)
        assert r.status_code == 200 and "errors" not in r.json()  # the same text is trusted too
        r = await http.post("/graphql", json={"query": "{ conversations { totalCount } }"}, headers=headers)
        assert r.status_code == 400
        r = await http.post("/graphql", json={"documentId": "0" * 64}, headers=headers)
        assert r.status_code == 200 and "PERSISTED_QUERY_NOT_FOUND" in r.text  # Apollo retries on 200
        r = await http.get("/graphql", params={"documentId": doc.sha256, "variables": '{"first": 1}'}, headers=headers)
        assert r.status_code == 200 and r.json()["data"]["conversations"]["totalCount"] == 0


async def test_metrics_and_health(server_url: str, db: Database, tenant: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as http:
        caller = await make_caller(db, http, tenant)
        await http.post(
            "/graphql", json={"query": "query Probe { conversations { totalCount } }"}, headers=caller.headers
        )
        await http.post(
            "/graphql",
            json={"query": "query Broken { conversations(first: 1000) { totalCount } }"},
            headers=caller.headers,
        )
        stats = DocumentRegistry.load().by_name("CrmStats")
        assert stats is not None
        await http.post("/graphql", json={"documentId": stats.sha256}, headers=caller.headers)
        text = (await http.get("/metrics")).text
        # Operation labels come from the trusted documents only; any other name is "other".
        assert 'graphql_operations_total{operation="CrmStats",outcome="ok",type="query"}' in text
        assert 'graphql_operations_total{operation="other",outcome="ok",type="query"}' in text
        assert 'operation="Probe"' not in text
        assert 'graphql_errors_total{code="BAD_USER_INPUT"}' in text
        assert "graphql_operation_duration_seconds_bucket" in text
        assert "db_pool_connections" in text and "db_statements_total" in text
        assert (await http.get("/readyz")).json()["status"] == "ok"
