from __future__ import annotations

from tests.api.conftest import Caller


async def test_add_and_read_back(api: Caller) -> None:
    data = await api.data(
        """mutation($in: AddMessageInput!) { addMessage(input: $in) {
            created message { id seq role content tokenCount sources { documentId } execution { model } createdAt }
            conversation { id sessionId lastSeq messageCount } } }""",
        {
            "in": {
                "sessionId": "s1",
                "role": "USER",
                "content": "hola",
                "sources": [{"documentId": "d1"}],
                "execution": {"model": "gpt-4o"},
            }
        },
    )
    payload = data["addMessage"]
    assert payload["created"] and payload["message"]["seq"] == 1 and payload["message"]["role"] == "USER"
    assert payload["message"]["sources"] == [{"documentId": "d1"}]
    conv_id = payload["conversation"]["id"]
    data = await api.data(
        """query($id: ID!) { conversation(id: $id) { id sessionId messages(last: 5) { totalCount
             edges { cursor node { seq content sources { documentId } } } pageInfo { hasNextPage } } } }""",
        {"id": conv_id},
    )
    conv = data["conversation"]
    assert conv["sessionId"] == "s1" and conv["messages"]["totalCount"] == 1
    assert conv["messages"]["edges"][0]["node"]["sources"] == [{"documentId": "d1"}]
