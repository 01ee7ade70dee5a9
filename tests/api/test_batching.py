"""Nested fields are batched: a page of 50 conversations with their last 3 messages and those
messages' sources costs a bounded number of statements, not one per row."""

from __future__ import annotations

from app.api.documents import DocumentRegistry
from db.session import STATEMENTS
from tests.api.conftest import Caller


async def test_a_conversation_page_with_last_messages_and_sources_is_four_statements(api: Caller) -> None:
    for i in range(50):
        conv = await api.data(f'mutation {{ createConversation(input: {{sessionId: "s{i}", agentId: "a"}}) {{ id }} }}')
        cid = conv["createConversation"]["id"]
        for j in range(4):
            await api.data(
                """mutation($in: AddMessageInput!) { addMessage(input: $in) { created } }""",
                {
                    "in": {
                        "conversationId": cid,
                        "role": "ASSISTANT",
                        "content": f"answer {j}",
                        "sources": [{"documentId": f"d{j}"}, {"documentId": "shared"}],
                    }
                },
            )
        await api.data(
            f'mutation {{ setState(input: {{conversationId: "{cid}", key: "k", value: {i}}}) {{ version }} }}'
        )
    document = DocumentRegistry.load().by_name("CrmConversations")
    assert document is not None
    # Once first, for the steady state: the key lookup cached, asyncpg's one-time type
    # introspection of the array parameters done.
    await api.data(document.text, {"first": 50, "lastMessages": 3})
    before = STATEMENTS.count
    data = await api.data(document.text, {"first": 50, "lastMessages": 3})
    used = STATEMENTS.count - before
    edges = data["conversations"]["edges"]
    assert len(edges) == 50 and data["conversations"]["totalCount"] == 50
    for edge in edges:
        messages = edge["node"]["messages"]["edges"]
        assert [m["node"]["content"] for m in messages] == ["answer 1", "answer 2", "answer 3"]
        assert [s["documentId"] for s in messages[0]["node"]["sources"]] == ["d1", "shared"]
    # page + count, last messages of all 50 (one statement), their sources (one statement)
    assert used <= 4, f"{used} statements for one page"

    query = '{ conversations(first: 50) { edges { node { states { key value } state(key: "k") { value } } } } }'
    await api.data(query)
    before = STATEMENTS.count
    states = await api.data(query)
    assert len(states["conversations"]["edges"]) == 50
    assert STATEMENTS.count - before <= 3
