"""Per-tenant text-search configuration (issue 11): the `searchLanguage` setting, stemming per
tenant in both search fields, every write path indexing with it, isolation, refusal of other
values, and a plan that still finds matches through the GIN index."""

from __future__ import annotations

import json

import httpx

from app.services import bulk_import, transfer
from db.repositories import text_search
from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers
from tests.factories import add_message, create_conversation
from tests.services.test_transfer import _cli

UPDATE = """mutation($input: UpdateTenantSettingsInput!) { updateTenantSettings(input: $input) { searchLanguage } }"""
SETTINGS = "{ tenantSettings { searchLanguage } }"
SEARCH = """query($q: String!) {
  search(query: $q, mode: KEYWORD) { edges { node { snippet message { content } } } }
  searchMessages(query: $q) { totalCount edges { node { content } } }
}"""


async def _found(caller: Caller, q: str) -> tuple[list[str], list[str]]:
    data = await caller.data(SEARCH, {"q": q})
    return (
        [e["node"]["message"]["content"] for e in data["search"]["edges"]],
        [e["node"]["content"] for e in data["searchMessages"]["edges"]],
    )


async def test_a_spanish_tenant_finds_words_by_their_stem_and_others_do_not(
    db: Database, http: httpx.AsyncClient, tenant: str, other_tenant: str
) -> None:
    admin = await make_caller(db, http, tenant, "read,write,admin")
    other = await make_caller(db, http, other_tenant, "read,write,admin")
    assert (await admin.data(SETTINGS))["tenantSettings"]["searchLanguage"] == "simple"
    changed = await admin.data(UPDATE, {"input": {"searchLanguage": "spanish"}})
    assert changed["updateTenantSettings"]["searchLanguage"] == "spanish"
    for t in (tenant, other_tenant):  # the same content in a spanish and a simple tenant
        conv = await create_conversation(db, t)
        await add_message(db, t, conv, content="Esta canción me encanta")
    # The batched import writes with the tenant's configuration too.
    line = transfer.parse_line(
        {"conversation": {"session_id": "imp"}, "messages": [{"role": "user", "content": "Otra canción nueva"}]}
    )
    await db.run(lambda uow: bulk_import.import_batch(uow, tenant, [line]))

    ranked, listed = await _found(admin, "canciones")
    assert sorted(ranked) == sorted(listed) == ["Esta canción me encanta", "Otra canción nueva"]
    assert (await admin.data(SEARCH, {"q": "canciones"}))["searchMessages"]["totalCount"] == 2
    assert any(
        "**canción**" in e["node"]["snippet"] for e in (await admin.data(SEARCH, {"q": "canciones"}))["search"]["edges"]
    )
    # 'simple' does not stem: the other tenant holds the same words and finds only the exact one; and
    # neither tenant ever sees the other's messages.
    assert await _found(other, "canciones") == ([], [])
    assert await _found(other, "canción") == (["Esta canción me encanta"], ["Esta canción me encanta"])
    assert "Otra canción nueva" not in (await _found(other, "nueva"))[0]


async def test_an_english_tenant_finds_running_by_run_and_bad_languages_are_refused(
    db: Database, http: httpx.AsyncClient, tenant: str
) -> None:
    admin = await make_caller(db, http, tenant, "read,write,admin")
    await admin.data(UPDATE, {"input": {"searchLanguage": "english"}})
    conv = await create_conversation(db, tenant)
    await add_message(db, tenant, conv, content="I was running late")
    await add_message(db, tenant, conv, content="nothing here")
    async with db.read() as conn:  # a write path that leaves the column out gets it from the trigger
        await conn.execute(
            "INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count) "
            "VALUES ($1, $2, 99, gen_random_uuid(), 'user', 'she runs daily', 3)",
            tenant,
            conv.id,
        )
        stored = await conn.fetch("SELECT DISTINCT search_config::text AS c FROM messages WHERE tenant_id = $1", tenant)
    assert [r["c"] for r in stored] == ["english"]
    ranked, listed = await _found(admin, "run")
    assert sorted(ranked) == sorted(listed) == ["I was running late", "she runs daily"]

    refused = await admin.gql(UPDATE, {"input": {"searchLanguage": "klingon"}})
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "searchLanguage must be one of simple, english, spanish" in refused["errors"][0]["message"]
    assert (await admin.data(SETTINGS))["tenantSettings"]["searchLanguage"] == "english"  # unchanged
    back = await admin.data(UPDATE, {"input": {"searchLanguage": None}})
    assert back["updateTenantSettings"]["searchLanguage"] == "simple"


async def test_keyword_search_with_a_tenant_language_still_probes_the_gin_index(db: Database, tenant: str) -> None:
    async with db.read() as conn:
        await conn.execute(
            'INSERT INTO tenants (tenant_id, settings) VALUES ($1, \'{"search_language": "spanish"}\')', tenant
        )
    messages = [{"role": "user", "content": f"mensaje número {i} sobre el pedido"} for i in range(400)]
    messages[200]["content"] = "una sola de canciones"
    line = transfer.parse_line({"conversation": {"session_id": "many"}, "messages": messages})
    await db.run(lambda uow: bulk_import.import_batch(uow, tenant, [line]))
    match = text_search.match("spanish", "$2")
    async with db.read() as conn:
        await conn.execute("ANALYZE messages")
        # The probe of db/repositories/messages.search: a rare word is found through the GIN index,
        # which holds to_tsvector(search_config, content) for every configuration.
        plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) SELECT m.conversation_id, m.seq FROM messages m WHERE m.tenant_id = $1 AND {match}",
            tenant,
            "canciones",
        )
        found = await conn.fetchval(
            f"SELECT count(*) FROM messages m WHERE m.tenant_id = $1 AND {match}", tenant, "canciones"
        )
    text = json.dumps(plan)
    assert "ix_messages_search" in text and "Bitmap Index Scan" in text, text
    assert found == 1


async def test_a_language_change_applies_to_stored_messages_after_reindex_search(
    servers: Servers, db: Database, http: httpx.AsyncClient, tenant: str, other_tenant: str
) -> None:
    admin = await make_caller(db, http, tenant, "read,write,admin")
    other = await make_caller(db, http, other_tenant, "read,write,admin")
    for t in (tenant, other_tenant):
        conv = await create_conversation(db, t)
        for content in ("they kept running", "jumps and walks", "plain words", "he runs"):
            await add_message(db, t, conv, content=content)
    await admin.data(UPDATE, {"input": {"searchLanguage": "english"}})
    # Stored messages keep 'simple' until re-indexed: only the query is stemmed ('run').
    assert await _found(admin, "running") == ([], [])

    first = _cli(servers, "tenant", "reindex-search", tenant, "--batch", "3", "--progress")
    assert first.returncode == 0, first.stderr
    assert f"re-indexed tenant {tenant} with 'english': 4 messages passed, 4 changed" in first.stderr
    ranked, listed = await _found(admin, "running")
    assert sorted(ranked) == sorted(listed) == ["he runs", "they kept running"]
    again = _cli(servers, "tenant", "reindex-search", tenant)
    assert again.returncode == 0 and "4 messages passed, 0 changed" in again.stderr
    # The other tenant was not touched.
    assert await _found(other, "running") == (["they kept running"], ["they kept running"])
    configs = {}
    async with db.read() as conn:
        for t in (tenant, other_tenant):  # one tenant per statement: single-shard on Citus too
            configs[t] = await conn.fetchval(
                "SELECT array_agg(DISTINCT search_config::text) FROM messages WHERE tenant_id = $1", t
            )
    assert configs == {tenant: ["english"], other_tenant: ["simple"]}
