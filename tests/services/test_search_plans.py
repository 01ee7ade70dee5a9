"""Search statements keep plans made for the query's words however often one connection runs them.

asyncpg prepares every statement; from the sixth execution Postgres may reuse a generic plan made
without the values. For the GIN probe of a rare word on a freshly loaded table that plan was a
sequential scan running to_tsvector on every message (the shapes bench's "search (rare word)":
5 ms became 170 ms, docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from app.models import ConversationFilter
from app.services import search
from db.session import Connection, Database, create_pool, custom_plans, on_citus
from tests import citus_cluster
from tests.conftest import Servers
from tests.factories import create_conversation

#: Past the five custom plans after which Postgres starts weighing a generic one.
RUNS = 8
MESSAGES = 5000
RARE = "number 4242"


@asynccontextmanager
async def _messages_loaded(servers: Servers, tenant: str, insert: str, *args: object) -> AsyncIterator[Connection]:
    """A connection of its own (its statements start with no plan history) once `insert` has loaded
    the tenant's messages and ANALYZE has run, not VACUUM: the bulk insert's entries wait in the GIN
    index's pending list, the state right after a load. The rows and the pending list go afterwards:
    other tests' plans must not see them."""
    pool = await create_pool(servers.database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute(insert, *args)
            await conn.execute("ANALYZE messages")
            try:
                yield conn
            finally:
                await conn.execute("DELETE FROM messages WHERE tenant_id = $1", tenant)
                await conn.execute("SELECT gin_clean_pending_list('ix_messages_search')")
                await conn.execute("ANALYZE messages")
    finally:
        await pool.close()


@asynccontextmanager
async def _loaded(db: Database, servers: Servers, tenant: str) -> AsyncIterator[Connection]:
    """The shapes bench's history: every message says "number", one of them "4242" (the planner counts
    the pending list against the index: the state in which the generic plan is a sequential scan)."""
    conversation = await create_conversation(db, tenant)
    async with _messages_loaded(
        servers,
        tenant,
        """INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count, created_at)
           SELECT $1, $2, g, gen_random_uuid(), 'user',
                  'message number ' || g || ': ' || repeat('lorem ipsum dolor sit amet ', 6), 50,
                  now() - ($3 - g) * interval '1 second'
           FROM generate_series(1, $3::int) g""",
        tenant,
        conversation.id,
        MESSAGES,
    ) as conn:
        yield conn


def _plain_postgres_only() -> None:
    if citus_cluster.current_cluster() is not None:
        # db.session.custom_plans: the coordinator fills the parameters in before routing, so the
        # workers plan every shard query with the words as constants; the plan cache here is Citus'.
        pytest.skip("on Citus the workers plan each routed statement with its values")


def _rare_hit(contents: list[str]) -> bool:
    return len(contents) == 1 and contents[0].startswith("message number 4242:")


async def test_search_statements_never_run_a_generic_plan(db: Database, servers: Servers, tenant: str) -> None:
    _plain_postgres_only()
    async with _loaded(db, servers, tenant) as conn:
        for _ in range(RUNS):
            page = await search.search_messages(conn, tenant, RARE)
            assert _rare_hit([m.content for m in page.items]) and page.total_count == 1
            hits = await search.search(conn, tenant, RARE, search.SearchMode.KEYWORD)
            assert _rare_hit([h.message.content for h in hits.items])
        plans = await conn.fetch(
            """SELECT generic_plans, custom_plans, statement FROM pg_prepared_statements
               WHERE statement LIKE '%websearch_to_tsquery%' AND statement NOT LIKE '%EXPLAIN%'"""
        )
        # The probe (searchMessages) and the candidates (search, KEYWORD), each run RUNS times here.
        assert len(plans) >= 2 and all(p["custom_plans"] >= RUNS for p in plans)
        assert [p["statement"] for p in plans if p["generic_plans"]] == []
        # The connection goes back to the pool as it came: no transaction, the default plan choice.
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


async def test_a_rare_word_is_found_through_the_index_on_every_execution(
    db: Database, servers: Servers, tenant: str
) -> None:
    """Messages read by sequential scan, counted by this backend for its transaction: none, on the
    sixth execution as on the first (the generic plan read all MESSAGES each time)."""
    _plain_postgres_only()
    async with _loaded(db, servers, tenant) as conn, conn.transaction():
        for _ in range(RUNS):
            page = await search.search_messages(conn, tenant, RARE)
            assert page.total_count == 1
        scans = await conn.fetchval("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'messages'")
        assert scans == 0


async def test_custom_plans_leaves_the_connection_clean_after_a_failure(db: Database) -> None:
    if on_citus():
        async with db.read() as conn, custom_plans(conn):  # a no-op there: no transaction block
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
        return
    async with db.read() as conn:
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with custom_plans(conn):
                assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
                await conn.fetchval("SELECT 1 / 0")
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
        async with conn.transaction():
            async with custom_plans(conn):
                assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
            assert conn.is_in_transaction()  # the caller's transaction is the caller's to end
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


MEDIUM = "refunded"


async def test_a_medium_word_is_paged_from_its_matches_without_walking_the_tenant(
    db: Database, servers: Servers, tenant: str
) -> None:
    """A word in 4 % of the tenant's messages (200 of 5,000: past the count cap, far from common):
    every match is read through the GIN index and the pages are sorted from them, so the newest-first
    walk (the created_at index, testing every message it passes) never runs; the pages are the
    matches newest first, as brute force orders them, and the count says "more than the cap"."""
    _plain_postgres_only()
    conversation = await create_conversation(db, tenant)
    async with (
        _messages_loaded(
            servers,
            tenant,
            """INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count, created_at)
           SELECT $1, $2, g, gen_random_uuid(), 'user',
                  'message ' || g || CASE WHEN g % 25 = 0 THEN ' was refunded' ELSE ' was answered' END, 5,
                  now() - ($3 - g) * interval '1 second'
           FROM generate_series(1, $3::int) g""",
            tenant,
            conversation.id,
            MESSAGES,
        ) as conn,
        conn.transaction(),
    ):
        first = await search.search_messages(conn, tenant, MEDIUM)
        second = await search.search_messages(conn, tenant, MEDIUM, after=first.end_cursor)
        # Rows this transaction read from messages through indexes (bitmap reads included).
        fetched = await conn.fetchval("SELECT idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'messages'")
    expected = [f"message {g} was refunded" for g in range(MESSAGES, 0, -1) if g % 25 == 0]
    assert [m.content for m in first.items + second.items] == expected[:40]
    assert first.total_count == 100 and first.total_count_capped and first.has_next_page
    # Each search: its 200 matches and its page's 20 rows (~440); walking read 1,321 here.
    assert fetched < 600, fetched


async def test_every_path_pages_like_brute_force_at_every_density(db: Database, servers: Servers, tenant: str) -> None:
    """Words from 0.2 % to 60 % of a tenant's 3,000 messages (the GIN probe, the probe read whole,
    the probe then the walk, the density check and the walk), with a conversation filter and
    without: paging to the end gives every match once, newest first, as brute force orders them, and
    the count is exact up to the cap. (Plain Postgres: on Citus the bulk INSERT … SELECT of the setup is
    itself a split statement; the API suites cover the same paths there.)"""
    _plain_postgres_only()
    shares = {"amber": 500, "cobalt": 50, "denim": 14, "ember": 5, "flax": 5 / 3}  # one message in n
    other = await create_conversation(db, tenant, agent_id="support")
    conversation = await create_conversation(db, tenant, agent_id="sales")
    async with _messages_loaded(
        servers,
        tenant,
        """INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count, created_at)
           SELECT $1, CASE WHEN g % 3 = 0 THEN $4::uuid ELSE $2::uuid END, g, gen_random_uuid(), 'user',
                  'message ' || g || ' ' || coalesce((SELECT string_agg(w, ' ') FROM jsonb_each_text($5::jsonb) AS s(w, n)
                                            WHERE g % n::numeric < 1), ''), 5,
                  now() - ($3 - g) * interval '1 second'
           FROM generate_series(1, $3::int) g""",
        tenant,
        conversation.id,
        3000,
        other.id,
        {w: str(n) for w, n in shares.items()},
    ) as conn:
        rows = await conn.fetch(
            "SELECT conversation_id, content FROM messages WHERE tenant_id = $1 ORDER BY created_at DESC", tenant
        )
        for word in shares:
            for only in (None, "sales"):
                expected = [
                    r["content"]
                    for r in rows
                    if word in r["content"].split() and (only is None or r["conversation_id"] == conversation.id)
                ]
                f = ConversationFilter(agent_id=only) if only else None
                seen: list[str] = []
                after = None
                while True:
                    page = await search.search_messages(conn, tenant, word, f, first=50, after=after)
                    if after is None:
                        assert page.total_count == min(len(expected), 100), (word, only)
                        assert page.total_count_capped == (len(expected) > 100), (word, only)
                    seen += [m.content for m in page.items]
                    if not page.has_next_page:
                        break
                    after = page.end_cursor
                assert seen == expected, (word, only, len(seen), len(expected))
