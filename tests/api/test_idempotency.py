"""Issue 9 item 8 over HTTP: idempotency keys bind to their payload, state versions never go
back, and a write-only key reads nothing back through a mutation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from db.session import Database
from tests.api.conftest import Caller, make_caller

ADD = """
mutation($input: AddMessageInput!) {
  addMessage(input: $input) { created message { id seq role content metadata toolCalls sources { documentId } } }
}
"""
ADD_MANY = """
mutation($input: AddMessagesInput!) { addMessages(input: $input) { createdCount messages { seq content } } }
"""
COUNT = "query($s: String!) { conversation(sessionId: $s) { messageCount lastSeq } }"
SET = "mutation($input: SetStateInput!) { setState(input: $input) { key value version } }"
DELETE = "mutation($c: ID!, $k: String!) { deleteState(conversationId: $c, key: $k) }"
CREATE = "mutation($s: String!) { createConversation(input: {sessionId: $s}) { id } }"


def _msg(session: str, **fields: Any) -> dict[str, Any]:
    return {"input": {"sessionId": session, "role": "USER", "content": "hello", "clientMessageId": "k1", **fields}}


async def _count(api: Caller, session: str) -> dict[str, Any]:
    conversation: dict[str, Any] = (await api.data(COUNT, {"s": session}))["conversation"]
    return conversation


async def test_same_client_message_id_with_another_payload_is_refused(api: Caller) -> None:
    session = f"s-{uuid.uuid4()}"
    first = await api.data(ADD, _msg(session, metadata={"a": 1.5, "b": [1, True]}))
    assert first["addMessage"]["created"] is True
    # The very same payload (keys in another order) replays the original.
    again = await api.data(ADD, _msg(session, metadata={"b": [1, True], "a": 1.5}))
    assert again["addMessage"]["created"] is False
    assert again["addMessage"]["message"]["id"] == first["addMessage"]["message"]["id"]
    changes: list[dict[str, Any]] = [
        {"content": "HELLO"},
        {"role": "SYSTEM"},
        {"name": "bob"},
        {"metadata": {"a": 1.5, "b": [1, 1]}},  # true is not 1
        {"metadata": {"a": 1.5}},
        {"sources": [{"documentId": "d1"}]},
        {"execution": {"model": "gpt-4o"}},
    ]
    for change in changes:
        body = await api.gql(ADD, _msg(session, metadata={"a": 1.5, "b": [1, True]}) | {})
        assert "errors" not in body
        variables = _msg(session, **({"metadata": {"a": 1.5, "b": [1, True]}} | change))
        body = await api.gql(ADD, variables)
        assert body["data"] is None, change
        error = body["errors"][0]
        assert error["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED", (change, error)
        assert error["extensions"]["clientMessageId"] == "k1"
        assert error["extensions"]["seq"] == 1
        assert error["extensions"]["fields"] == list(change), error
        assert "hello" not in str(error), "the stored content is never echoed"
    assert await _count(api, session) == {"messageCount": 1, "lastSeq": 1}


async def test_tool_calls_are_part_of_the_payload(api: Caller) -> None:
    session = f"s-{uuid.uuid4()}"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    fields = {"role": "ASSISTANT", "content": "", "toolCalls": [call]}
    assert (await api.data(ADD, _msg(session, **fields)))["addMessage"]["created"] is True
    assert (await api.data(ADD, _msg(session, **fields)))["addMessage"]["created"] is False
    other = {**call, "function": {"name": "g", "arguments": "{}"}}
    assert await api.error_code(ADD, _msg(session, **(fields | {"toolCalls": [other]}))) == "IDEMPOTENCY_KEY_REUSED"


async def test_a_batch_reusing_a_key_for_another_message_writes_nothing(api: Caller) -> None:
    session = f"s-{uuid.uuid4()}"
    batch = [{"role": "USER", "content": "one", "clientMessageId": "a"}]
    await api.data(ADD_MANY, {"input": {"sessionId": session, "messages": batch}})
    replay = [*batch, {"role": "USER", "content": "two", "clientMessageId": "b"}]
    done = await api.data(ADD_MANY, {"input": {"sessionId": session, "messages": replay}})
    assert done["addMessages"]["createdCount"] == 1
    wrong = [
        {"role": "USER", "content": "three", "clientMessageId": "c"},
        {"role": "USER", "content": "not one", "clientMessageId": "a"},
    ]
    body = await api.gql(ADD_MANY, {"input": {"sessionId": session, "messages": wrong}})
    assert body["errors"][0]["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert body["errors"][0]["extensions"]["fields"] == ["content"]
    assert await _count(api, session) == {"messageCount": 2, "lastSeq": 2}
    # A single addMessage reusing a batch's key is bound the same way.
    single = {"input": {"sessionId": session, "role": "USER", "content": "two!", "clientMessageId": "b"}}
    assert await api.error_code(ADD, single) == "IDEMPOTENCY_KEY_REUSED"


async def test_state_versions_never_go_back_across_deletes(api: Caller) -> None:
    cid = (await api.data(CREATE, {"s": f"s-{uuid.uuid4()}"}))["createConversation"]["id"]

    async def put(value: Any, expected: int | None = None) -> dict[str, Any]:
        body = await api.gql(
            SET, {"input": {"conversationId": cid, "key": "k", "value": value, "expectedVersion": expected}}
        )
        return body

    assert (await put(1))["data"]["setState"]["version"] == 1
    assert (await put(2))["data"]["setState"]["version"] == 2
    assert (await api.data(DELETE, {"c": cid, "k": "k"}))["deleteState"] is True
    # A deleted key reads as absent everywhere, the hot cache included.
    read = 'query($c: ID!) { conversation(id: $c) { state(key: "k") { version } states { key } } }'
    assert (await api.data(read, {"c": cid}))["conversation"] == {"state": None, "states": []}
    assert (await api.data(DELETE, {"c": cid, "k": "k"}))["deleteState"] is False
    third = await put(3, 0)  # "must not exist" holds for a deleted key
    assert third["data"]["setState"]["version"] == 4
    # A client that read version 1 (or 2) before the delete cannot overwrite the new value.
    for stale in (1, 2, 3):
        body = await put("stale", stale)
        assert body["errors"][0]["extensions"]["code"] == "CONFLICT"
        assert body["errors"][0]["extensions"]["currentVersion"] == 4
    assert (await put(5, 4))["data"]["setState"]["version"] == 5
    assert (await api.data(read, {"c": cid}))["conversation"] == {"state": {"version": 5}, "states": [{"key": "k"}]}


async def test_a_deleted_system_prompt_key_is_not_in_the_context_window(api: Caller) -> None:
    cid = (await api.data(CREATE, {"s": f"s-{uuid.uuid4()}"}))["createConversation"]["id"]
    await api.data(SET, {"input": {"conversationId": cid, "key": "system_prompt", "value": "be terse"}})
    await api.data(DELETE, {"c": cid, "k": "system_prompt"})
    window = "query($c: ID!) { conversation(id: $c) { contextWindow(maxTokens: 1000) { openaiMessages } } }"
    assert (await api.data(window, {"c": cid}))["conversation"]["contextWindow"]["openaiMessages"] == []


async def test_a_write_only_key_reads_nothing_back(db: Database, http: httpx.AsyncClient, api: Caller) -> None:
    writer = await make_caller(db, http, api.tenant, "write")
    session = f"s-{uuid.uuid4()}"
    secret = {"sessionId": session, "title": "secret title", "metadata": {"ssn": "123"}}
    created = await api.data(
        "mutation($i: CreateConversationInput!) { createConversation(input: $i) { id } }", {"i": secret}
    )
    cid = created["createConversation"]["id"]
    await api.data(ADD, _msg(session, content="private words"))

    # The ordinary service documents still work for a write-only key.
    receipt = """mutation($input: AddMessageInput!) { addMessage(input: $input) {
        created message { id seq role tokenCount createdAt } conversation { id sessionId status lastSeq } } }"""
    done = await writer.data(receipt, _msg(session, content="mine", clientMessageId="w1"))
    assert done["addMessage"]["conversation"]["lastSeq"] == 2
    # A replay of its own message returns it (the payload must match, so it sent all of it).
    replay = await writer.data(ADD, _msg(session, content="mine", clientMessageId="w1"))
    assert replay["addMessage"]["message"]["content"] == "mine"

    refused = [
        # a no-op update that would answer the stored title and metadata
        ("mutation($id: ID!) { updateConversation(input: {id: $id}) { id title metadata } }", {"id": cid}),
        ('mutation($id: ID!) { updateConversation(input: {id: $id, tags: ["x"]}) { tags metadata } }', {"id": cid}),
        # through a fragment, and nested reads of the conversation
        (
            "mutation($input: AddMessageInput!) { addMessage(input: $input) { conversation { ...C } } }"
            " fragment C on Conversation { title }",
            _msg(session, content="x", clientMessageId="w2"),
        ),
        (
            "mutation($input: AddMessageInput!) { addMessage(input: $input) "
            "{ conversation { messages { edges { node { content } } } } } }",
            _msg(session, content="x", clientMessageId="w3"),
        ),
        ("mutation($id: ID!) { closeSession(conversationId: $id) { closeReason } }", {"id": cid}),
    ]
    for query, variables in refused:
        body = await writer.gql(query, variables)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", (query, body)
        assert "secret" not in str(body) and "private" not in str(body) and "123" not in str(body)
    # Refused before the write: nothing was appended or closed.
    state = await api.data("query($id: ID!) { conversation(id: $id) { lastSeq status tags } }", {"id": cid})
    assert state["conversation"] == {"lastSeq": 2, "status": "ACTIVE", "tags": []}

    # What it sends it may read back; with read, everything as before.
    tagged = await writer.data(
        'mutation($id: ID!) { updateConversation(input: {id: $id, tags: ["t"]}) { id tags } }', {"id": cid}
    )
    assert tagged["updateConversation"]["tags"] == ["t"]
    full = await api.data("mutation($id: ID!) { updateConversation(input: {id: $id}) { title metadata } }", {"id": cid})
    assert full["updateConversation"] == {"title": "secret title", "metadata": {"ssn": "123"}}
