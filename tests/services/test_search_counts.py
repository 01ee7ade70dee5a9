"""Search and list counts (issue 11): capped counts, pages that stay right past the cap, the GIN-first plan."""

from __future__ import annotations

from typing import Any

from app.models import ConversationFilter
from app.services import conversations, search
from app.services.limits import Limits
from db.repositories import message_search as messages_repo
from db.session import Database
from tests.factories import add_message, create_conversation


async def _seed(db: Database, tenant: str) -> list[str]:
    a = await create_conversation(db, tenant, agent_id="sales")
    b = await create_conversation(db, tenant, agent_id="support")
    contents = []
    for i in range(7):
        conv = a if i % 2 else b
        text = f"refund number {i} please"
        await add_message(db, tenant, conv, content=text)
        contents.append(text)
    await add_message(db, tenant, a, content="nothing to see")
    return contents[::-1]  # newest first


async def _all_pages(db: Database, tenant: str, query: str, limits: Limits, **kw: Any) -> list[str]:
    seen: list[str] = []
    after = None
    async with db.read() as conn:
        while True:
            page = await search.search_messages(conn, tenant, query, first=2, after=after, limits=limits, **kw)
            seen += [m.content for m in page.items]
            if not page.has_next_page:
                return seen
            after = page.end_cursor


async def test_search_count_is_exact_under_the_cap_and_a_lower_bound_over_it(db: Database, tenant: str) -> None:
    newest_first = await _seed(db, tenant)
    async with db.read() as conn:
        exact = await search.search_messages(conn, tenant, "refund", first=2, limits=Limits(search_count_cap=7))
        assert (exact.total_count, exact.total_count_capped) == (7, False)
        capped = await search.search_messages(conn, tenant, "refund", first=2, limits=Limits(search_count_cap=3))
        assert (capped.total_count, capped.total_count_capped) == (3, True)
        filtered = await search.search_messages(
            conn, tenant, "refund", ConversationFilter(agent_id="support"), limits=Limits(search_count_cap=3)
        )
        # The filter applies before the cap: support has 4 matches.
        assert (filtered.total_count, filtered.total_count_capped) == (3, True)
        assert all("refund" in m.content for m in filtered.items) and len(filtered.items) == 4
    # Past the cap the page is read by the newest-first walk: paging still returns every match in order.
    assert await _all_pages(db, tenant, "refund", Limits(search_count_cap=3)) == newest_first
    assert await _all_pages(db, tenant, "refund", Limits(search_count_cap=100)) == newest_first
    assert await _all_pages(db, tenant, "absent", Limits(search_count_cap=3)) == []
    # A cap of 0: every probe overflows, so the newest-first walk reads the pages.
    assert await _all_pages(db, tenant, "refund", Limits(search_count_cap=0)) == newest_first
    async with db.read() as conn:
        walked = await search.search_messages(conn, tenant, "refund", first=2, limits=Limits(search_count_cap=0))
        assert (walked.total_count, walked.total_count_capped) == (0, True)
        hits = await search.search(conn, tenant, "refund", search.SearchMode.KEYWORD, limits=Limits(search_count_cap=0))
        assert hits.items == []  # the newest 0 matches are ranked


async def test_list_count_is_capped(db: Database, tenant: str) -> None:
    for _ in range(4):
        await create_conversation(db, tenant)
    async with db.read() as conn:
        exact = await conversations.list_(conn, tenant, first=1, limits=Limits(list_count_cap=4))
        assert (exact.total_count, exact.total_count_capped) == (4, False)
        capped = await conversations.list_(conn, tenant, first=1, limits=Limits(list_count_cap=2))
        assert (capped.total_count, capped.total_count_capped) == (2, True) and len(capped.items) == 1


async def test_the_walk_is_taken_only_where_matches_are_dense(db: Database, tenant: str, other_tenant: str) -> None:
    """Statistics are table-wide; the walk is used only when this tenant's newest messages hold
    more than cap matches within a bounded window (else a word common elsewhere would walk them all)."""
    await _seed(db, tenant)
    async with db.read() as conn:
        f = ConversationFilter()
        assert await messages_repo.dense_in_recent(conn, tenant, "refund", f, 3) is True
        assert await messages_repo.dense_in_recent(conn, tenant, "nothing", f, 3) is False
        assert await messages_repo.dense_in_recent(conn, other_tenant, "refund", f, 3) is False
        support = ConversationFilter(agent_id="support")
        assert await messages_repo.dense_in_recent(conn, tenant, "refund", support, 3) is True
        assert await messages_repo.dense_in_recent(conn, tenant, "refund", support, 4) is False
