"""The engine (app/api/engine/): its adapter is reviewed per version, its switch is a setting,
the shapes it plans are executed by the plan (one statement per level), and what it cannot plan
is counted in /metrics and still answered by the ordinary path."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from starlette.applications import Starlette

from app import metrics
from app.api.engine import adapter
from tests.api.conftest import Caller

ROOT = Path(__file__).resolve().parents[2]


def test_strawberry_and_graphql_core_are_the_versions_the_adapter_was_reviewed_against() -> None:
    """An upgrade fails here until app/api/engine/adapter.py is re-read and REVIEWED updated."""
    for package, reviewed in adapter.REVIEWED.items():
        assert version(package) == reviewed, f"{package} {version(package)} is not reviewed ({reviewed})"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for package, reviewed in adapter.REVIEWED.items():
        assert f"{package}=={reviewed}" in dependencies, f"pyproject.toml must pin {package}=={reviewed}"


def test_only_the_adapter_touches_strawberry_and_graphql_core_internals() -> None:
    markers = ("._schema", "wrapped_func", "FieldDetails", "strawberry-definition", "StrawberryGraphQLCore")
    for path in (ROOT / "app" / "api" / "engine").glob("*.py"):
        if path.name == "adapter.py":
            continue
        text = path.read_text()
        assert not [m for m in markers if m in text], path


def _unplanned(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("graphql_engine_unplanned_total", {"reason": reason})
    return value or 0.0


async def test_the_setting_switches_the_engine_off(app: Starlette, ordinary_app: Starlette) -> None:
    from app.api.http import GraphQLView

    def view(application: Starlette) -> GraphQLView:
        for route in application.routes:
            endpoint = getattr(route, "app", None)
            if isinstance(endpoint, GraphQLView):
                return endpoint
        raise AssertionError("no GraphQL view")

    on, off = view(app).engine, view(ordinary_app).engine
    assert on is not None and off is not None
    query = "{ conversations(first: 1) { edges { node { id } } } }"
    assert on.get(query, None, {}) is not None and off.get(query, None, {}) is None


async def test_unplanned_shapes_are_counted_and_still_answered(api: Caller, ordinary: Caller) -> None:
    before = _unplanned("introspection")
    query = "{ __schema { queryType { name } } conversations(first: 1) { edges { node { id } } } }"
    body = await api.gql(query)
    assert body == await ordinary.gql(query) and body["data"]["__schema"]["queryType"]["name"] == "Query"
    assert _unplanned("introspection") == before + 1
    before = _unplanned("runtime")
    bad = '{ conversation(id: "not-a-uuid") { id } }'  # the resolver raises: the ordinary path reports
    body = await api.gql(bad)
    assert body == await ordinary.gql(bad) and body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert _unplanned("runtime") == before + 1


async def test_a_batch_of_queries_runs_through_the_engine_and_answers_like_the_ordinary_path(
    api: Caller, ordinary: Caller
) -> None:
    conv = (await api.data('mutation { createConversation(input: {sessionId: "b1", agentId: "a1"}) { id } }'))[
        "createConversation"
    ]["id"]
    await api.data(
        'mutation($id: ID!) { addMessage(input: {conversationId: $id, role: USER, content: "hi"}) { created } }',
        {"id": conv},
    )
    batch = [
        {
            "query": 'query { conversations(filter: {agentId: "a1"}) { edges { node { id messages(last: 3) '
            "{ edges { node { seq content sources { documentId } } } } } } } }"
        },
        {"query": "query($id: ID!) { conversation(id: $id) { lastSeq } }", "variables": {"id": conv}},
        {
            "query": "query($id: ID!) { history(conversationId: $id, last: 10) { edges { node { seq } } } }",
            "variables": {"id": conv},
        },
        {"query": '{ conversation(id: "nope") { id } }'},  # fails at run time: the ordinary path reports it
    ]
    before = _unplanned("runtime")
    planned = await api.http.post("/graphql", json=batch, headers=api.headers)
    reference = await ordinary.http.post("/graphql", json=batch, headers=ordinary.headers)
    assert planned.status_code == reference.status_code == 200
    assert planned.json() == reference.json()
    body = planned.json()
    assert body[1]["data"]["conversation"]["lastSeq"] == 1
    assert body[3]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert _unplanned("runtime") == before + 1  # only the failing item left the engine
