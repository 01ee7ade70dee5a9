"""Tenant B's key against tenant A's ids and session ids: NOT_FOUND or empty, nothing leaks,
and tenant A's data is unchanged afterwards."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Caller

SNAPSHOT = """query($id: ID!) { conversation(id: $id) { id sessionId title tags metadata status lastSeq messageCount
  tokenCount states { key value version } messages(first: 100) { edges { node { seq content sources { documentId } } } } } }"""


@pytest.fixture
async def victim(api: Caller) -> dict[str, Any]:
    conv = (
        await api.data(
            'mutation { createConversation(input: {sessionId: "secret-session", agentId: "ag", '
            'userId: "victim-user", tags: ["vip"], metadata: {card: "4111"}}) { id } }'
        )
    )["createConversation"]
    await api.data(
        'mutation($id: ID!) { addMessage(input: {conversationId: $id, role: USER, content: "my secret invoice", '
        'sources: [{documentId: "doc-a"}]}) { created } }',
        {"id": conv["id"]},
    )
    await api.data(
        'mutation($id: ID!) { setState(input: {conversationId: $id, key: "k", value: 1}) { version } }',
        {"id": conv["id"]},
    )
    return {"id": conv["id"], "snapshot": await api.data(SNAPSHOT, {"id": conv["id"]})}


ATTACKS: list[tuple[str, str | None]] = [
    ("query($id: ID!) { conversation(id: $id) { id } }", None),
    ('query { conversation(sessionId: "secret-session") { id } }', None),
    ("query($id: ID!) { history(conversationId: $id) { totalCount } }", "NOT_FOUND"),
    ('query { history(sessionId: "secret-session") { totalCount } }', "NOT_FOUND"),
    ("query($id: ID!) { contextWindow(conversationId: $id, maxTokens: 1000) { totalTokens } }", "NOT_FOUND"),
    ('query { contextWindow(sessionId: "secret-session", maxTokens: 1000) { totalTokens } }', "NOT_FOUND"),
    (
        'mutation($id: ID!) { addMessage(input: {conversationId: $id, role: USER, content: "x"}) { created } }',
        "NOT_FOUND",
    ),
    (
        'mutation($id: ID!) { addMessages(input: {conversationId: $id, messages: [{role: USER, content: "x"}]}) { createdCount } }',
        "NOT_FOUND",
    ),
    ('mutation($id: ID!) { setState(input: {conversationId: $id, key: "k", value: 2}) { version } }', "NOT_FOUND"),
    ('mutation($id: ID!) { deleteState(conversationId: $id, key: "k") }', "NOT_FOUND"),
    ('mutation($id: ID!) { updateConversation(input: {id: $id, title: "pwned"}) { id } }', "NOT_FOUND"),
    ("mutation($id: ID!) { closeSession(conversationId: $id) { id } }", "NOT_FOUND"),
    ('mutation { closeSession(sessionId: "secret-session") { id } }', "NOT_FOUND"),
    ("mutation($id: ID!) { syncCrm(conversationId: $id) { status } }", "NOT_FOUND"),
]


@pytest.mark.parametrize(("query", "expected_code"), ATTACKS)
async def test_other_tenant_sees_nothing_and_changes_nothing(
    api: Caller, other_api: Caller, victim: dict[str, Any], query: str, expected_code: str | None
) -> None:
    body = await other_api.gql(query, {"id": victim["id"]} if "$id" in query else {})
    if expected_code is None:
        assert "errors" not in body and next(iter(body["data"].values())) is None
    else:
        assert body["errors"][0]["extensions"]["code"] == expected_code
    text = str(body)
    for secret in ("secret invoice", "4111", "victim-user", "doc-a"):
        assert secret not in text
    assert await api.data(SNAPSHOT, {"id": victim["id"]}) == victim["snapshot"]


async def test_lists_stats_and_search_are_per_tenant(api: Caller, other_api: Caller, victim: dict[str, Any]) -> None:
    data = await other_api.data(
        """query { conversations(filter: {userId: "victim-user"}) { totalCount edges { node { id } } }
                   all: conversations { totalCount }
                   stats { conversations messages tokens agents { agentId } }
                   searchMessages(query: "secret") { totalCount edges { node { id } } } }"""
    )
    assert data["conversations"] == {"totalCount": 0, "edges": []} and data["all"]["totalCount"] == 0
    assert data["stats"] == {"conversations": 0, "messages": 0, "tokens": 0, "agents": []}
    assert data["searchMessages"] == {"totalCount": 0, "edges": []}
    # The same sessionId is simply a different conversation for tenant B.
    mine = await other_api.data(
        'mutation { addMessage(input: {sessionId: "secret-session", role: USER, content: "b"}) { conversation { id lastSeq } } }'
    )
    assert mine["addMessage"]["conversation"]["id"] != victim["id"]
    assert mine["addMessage"]["conversation"]["lastSeq"] == 1
    assert await api.data(SNAPSHOT, {"id": victim["id"]}) == victim["snapshot"]
