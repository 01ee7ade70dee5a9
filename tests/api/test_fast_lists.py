"""The engine (app/api/engine/) is an optimisation only: every query answers exactly as graphql-core
answers with GRAPHQL_ENGINE=false (documents in graphql/, plus aliases, fragments, directives,
__typename and nulls)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from app.api.documents import DocumentRegistry
from tests.api.conftest import Caller

TOOL_CALLS = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]

EXTRA = [
    """query($id: ID!, $withContent: Boolean!, $skipSeq: Boolean!) { history(conversationId: $id, first: 10) {
         edges { __typename cursor n: node { ...M content @include(if: $withContent) seq @skip(if: $skipSeq) } } } }
       fragment M on Message { id role name toolCalls toolCallId metadata tokenCount createdAt clientMessageId }""",
    """query($id: ID!) { history(conversationId: $id) { edges { node { seq execution { model latencyMs }
         sources { documentId score } } } } }""",
    """query { conversations(first: 50) { edges { cursor node { __typename id tags closedAt closeReason lastMessageAt
         title states { key value version } } } } }""",
]


async def _seed(api: Caller) -> str:
    conv = (
        await api.data(
            'mutation { createConversation(input: {sessionId: "f1", tags: ["a", "b"], '
            "metadata: {k: [1, {x: null}]}}) { id } }"
        )
    )["createConversation"]["id"]
    await api.data(
        """mutation($in: AddMessagesInput!) { addMessages(input: $in) { createdCount } }""",
        {
            "in": {
                "conversationId": conv,
                "messages": [
                    {"role": "SYSTEM", "content": "be brief"},
                    {
                        "role": "USER",
                        "content": "hola ñ 🙂",
                        "name": "ana",
                        "clientMessageId": "m1",
                        "metadata": {"lang": "es"},
                    },
                    {
                        "role": "ASSISTANT",
                        "content": "",
                        "toolCalls": TOOL_CALLS,
                        "execution": {"model": "gpt-4o", "latencyMs": 12},
                    },
                    {
                        "role": "TOOL",
                        "content": "42",
                        "toolCallId": "c1",
                        "sources": [{"documentId": "d", "score": 0.5}],
                    },
                ],
            }
        },
    )
    await api.data(
        'mutation($id: ID!) { setState(input: {conversationId: $id, key: "s", value: {v: 1}}) { version } }',
        {"id": conv},
    )
    other = (await api.data('mutation { createConversation(input: {title: "t"}) { id } }'))["createConversation"]["id"]
    await api.data('mutation($id: ID!) { closeSession(conversationId: $id, reason: "r") { id } }', {"id": other})
    return str(conv)


async def _both(api: Caller, ordinary: Caller, query: str, variables: dict[str, Any]) -> tuple[Any, Any]:
    return await api.gql(query, variables), await ordinary.gql(query, variables)


async def test_every_document_answers_the_same_both_ways(api: Caller, ordinary: Caller) -> None:
    conv = await _seed(api)
    variables = {
        "id": conv,
        "conversationId": conv,
        "sessionId": None,
        "query": "hola",
        "first": 20,
        "last": 20,
        "lastMessages": 3,
        "maxTokens": 1000,
        "withContent": True,
        "skipSeq": False,
    }
    queries = [d.text for d in DocumentRegistry.load().documents if d.text.lstrip("# ").find("mutation") < 0]
    queries = [q for q in queries if q.split("\n", 1)[1].lstrip().startswith("query")] + EXTRA
    for query in queries:
        fast, slow = await _both(api, ordinary, query, variables)
        assert fast == slow, query
    for flags in ({"withContent": False, "skipSeq": True}, {"withContent": True, "skipSeq": True}):
        fast, slow = await _both(api, ordinary, EXTRA[0], {**variables, **flags})
        assert fast == slow and "errors" not in fast


async def test_a_null_in_a_non_null_field_is_still_an_error(api: Caller, ordinary: Caller) -> None:
    """Shape errors fall back to graphql-core, which reports them as usual."""
    from graphql import GraphQLString

    from app.api.engine.plans import _Fallback, _leaf

    plan = _leaf(GraphQLString, non_null=True)
    with pytest.raises(_Fallback):
        plan(None, None)
    assert plan("x", None) == "x"


def test_the_encoder_writes_uuids_and_utc_datetimes_as_the_scalars_do() -> None:
    """The compiled path leaves UUIDs and UTC datetimes to the encoder: it must write them
    exactly as the ID and DateTime serializers would."""
    import uuid
    from datetime import UTC, datetime

    import orjson

    from app.api.http import GraphQLView
    from app.api.scalars import _serialize_datetime

    values = [uuid.uuid4() for _ in range(20)]
    moments = [datetime(2026, 1, 2, 3, 4, 5, micro, tzinfo=UTC) for micro in (0, 1, 1000, 123456, 999999)]
    moments.append(datetime.now(UTC))
    encode = GraphQLView.encode_json
    assert orjson.loads(encode(None, values)) == [str(v) for v in values]  # type: ignore[arg-type]
    assert orjson.loads(encode(None, moments)) == [_serialize_datetime(m) for m in moments]  # type: ignore[arg-type]


async def test_compiled_queries_get_python_enums_and_page_like_the_ordinary_path(api: Caller, ordinary: Caller) -> None:
    """Enum arguments reach resolvers as Python enum members on both paths (the cursor column
    depends on it), so pages and cursors are identical."""
    for i in range(5):
        conv = (await api.data(f'mutation {{ createConversation(input: {{sessionId: "o{i}"}}) {{ id }} }}'))[
            "createConversation"
        ]["id"]
        if i % 2:
            await api.data(
                'mutation($id: ID!) { addMessage(input: {conversationId: $id, role: USER, content: "x"}) { created } }',
                {"id": conv},
            )
    q = """query($after: String, $order: ConversationOrder) { conversations(first: 2, after: $after, orderBy: $order) {
             totalCount pageInfo { hasNextPage endCursor } edges { cursor node { sessionId } } } }"""
    for order in (None, "LAST_ACTIVITY_DESC", "CREATED_AT_DESC", "CREATED_AT_ASC"):
        after = None
        for _ in range(3):
            fast, slow = await _both(api, ordinary, q, {"after": after, "order": order})
            assert fast == slow and "errors" not in fast, (order, fast, slow)
            after = fast["data"]["conversations"]["pageInfo"]["endCursor"]


def test_enum_arguments_convert_to_python_members() -> None:
    from graphql import GraphQLList, GraphQLNonNull

    from app.api.domains.enums import ConversationOrder
    from app.api.engine.adapter import core_schema
    from app.api.engine.plans import converter
    from app.api.schema import schema

    # Members of the GraphQL enum's own class (declared in the API layer), as Strawberry gives them.
    order = core_schema(schema).get_type("ConversationOrder")
    convert = converter(schema, GraphQLNonNull(order))  # type: ignore[arg-type]
    assert convert("last_activity_desc") is ConversationOrder.LAST_ACTIVITY_DESC
    many = converter(schema, GraphQLList(order))
    assert many(["created_at_asc"]) == [ConversationOrder.CREATED_AT_ASC]
    assert converter(schema, core_schema(schema).get_type("Int")) is None  # type: ignore[arg-type]


async def _twice(api: Caller, ordinary: Caller, query: str, variables: dict[str, Any]) -> tuple[Any, Any]:
    """The same request through the engine, then through Strawberry and graphql-core."""
    return await api.gql(query, variables), await ordinary.gql(query, variables)


MUTATION_FAILURES = [
    (
        "mutation($i: AddMessageInput!) { addMessage(input: $i) { created } }",
        {"i": {"conversationId": "0b6d9a3e-4f53-4f0f-9c47-1d2f4a9e5c11", "role": "USER", "content": "x"}},
    ),
    (
        "mutation($i: AddMessageInput!) { addMessage(input: $i) { created } }",
        {"i": {"sessionId": "m", "role": "USER", "content": "x" * (256 * 1024 + 1)}},
    ),
    (
        "mutation($i: AddMessageInput!) { addMessage(input: $i) { created } }",
        {"i": {"sessionId": "m", "role": "TOOL", "content": "no call id"}},
    ),
    (
        "mutation($i: AddMessageInput!) { addMessage(input: $i) { created } }",
        {
            "i": {
                "sessionId": "m",
                "conversationId": "0b6d9a3e-4f53-4f0f-9c47-1d2f4a9e5c11",
                "role": "USER",
                "content": "x",
            }
        },
    ),
    (
        "mutation($i: AddMessageInput!) { addMessage(input: $i) { created } }",
        {"i": {"sessionId": "m", "role": "WIZARD", "content": "x"}},
    ),
    ("mutation($i: CreateConversationInput!) { createConversation(input: $i) { id } }", {"i": {"sessionId": "taken"}}),
    (
        "mutation($i: SetStateInput!) { setState(input: $i) { version } }",
        {"i": {"conversationId": "not-a-uuid", "key": "k", "value": 1}},
    ),
    (
        "mutation($i: UpdateConversationInput!) { updateConversation(input: $i) { id } }",
        {"i": {"id": "0b6d9a3e-4f53-4f0f-9c47-1d2f4a9e5c11", "tags": ["x"]}},
    ),
    ('mutation { closeSession(sessionId: "nobody") { id } }', {}),
    (
        "mutation($i: AddMessagesInput!) { addMessages(input: $i) { createdCount } }",
        {"i": {"sessionId": "m", "messages": []}},
    ),
]


@pytest.mark.parametrize(("query", "variables"), MUTATION_FAILURES)
async def test_failed_mutations_answer_the_same_compiled_or_not(
    api: Caller, ordinary: Caller, query: str, variables: dict[str, Any]
) -> None:
    await api.data('mutation { createConversation(input: {sessionId: "taken"}) { id } }')
    planned, reference = await _twice(api, ordinary, query, variables)
    assert planned == reference and planned.get("errors"), (planned, reference)


async def test_mutations_answer_the_same_compiled_or_not(api: Caller, ordinary: Caller) -> None:
    from app.api.documents import DocumentRegistry

    docs = DocumentRegistry.load()
    add = docs.by_name("ServiceAddMessage")
    batch = docs.by_name("ServiceAddMessages")
    update = docs.by_name("ServiceUpdateConversation")
    assert add and batch and update

    def plain(body: dict[str, Any]) -> Any:
        text = json.dumps(body, sort_keys=True)
        fields = r"id|createdAt|updatedAt|closedAt|conversationId|sessionId"
        return json.loads(re.sub(rf'"({fields})": "[^"]*"', r'"\1": "x"', text))

    def message(session: str) -> dict[str, Any]:
        return {
            "sessionId": session,
            "role": "ASSISTANT",
            "content": "",
            "toolCalls": TOOL_CALLS,
            "metadata": {"a": [1]},
            "sources": [{"documentId": "d", "score": 0.5}],
            "execution": {"model": "m", "latencyMs": 3},
            "clientMessageId": "c1",
        }

    first = await api.gql(add.text, {"input": message("d1")})  # compiled
    second = await ordinary.gql(add.text, {"input": message("d2")})  # through graphql-core
    assert "errors" not in first and plain(first) == plain(second)
    # A retry carries the same payload (another one would be IDEMPOTENCY_KEY_REUSED).
    again, ordinary_again = await _twice(api, ordinary, add.text, {"input": message("d1")})
    assert again == ordinary_again and again["data"]["addMessage"]["created"] is False
    conv = first["data"]["addMessage"]["conversation"]["id"]
    upd, upd2 = await _twice(api, ordinary, update.text, {"input": {"id": conv, "title": None, "tags": ["t"]}})
    assert plain(upd) == plain(upd2) and upd["data"]["updateConversation"]["title"] is None
