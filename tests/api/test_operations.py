"""Every query and mutation over HTTP, happy paths and failure paths."""

from __future__ import annotations

from typing import Any

import pytest

from db.session import Database
from tests.api.conftest import Caller
from tests.factories import count_rows

CONV_FIELDS = "id sessionId userId agentId channel title status tags metadata messageCount tokenCount lastSeq closedAt closeReason"
TOOL_CALLS = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]


async def create(api: Caller, **input: Any) -> dict[str, Any]:
    data = await api.data(
        f"mutation($in: CreateConversationInput!) {{ createConversation(input: $in) {{ {CONV_FIELDS} }} }}",
        {"in": input},
    )
    conv: dict[str, Any] = data["createConversation"]
    return conv


async def add(api: Caller, conversation_id: str, content: str = "hi", **input: Any) -> dict[str, Any]:
    data = await api.data(
        """mutation($in: AddMessageInput!) { addMessage(input: $in) {
             created message { id seq role content tokenCount clientMessageId } conversation { lastSeq messageCount } } }""",
        {"in": {"conversationId": conversation_id, "role": "USER", "content": content, **input}},
    )
    payload: dict[str, Any] = data["addMessage"]
    return payload


async def test_create_get_update_close(api: Caller) -> None:
    conv = await create(
        api, sessionId="s-1", userId="u", agentId="a", channel="web", title="T", tags=["x"], metadata={"plan": "pro"}
    )
    assert conv["status"] == "ACTIVE" and conv["tags"] == ["x"] and conv["metadata"] == {"plan": "pro"}
    assert await api.error_code('mutation { createConversation(input: {sessionId: "s-1"}) { id } }') == "CONFLICT"
    by_session = await api.data('query { conversation(sessionId: "s-1") { id } }')
    assert by_session["conversation"]["id"] == conv["id"]
    missing = await api.data('query { conversation(sessionId: "nope") { id } }')
    assert missing["conversation"] is None
    upd = await api.data(
        """mutation($in: UpdateConversationInput!) { updateConversation(input: $in) { title tags metadata } }""",
        {"in": {"id": conv["id"], "tags": ["y"], "metadata": {"stage": 2}}},
    )
    assert upd["updateConversation"] == {"title": "T", "tags": ["y"], "metadata": {"plan": "pro", "stage": 2}}
    cleared = await api.data(
        "mutation($id: ID!) { updateConversation(input: {id: $id, title: null}) { title } }", {"id": conv["id"]}
    )
    assert cleared["updateConversation"]["title"] is None
    closed = await api.data(
        'mutation($id: ID!) { closeSession(conversationId: $id, reason: "done") { status closedAt closeReason } }',
        {"id": conv["id"]},
    )
    assert closed["closeSession"]["status"] == "CLOSED" and closed["closeSession"]["closeReason"] == "done"
    again = await api.data('mutation { closeSession(sessionId: "s-1", reason: "other") { closedAt closeReason } }')
    assert again["closeSession"] == {"closedAt": closed["closeSession"]["closedAt"], "closeReason": "done"}
    code = await api.error_code(
        'mutation($id: ID!) { addMessage(input: {conversationId: $id, role: USER, content: "x"}) { created } }',
        {"id": conv["id"]},
    )
    assert code == "CONVERSATION_CLOSED"


async def test_add_message_idempotency_expected_seq_and_batch(api: Caller, db: Database) -> None:
    conv = await create(api)
    first = await add(api, conv["id"], clientMessageId="k1")
    again = await add(api, conv["id"], clientMessageId="k1")
    assert again["created"] is False and again["message"]["id"] == first["message"]["id"]
    assert (
        await api.error_code(
            'mutation($id: ID!) { addMessage(input: {conversationId: $id, role: USER, content: "x", expectedSeq: 5}) { created } }',
            {"id": conv["id"]},
        )
        == "CONFLICT"
    )
    batch = await api.data(
        """mutation($in: AddMessagesInput!) { addMessages(input: $in) { createdCount
             messages { seq role toolCalls toolCallId } conversation { lastSeq } } }""",
        {
            "in": {
                "conversationId": conv["id"],
                "messages": [
                    {"role": "ASSISTANT", "content": "", "toolCalls": TOOL_CALLS},
                    {"role": "TOOL", "content": "42", "toolCallId": "call_1"},
                    {"role": "USER", "content": "hi", "clientMessageId": "k1"},  # a retry
                ],
            }
        },
    )
    out = batch["addMessages"]
    assert out["createdCount"] == 2 and [m["seq"] for m in out["messages"]] == [2, 3, 1]
    assert out["messages"][0]["toolCalls"] == TOOL_CALLS and out["conversation"]["lastSeq"] == 3
    assert await count_rows(db, "messages", api.tenant) == 3


async def test_add_message_by_new_session_creates_conversation(api: Caller) -> None:
    data = await api.data(
        """mutation { addMessage(input: {sessionId: "fresh", agentId: "ag", userId: "us", channel: "wa",
             role: USER, content: "hola"}) { created conversation { sessionId agentId userId channel lastSeq } } }"""
    )
    assert data["addMessage"]["conversation"] == {
        "sessionId": "fresh",
        "agentId": "ag",
        "userId": "us",
        "channel": "wa",
        "lastSeq": 1,
    }


async def test_history_paging_and_nested_messages(api: Caller) -> None:
    conv = await create(api, sessionId="hist")
    for i in range(1, 8):
        await add(api, conv["id"], f"m{i}")
    q = """query($id: ID, $first: Int, $after: String, $last: Int, $before: String, $afterSeq: Int, $since: DateTime) {
      history(conversationId: $id, first: $first, after: $after, last: $last, before: $before, afterSeq: $afterSeq, since: $since) {
        totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor } edges { cursor node { seq content } } } }"""
    default = (await api.data(q, {"id": conv["id"]}))["history"]
    assert [e["node"]["seq"] for e in default["edges"]] == list(range(1, 8)) and default["totalCount"] == 7
    page1 = (await api.data(q, {"id": conv["id"], "first": 3}))["history"]
    assert [e["node"]["seq"] for e in page1["edges"]] == [1, 2, 3] and page1["pageInfo"]["hasNextPage"]
    page2 = (await api.data(q, {"id": conv["id"], "first": 3, "after": page1["pageInfo"]["endCursor"]}))["history"]
    assert [e["node"]["seq"] for e in page2["edges"]] == [4, 5, 6]
    back = (await api.data(q, {"id": conv["id"], "last": 2, "before": page2["pageInfo"]["startCursor"]}))["history"]
    assert [e["node"]["seq"] for e in back["edges"]] == [2, 3]
    tail = (await api.data(q, {"id": conv["id"], "afterSeq": 5}))["history"]
    assert [e["node"]["seq"] for e in tail["edges"]] == [6, 7] and tail["totalCount"] == 2
    by_session = await api.data('query { history(sessionId: "hist", last: 1) { edges { node { content } } } }')
    assert by_session["history"]["edges"][0]["node"]["content"] == "m7"
    nested = await api.data(
        'query { conversation(sessionId: "hist") { messages(last: 2) { totalCount edges { node { seq } } } } }'
    )
    assert [e["node"]["seq"] for e in nested["conversation"]["messages"]["edges"]] == [6, 7]


async def test_state_mutations_and_fields(api: Caller) -> None:
    conv = await create(api)
    set_q = """mutation($in: SetStateInput!) { setState(input: $in) { key value version } }"""
    first = await api.data(
        set_q, {"in": {"conversationId": conv["id"], "key": "step", "value": {"n": 1}, "expectedVersion": 0}}
    )
    assert first["setState"] == {"key": "step", "value": {"n": 1}, "version": 1}
    assert (
        await api.error_code(
            set_q, {"in": {"conversationId": conv["id"], "key": "step", "value": 2, "expectedVersion": 0}}
        )
        == "CONFLICT"
    )
    await api.data(set_q, {"in": {"conversationId": conv["id"], "key": "a", "value": [1]}})
    got = await api.data(
        'query($id: ID!) { conversation(id: $id) { state(key: "step") { value version } states { key } } }',
        {"id": conv["id"]},
    )
    assert got["conversation"]["state"] == {"value": {"n": 1}, "version": 1}
    assert [s["key"] for s in got["conversation"]["states"]] == ["a", "step"]
    deleted = await api.data('mutation($id: ID!) { deleteState(conversationId: $id, key: "a") }', {"id": conv["id"]})
    assert deleted["deleteState"] is True
    deleted = await api.data('mutation($id: ID!) { deleteState(conversationId: $id, key: "a") }', {"id": conv["id"]})
    assert deleted["deleteState"] is False


async def test_conversations_list_stats_and_search(api: Caller) -> None:
    a = await create(api, agentId="sales", tags=["vip"])
    b = await create(api, agentId="support")
    await add(api, a["id"], "refund please")
    await add(api, b["id"], "where is my refund")
    await add(api, b["id"], "thanks")
    listed = await api.data(
        """query { conversations(filter: {tags: ["vip"]}) { totalCount edges { node { id agentId } } } }"""
    )
    assert listed["conversations"]["totalCount"] == 1 and listed["conversations"]["edges"][0]["node"]["id"] == a["id"]
    ordered = await api.data(
        "query { conversations(first: 1, orderBy: CREATED_AT_ASC) { totalCount pageInfo { hasNextPage } edges { node { id } } } }"
    )
    assert (
        ordered["conversations"]["edges"][0]["node"]["id"] == a["id"]
        and ordered["conversations"]["pageInfo"]["hasNextPage"]
    )
    stats = await api.data(
        "query { stats { conversations messages tokens messagesByRole { role count } agents { agentId messages } daily { day messages } } }"
    )
    s = stats["stats"]
    assert s["conversations"] == 2 and s["messages"] == 3
    assert {r["role"]: r["count"] for r in s["messagesByRole"]}["USER"] == 3
    assert {x["agentId"]: x["messages"] for x in s["agents"]} == {"sales": 1, "support": 2}
    assert sum(d["messages"] for d in s["daily"]) == 3
    found = await api.data(
        'query { searchMessages(query: "refund") { totalCount edges { node { content conversationId } } } }'
    )
    assert found["searchMessages"]["totalCount"] == 2
    filtered = await api.data(
        'query { searchMessages(query: "refund", filter: {agentId: "sales"}) { totalCount edges { node { content } } } }'
    )
    assert [e["node"]["content"] for e in filtered["searchMessages"]["edges"]] == ["refund please"]


@pytest.mark.parametrize(
    ("query", "variables", "code"),
    [
        ('query { conversation(id: "not-a-uuid") { id } }', {}, "BAD_USER_INPUT"),
        ('query { history(conversationId: "not-a-uuid") { totalCount } }', {}, "BAD_USER_INPUT"),
        ("query { conversations(filter: {status: DELETED}) { totalCount } }", {}, "BAD_USER_INPUT"),
        ("query { conversations(first: 100000) { totalCount } }", {}, "BAD_USER_INPUT"),
        ("query { conversations(first: -1) { totalCount } }", {}, "BAD_USER_INPUT"),
        ("query { conversation { id } }", {}, "BAD_USER_INPUT"),
        ("query { history { totalCount } }", {}, "BAD_USER_INPUT"),
        (
            'query { conversation(id: "0b6d9a3e-4f53-4f0f-9c47-1d2f4a9e5c11", sessionId: "s") { id } }',
            {},
            "BAD_USER_INPUT",
        ),
        ("query { conversations { nope } }", {}, "BAD_USER_INPUT"),
        ("query { conversations( { nope } }", {}, "BAD_USER_INPUT"),
        ("query($f: DateTime) { stats(from: $f) { messages } }", {"f": "2026-01-01T00:00:00"}, "BAD_USER_INPUT"),
        ("query($f: DateTime) { stats(from: $f) { messages } }", {"f": "yesterday"}, "BAD_USER_INPUT"),
        ('query { history(conversationId: "0b6d9a3e-4f53-4f0f-9c47-1d2f4a9e5c11") { totalCount } }', {}, "NOT_FOUND"),
        ('query { searchMessages(query: "  ") { totalCount } }', {}, "BAD_USER_INPUT"),
        ('query { conversations(after: "garbage") { totalCount } }', {}, "BAD_USER_INPUT"),
    ],
)
async def test_bad_queries_get_codes(api: Caller, query: str, variables: dict[str, Any], code: str) -> None:
    assert await api.error_code(query, variables) == code


@pytest.mark.parametrize(
    ("input", "code"),
    [
        ({"role": "USER", "content": "x" * (256 * 1024 + 1)}, "PAYLOAD_TOO_LARGE"),
        ({"role": "USER", "content": "x", "metadata": {"k": "v" * 70_000}}, "PAYLOAD_TOO_LARGE"),
        ({"role": "WIZARD", "content": "x"}, "BAD_USER_INPUT"),
        ({"role": "USER", "content": ""}, "BAD_USER_INPUT"),
        ({"role": "TOOL", "content": "x"}, "BAD_USER_INPUT"),
        ({"role": "USER", "content": "x", "expectedSeq": 0}, "BAD_USER_INPUT"),
        ({"role": "USER", "content": "x", "metadata": [1, 2]}, "BAD_USER_INPUT"),
        ({"role": "USER", "content": "nul\u0000"}, "BAD_USER_INPUT"),
    ],
)
async def test_bad_messages_get_codes_and_write_nothing(
    api: Caller, db: Database, input: dict[str, Any], code: str
) -> None:
    conv = await create(api)
    got = await api.error_code(
        "mutation($in: AddMessageInput!) { addMessage(input: $in) { created } }",
        {"in": {"conversationId": conv["id"], **input}},
    )
    assert got == code
    assert await count_rows(db, "messages", api.tenant) == 0


async def test_a_failed_mutation_field_does_not_undo_an_earlier_one(api: Caller, db: Database) -> None:
    """Mutations run one by one, each in its own transaction (GraphQL's serial execution)."""
    body = await api.gql(
        """mutation { a: createConversation(input: {sessionId: "one"}) { id }
                      b: createConversation(input: {sessionId: "one"}) { id } }"""
    )
    assert body["data"] is None or body["data"].get("a")
    assert body["errors"][0]["extensions"]["code"] == "CONFLICT"
    assert await count_rows(db, "conversations", api.tenant) == 1


async def test_context_window_over_graphql(api: Caller) -> None:
    conv = await create(api, sessionId="ctx")
    await api.data(
        """mutation($in: AddMessagesInput!) { addMessages(input: $in) { createdCount } }""",
        {
            "in": {
                "conversationId": conv["id"],
                "messages": [
                    {"role": "SYSTEM", "content": "You are terse."},
                    {"role": "USER", "content": "What is 6 x 7?"},
                    {"role": "ASSISTANT", "content": "", "toolCalls": TOOL_CALLS},
                    {"role": "TOOL", "content": "42", "toolCallId": "call_1"},
                    {"role": "ASSISTANT", "content": "42."},
                ],
            }
        },
    )
    q = """query($s: String, $max: Int!, $model: String, $reserve: Int) {
      contextWindow(sessionId: $s, maxTokens: $max, model: $model, reserveTokens: $reserve) {
        model encoding totalTokens droppedMessages truncated firstSeq lastSeq openaiMessages messages { seq role } } }"""
    full = (await api.data(q, {"s": "ctx", "max": 1000}))["contextWindow"]
    assert full["model"] == "gpt-4o" and full["encoding"] == "o200k_base"
    assert [m["seq"] for m in full["messages"]] == [1, 2, 3, 4, 5] and not full["truncated"]
    assert full["openaiMessages"][0] == {"role": "system", "content": "You are terse."}
    assert full["openaiMessages"][2]["tool_calls"] == TOOL_CALLS
    other = (await api.data(q, {"s": "ctx", "max": 1000, "model": "gpt-4"}))["contextWindow"]
    assert other["encoding"] == "cl100k_base"
    nested = await api.data('{ conversation(sessionId: "ctx") { contextWindow(maxTokens: 1000) { totalTokens } } }')
    assert nested["conversation"]["contextWindow"]["totalTokens"] == full["totalTokens"]
    assert await api.error_code(q, {"s": "ctx", "max": 1000, "model": "no such model"}) == "BAD_USER_INPUT"
    approx_q = """query($s: String, $max: Int!, $model: String) {
      contextWindow(sessionId: $s, maxTokens: $max, model: $model) { encoding approximate totalTokens } }"""
    claude = await api.data(approx_q, {"s": "ctx", "max": 1000, "model": "claude-3-5-sonnet-latest"})
    assert claude["contextWindow"]["approximate"] is True and claude["contextWindow"]["encoding"] == "cl100k_base"
    assert claude["contextWindow"]["totalTokens"] <= 1000
    exact = (await api.data(approx_q, {"s": "ctx", "max": 1000, "model": "gpt-4o"}))["contextWindow"]
    assert exact["approximate"] is False
    assert await api.error_code(q, {"s": "ctx", "max": 100, "reserve": 99}) == "BAD_USER_INPUT"
    assert await api.error_code(q, {"s": "nope", "max": 100}) == "NOT_FOUND"
