"""history_page() (the page on Citus) returns exactly what the one-statement page returns.

The function exists on both engines (the same migrations), so this runs in the plain suite and on
`--cluster citus`; it compares the two forms row for row over pages that cut the history every way.
"""

from __future__ import annotations

import itertools
import uuid

from db.repositories import messages as repo
from db.session import Database
from tests.factories import add_message, create_conversation


async def test_the_function_and_the_statement_return_the_same_rows_for_every_page(db: Database, tenant: str) -> None:
    conversation = await create_conversation(db, tenant, session_id="pages")
    for i in range(7):
        await add_message(db, tenant, conversation, content=f"m{i}")
    empty = await create_conversation(db, tenant, session_id="empty")
    targets = [
        (repo._PAGE_BY_ID, repo.CITUS_PAGE_BY_ID, conversation.id),
        (repo._PAGE_BY_SESSION, repo.CITUS_PAGE_BY_SESSION, "pages"),
        (repo._PAGE_BY_ID, repo.CITUS_PAGE_BY_ID, empty.id),
        (repo._PAGE_BY_ID, repo.CITUS_PAGE_BY_ID, uuid.uuid4()),  # missing: no row from either
        (repo._PAGE_BY_SESSION, repo.CITUS_PAGE_BY_SESSION, "nobody"),
    ]
    compared = 0
    async with db.read() as conn:
        for (statement, function, target), forward, lower, upper_cap, size in itertools.product(
            targets, (True, False), (0, 2, 6, 9), (None, 1, 4, 8, 20), (1, 3, 50)
        ):
            args = (tenant, target, forward, lower, upper_cap, size)
            expected = [dict(r) for r in await conn.fetch(statement, *args)]
            got = [dict(r) for r in await conn.fetch(function, *args)]
            assert got == expected, args
            compared += len(expected)
        # Another tenant sees nothing of this tenant's conversation.
        assert await conn.fetch(repo.CITUS_PAGE_BY_ID, f"other-{tenant}", conversation.id, False, 0, None, 50) == []
    assert compared > 500  # the pages were not all empty
