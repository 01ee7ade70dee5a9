"""`search` KEYWORD mode (issue 11): ranked hits, snippets when asked, paging, errors, isolation."""

from __future__ import annotations

from typing import Any

from app.services import search
from app.services.limits import Limits
from db.session import Database
from tests.api.conftest import Caller
from tests.factories import add_message, create_conversation

SEARCH = """query($q: String!, $first: Int, $after: String, $mode: SearchMode) {
  search(query: $q, mode: $mode, first: $first, after: $after) {
    edges { cursor node { score snippet message { content seq } } }
    pageInfo { hasNextPage endCursor }
  }
}"""


async def _seed(db: Database, tenant: str) -> None:
    conv = await create_conversation(db, tenant)
    await add_message(db, tenant, conv, content="refund refund refund, I want my refund")
    await add_message(db, tenant, conv, content="the weather is nice; no refund talk here... well, one refund")
    await add_message(db, tenant, conv, content="a long story about shipping where refund appears once at the end")
    await add_message(db, tenant, conv, content="nothing to see")


async def test_keyword_search_ranks_pages_and_marks_snippets(api: Caller, other_api: Caller, db: Database) -> None:
    await _seed(db, api.tenant)
    data = await api.data(SEARCH, {"q": "refund", "mode": "KEYWORD", "first": 2})
    edges = data["search"]["edges"]
    scores = [e["node"]["score"] for e in edges]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    assert edges[0]["node"]["message"]["content"].startswith("refund refund refund")
    assert "**refund**" in edges[0]["node"]["snippet"]
    assert data["search"]["pageInfo"]["hasNextPage"] is True
    rest = await api.data(
        SEARCH, {"q": "refund", "mode": "KEYWORD", "first": 2, "after": data["search"]["pageInfo"]["endCursor"]}
    )
    assert len(rest["search"]["edges"]) == 1 and rest["search"]["pageInfo"]["hasNextPage"] is False
    seen = {e["node"]["message"]["seq"] for e in edges + rest["search"]["edges"]}
    assert seen == {1, 2, 3}
    # Another tenant finds nothing of this one's.
    other = await other_api.data(SEARCH, {"q": "refund", "mode": "KEYWORD"})
    assert other["search"]["edges"] == []


async def test_search_errors_say_what_is_wrong(api: Caller) -> None:
    assert await api.error_code(SEARCH, {"q": "  ", "mode": "KEYWORD"}) == "BAD_USER_INPUT"
    assert await api.error_code(SEARCH, {"q": "x", "mode": "KEYWORD", "after": "bm90LWEtY3Vyc29y"}) == "BAD_USER_INPUT"
    body = await api.gql(SEARCH, {"q": "x", "mode": "FUZZY"})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_snippets_only_when_asked_and_common_words_rank_the_newest(db: Database, tenant: str) -> None:
    await _seed(db, tenant)
    async with db.read() as conn:
        plain = await search.search(conn, tenant, "refund", search.SearchMode.KEYWORD, snippets=False)
        assert [h.snippet for h in plain.items] == [None, None, None]
        # Over the cap, the newest cap matches are ranked: the oldest (best) one drops out.
        capped = await search.search(
            conn, tenant, "refund", search.SearchMode.KEYWORD, limits=Limits(search_count_cap=2)
        )
        contents: list[Any] = [h.message.seq for h in capped.items]
        assert sorted(contents) == [2, 3]
