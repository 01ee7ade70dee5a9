"""totalCount is computed only when the selection asks for it (issue 11)."""

from __future__ import annotations

from typing import Any

import pytest

from db.repositories import conversations as conversations_repo
from db.session import Database
from tests.api.conftest import Caller
from tests.factories import create_conversation

COUNT_QUERY = """query($f: Boolean!) { conversations(first: 1) { edges { node { id } } ...Totals @include(if: $f) } }
fragment Totals on ConversationConnection { totalCount totalCountCapped }"""


async def test_list_total_is_counted_only_when_selected(
    api: Caller, ordinary: Caller, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resolver's count, observed on the ordinary path: the engine's SQL pushdown answers
    # these lists in one statement, whose count subquery exists only when totalCount or
    # totalCountCapped is selected (tests/api/test_engine_pushdown.py holds it to the resolver).
    api = ordinary
    for _ in range(3):
        await create_conversation(db, api.tenant)
    calls: list[int] = []
    real = conversations_repo.count

    async def counting(*args: Any, **kw: Any) -> int:
        calls.append(1)
        return await real(*args, **kw)

    monkeypatch.setattr(conversations_repo, "count", counting)
    data = await api.data("{ conversations(first: 1) { edges { node { id } } pageInfo { hasNextPage } } }")
    assert len(data["conversations"]["edges"]) == 1 and calls == []
    data = await api.data(COUNT_QUERY, {"f": True})
    assert data["conversations"]["totalCount"] == 3 and data["conversations"]["totalCountCapped"] is False
    assert calls == [1]
    search_data = await api.data('{ searchMessages(query: "x") { totalCount totalCountCapped } }')
    assert search_data["searchMessages"] == {"totalCount": 0, "totalCountCapped": False}
