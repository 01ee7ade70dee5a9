"""`search` SEMANTIC and HYBRID over GraphQL (issue 14.2): k-NN by meaning, rank fusion with
snippets, paging, filters, tenant isolation, the disabled embedder, deletion, and recall@10 on a
labelled set (HYBRID beats KEYWORD)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.services import embedder as embedders
from app.services import embeddings
from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.factories import add_message, create_conversation
from tests.search.labelled import DISTRACTORS, PAIRS

SEARCH = """query($q: String!, $mode: SearchMode, $first: Int, $after: String, $filter: ConversationFilter) {
  search(query: $q, mode: $mode, first: $first, after: $after, filter: $filter) {
    edges { cursor node { score snippet message { content seq conversationId } } }
    pageInfo { hasNextPage endCursor }
  }
}"""


@pytest.fixture
def local_embedder() -> Iterator[embedders.Embedder]:
    previous = embedders.configured()
    embedder = embedders.LocalEmbedder()
    embedders.configure(embedder)
    yield embedder
    embedders.configure(previous)


async def _seed_labelled(db: Database, tenant: str, embedder: embedders.Embedder) -> None:
    texts = [a for a, _ in PAIRS] + DISTRACTORS
    for i in range(0, len(texts), 11):  # a few conversations, several messages each
        conv = await create_conversation(db, tenant, user_id=f"u{i // 11}", tags=["even"] if i % 2 == 0 else ["odd"])
        for text in texts[i : i + 11]:
            await add_message(db, tenant, conv, content=text)
    stored = await embeddings.backfill(db, embedder, tenant_id=tenant)
    assert stored == len(texts)


async def _contents(api: Caller, q: str, mode: str, first: int = 10, **more: Any) -> list[str]:
    data = await api.data(SEARCH, {"q": q, "mode": mode, "first": first, **more})
    return [e["node"]["message"]["content"] for e in data["search"]["edges"]]


async def test_hybrid_recall_at_10_beats_keyword(api: Caller, db: Database, local_embedder: embedders.Embedder) -> None:
    await _seed_labelled(db, api.tenant, local_embedder)
    recall: dict[str, float] = {}
    for mode in ("KEYWORD", "SEMANTIC", "HYBRID"):
        found = 0
        for answer, question in PAIRS:
            found += answer in await _contents(api, question, mode)
        recall[mode] = found / len(PAIRS)
    print(f"recall@10 on {len(PAIRS)} questions over {len(PAIRS) + len(DISTRACTORS)} messages: {recall}")
    assert recall["HYBRID"] > recall["KEYWORD"]
    assert recall["HYBRID"] >= 0.8


async def test_semantic_and_hybrid_find_by_meaning_with_snippets_for_words(
    api: Caller, other_api: Caller, db: Database, local_embedder: embedders.Embedder
) -> None:
    await _seed_labelled(db, api.tenant, local_embedder)
    top = await _contents(api, "how can I reset my login credentials", "SEMANTIC", 3)
    assert any(t.startswith("To change your password") for t in top)
    assert await _contents(api, "how can I reset my login credentials", "KEYWORD") == []
    data = await api.data(SEARCH, {"q": "refunded card", "mode": "HYBRID", "first": 5})
    nodes = [e["node"] for e in data["search"]["edges"]]
    assert nodes[0]["message"]["content"].startswith("We refunded the full amount")
    assert "**refunded**" in nodes[0]["snippet"]  # a keyword match: marked
    assert all(n["snippet"] is None for n in nodes[1:])  # found by meaning only: no words to mark
    scores = [n["score"] for n in nodes]
    assert scores == sorted(scores, reverse=True)
    # Another tenant (with messages and vectors of its own) finds nothing of this one's.
    conv = await create_conversation(db, other_api.tenant)
    await add_message(db, other_api.tenant, conv, content="an unrelated note about gardening")
    await embeddings.backfill(db, local_embedder, tenant_id=other_api.tenant)
    for mode in ("SEMANTIC", "HYBRID"):
        assert await _contents(other_api, "how can I reset my login credentials", mode) == [
            "an unrelated note about gardening"
        ]


async def test_pages_walk_the_ranking_without_repeats(
    api: Caller, db: Database, local_embedder: embedders.Embedder
) -> None:
    await _seed_labelled(db, api.tenant, local_embedder)
    for mode in ("SEMANTIC", "HYBRID"):
        whole = await _contents(api, "where is my delivery", mode, 30)
        walked: list[str] = []
        after = None
        while True:
            data = await api.data(SEARCH, {"q": "where is my delivery", "mode": mode, "first": 7, "after": after})
            walked += [e["node"]["message"]["content"] for e in data["search"]["edges"]]
            if not data["search"]["pageInfo"]["hasNextPage"]:
                break
            after = data["search"]["pageInfo"]["endCursor"]
        assert walked[:30] == whole and len(walked) == len(set(walked)) == len(PAIRS) + len(DISTRACTORS)


async def test_filters_apply_as_in_lists(api: Caller, db: Database, local_embedder: embedders.Embedder) -> None:
    await _seed_labelled(db, api.tenant, local_embedder)
    texts = [a for a, _ in PAIRS] + DISTRACTORS
    for mode in ("SEMANTIC", "HYBRID"):
        got = await _contents(api, "password", mode, 50, filter={"userId": "u1"})
        assert sorted(got) == sorted(texts[11:22])
        tagged = await _contents(api, "password", mode, 50, filter={"tags": ["odd"]})
        assert sorted(tagged) == sorted(texts[11:22] + texts[33:])  # the 2nd and 4th conversations


async def test_without_an_embedder_semantic_and_hybrid_say_so(api: Caller, db: Database) -> None:
    previous = embedders.configured()
    embedders.configure(None)
    try:
        for mode in ("SEMANTIC", "HYBRID"):
            body = await api.gql(SEARCH, {"q": "refund", "mode": mode})
            error = body["errors"][0]
            assert error["extensions"]["code"] == "BAD_USER_INPUT"
            assert "needs an embedder" in error["message"] and "KEYWORD" in error["message"]
        assert "errors" not in await api.gql(SEARCH, {"q": "refund", "mode": "KEYWORD"})
    finally:
        embedders.configure(previous)


async def test_deleting_a_conversation_deletes_its_vectors(
    api: Caller, db: Database, local_embedder: embedders.Embedder
) -> None:
    admin = await make_caller(db, api.http, api.tenant, "read,write,admin")
    conv = await create_conversation(db, api.tenant)
    await add_message(db, api.tenant, conv, content="a secret that must go")
    await embeddings.backfill(db, local_embedder, tenant_id=api.tenant)
    async with db.read() as conn:
        assert await conn.fetchval("SELECT count(*) FROM message_embeddings WHERE tenant_id = $1", api.tenant) == 1
    await admin.data("mutation($id: ID!) { deleteConversation(id: $id) { messages } }", {"id": str(conv.id)})
    async with db.read() as conn:
        assert await conn.fetchval("SELECT count(*) FROM message_embeddings WHERE tenant_id = $1", api.tenant) == 0
    assert await _contents(api, "a secret", "SEMANTIC") == []
    # Embedding a deleted conversation later (a late job) writes nothing.
    assert await embeddings.embed_conversation(db, local_embedder, api.tenant, conv.id, 16) == 0


async def test_backfill_is_idempotent_and_a_new_model_reembeds(
    api: Caller, db: Database, local_embedder: embedders.Embedder
) -> None:
    conv = await create_conversation(db, api.tenant)
    for i in range(5):
        await add_message(db, api.tenant, conv, content=f"message number {i}")
    seen: list[embeddings.Progress] = []
    assert await embeddings.backfill(db, local_embedder, tenant_id=api.tenant, batch=2, on_progress=seen.append) == 5
    assert seen[-1].embedded == seen[-1].total == 5
    assert await embeddings.backfill(db, local_embedder, tenant_id=api.tenant) == 0
