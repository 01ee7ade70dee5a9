"""The engine's SQL pushdown (app/api/engine/pushdown.py): `conversations` and `history` subtrees
answered by one JSON-building statement must answer exactly what Strawberry's ordinary path
answers (GRAPHQL_ENGINE=false) — timestamps with and without microseconds, enums, JSON,
aliases, fragments, empty nested pages, cursors given as arguments, errors — and shapes it does
not cover must still be answered (by the level-by-level plan)."""

from __future__ import annotations

import dataclasses
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from db.session import Database
from tests.api.conftest import Caller
from tests.api.test_engine_corpus import _unplanned

CRM = """query($f: ConversationFilter, $n: Int, $m: Int) {
  conversations(filter: $f, first: $n) { __typename edges { node { id sessionId userId agentId channel title
    status tags metadata createdAt updatedAt lastMessageAt closedAt closeReason messageCount tokenCount lastSeq
    messages(last: $m) { edges { node { id conversationId seq role content name toolCallId toolCalls
      clientMessageId tokenCount metadata createdAt __typename } } } } } } }"""

ALIASED = """query List($filter: ConversationFilter, $n: Int!, $m: Int!) {
  page: conversations(filter: $filter, first: $n, orderBy: CREATED_AT_ASC) { rows: edges { t: __typename
    c: node { ...Head recent: messages(first: $m) { edges { node { ...Line } } }
      older: messages(last: 1, before: "%s") { edges { node { seq } } } } } }
  again: conversations(first: 1) { edges { node { key: id } } } }
fragment Head on Conversation { key: id sessionId agent: agentId status createdAt }
fragment Line on Message { id seq who: role text: content createdAt sources { documentId uri score } }"""

TRANSCRIPT = """query($c: ID, $s: String, $after: Int) { history(conversationId: $c, sessionId: $s, afterSeq: $after,
  first: 50) { edges { node { id seq role content metadata createdAt sources { documentId chunkId title uri score
  snippet } } } } }"""


PAGED = """query($f: ConversationFilter, $n: Int, $after: String, $o: ConversationOrder) {
  conversations(filter: $f, first: $n, after: $after, orderBy: $o) { totalCount totalCountCapped
    pageInfo { __typename hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { id createdAt } } } }"""

HISTORY = """query($c: ID, $s: String, $first: Int, $after: String, $last: Int, $before: String, $afterSeq: Int) {
  history(conversationId: $c, sessionId: $s, first: $first, after: $after, last: $last, before: $before,
    afterSeq: $afterSeq) { total: totalCount totalCountCapped
    info: pageInfo { hasNextPage hasPreviousPage startCursor endCursor } edges { c: cursor node { seq } } } }"""

DETAIL = """query($c: ID, $s: String, $m: Int) { conversation(id: $c, sessionId: $s) { __typename id title status
  messageCount lastSeq tags metadata createdAt closedAt
  recent: messages(last: $m) { totalCount pageInfo { hasPreviousPage startCursor } edges { cursor node { seq role } } }
  all: messages { edges { node { id } } } } }"""

LAST = (Path(__file__).parents[2] / "graphql" / "AgentLastMessages.graphql").read_text()


def _pushed(text: str) -> bool:
    # json_build_object writes `"key" : value`; orjson never puts spaces: the answer's bytes
    # tell which path built it.
    return '" : ' in text


async def _both(api: Caller, ordinary: Caller, query: str, variables: dict[str, Any]) -> tuple[Any, Any, bool]:
    r = await api.http.post("/graphql", json={"query": query, "variables": variables}, headers=api.headers)
    assert r.status_code == 200, r.text
    return r.json(), await ordinary.gql(query, variables), _pushed(r.text)


async def _seed(api: Caller, db: Database, app: Starlette) -> list[str]:
    ids = []
    for i in range(3):
        created = await api.data(
            "mutation($i: CreateConversationInput!) { createConversation(input: $i) { id } }",
            {"i": {"sessionId": f"p{i}", "agentId": "a1", "tags": ["x", f"t{i}"], "metadata": {"z": [1, 2.5], "a": i}}},
        )
        ids.append(created["createConversation"]["id"])
    messages = [
        {"role": "SYSTEM", "content": "be brief"},
        {"role": "USER", "content": 'ñ "quoted"\n\ttab \u0001', "name": "ana", "metadata": {"b": {"c": None}}},
        {
            "role": "ASSISTANT",
            "content": "",
            "toolCalls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            "sources": [{"documentId": "d1", "chunkId": "k", "title": "T", "uri": "u", "score": 0.1, "snippet": "s"}],
        },
        {"role": "TOOL", "content": "42", "toolCallId": "c1", "clientMessageId": "cm-1"},
    ]
    for cid in ids[:2]:  # the third has no messages: empty nested pages
        await api.data(
            "mutation($i: AddMessagesInput!) { addMessages(input: $i) { createdCount } }",
            {"i": {"conversationId": cid, "messages": messages}},
        )
    await api.data('mutation($id: ID!) { closeSession(conversationId: $id, reason: "done") { id } }', {"id": ids[1]})
    async with db.read() as conn:
        # Whole-second instants: isoformat() drops the microseconds then, and so must the SQL.
        # (Computed here: Citus refuses STABLE functions over columns in an UPDATE.)
        rows = await conn.fetch(
            "SELECT conversation_id, seq, created_at FROM messages WHERE tenant_id = $1 AND seq <= 2", api.tenant
        )
        for r in rows:
            await conn.execute(
                "UPDATE messages SET created_at = $4 WHERE tenant_id = $1 AND conversation_id = $2 AND seq = $3",
                api.tenant,
                r["conversation_id"],
                r["seq"],
                r["created_at"].replace(microsecond=0),
            )
        first = await conn.fetchrow(
            "SELECT id, created_at FROM conversations WHERE tenant_id = $1 AND session_id = 'p0'", api.tenant
        )
        assert first is not None
        await conn.execute(
            "UPDATE conversations SET created_at = $3 WHERE tenant_id = $1 AND id = $2",
            api.tenant,
            first["id"],
            first["created_at"].replace(microsecond=0),
        )
    # Changed behind the service's back: drop the hot-cache entries (Redis or Redis Cluster),
    # which still hold the old instants (the ordinary path reads recent pages from them).
    for cid in ids:
        await app.state.resources.cache.evict(api.tenant, uuid.UUID(cid))
    return ids


async def test_crm_lists_and_transcripts_are_pushed_down_and_equal_the_ordinary_path(
    api: Caller, ordinary: Caller, db: Database, app: Starlette
) -> None:
    ids = await _seed(api, db, app)
    cursor = (await api.data(f'{{ history(conversationId: "{ids[0]}", last: 1) {{ pageInfo {{ startCursor }} }} }}'))[
        "history"
    ]["pageInfo"]["startCursor"]
    cases: list[tuple[str, dict[str, Any]]] = [
        (CRM, {"f": {"agentId": "a1"}, "n": 20, "m": 3}),
        (CRM, {"f": {"tags": ["t1"], "status": "CLOSED"}, "n": 5, "m": 100}),
        (CRM, {"f": {"metadata": {"a": 0}}, "n": 1, "m": 0}),
        (CRM, {"f": {"agentId": "nobody"}, "n": 20, "m": 3}),  # an empty list
        (CRM, {"f": None, "n": 0, "m": 3}),
        (ALIASED % cursor, {"filter": {"agentId": "a1"}, "n": 3, "m": 2}),
        (TRANSCRIPT, {"c": ids[0], "after": 1}),
        (TRANSCRIPT, {"s": "p1", "after": 0}),
        (TRANSCRIPT, {"c": ids[2], "after": 0}),  # no messages
    ]
    for query, variables in cases:
        planned, reference, pushed = await _both(api, ordinary, query, variables)
        assert "errors" not in planned, planned
        assert planned == reference, (query, variables)
        assert pushed, (query, variables)
    # Microseconds: whole seconds print none, others six digits, exactly as isoformat() does.
    transcript = (await api.data(TRANSCRIPT, {"c": ids[0], "after": 0}))["history"]["edges"]
    stamps = [e["node"]["createdAt"] for e in transcript]
    assert "." not in stamps[0] and "." not in stamps[1] and stamps[0].endswith("+00:00"), stamps
    assert len(stamps[3].split(".")[1]) == len("123456+00:00"), stamps
    assert transcript[2]["node"]["sources"][0]["score"] == 0.1


async def _same(api: Caller, ordinary: Caller, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    planned, reference, pushed = await _both(api, ordinary, query, variables)
    assert "errors" not in planned, (query, variables, planned)
    assert planned == reference, (query, variables)
    assert pushed, (query, variables)
    data: dict[str, Any] = planned["data"]
    return data


async def test_counts_page_info_cursors_and_the_conversation_root_are_pushed_down(
    api: Caller, ordinary: Caller, db: Database, app: Starlette, ordinary_app: Starlette
) -> None:
    ids = await _seed(api, db, app)
    # Every page of the list in every order, each cursor the next request's `after` (edge
    # cursors too): flags, counts and cursors equal the resolvers' all the way.
    for order in ("LAST_ACTIVITY_DESC", "CREATED_AT_DESC", "CREATED_AT_ASC"):
        seen: list[str] = []
        after = None
        while True:
            data = await _same(api, ordinary, PAGED, {"n": 1, "after": after, "o": order})
            page = data["conversations"]
            assert page["totalCount"] == 3 and page["totalCountCapped"] is False
            seen += [e["node"]["id"] for e in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert sorted(seen) == sorted(ids), order
        data = await _same(api, ordinary, PAGED, {"n": 2, "o": order})
        edge_cursor = data["conversations"]["edges"][0]["cursor"]
        await _same(api, ordinary, PAGED, {"n": 5, "after": edge_cursor, "o": order})
    await _same(api, ordinary, PAGED, {"n": 0})  # an empty page: no cursors, no next page
    await _same(api, ordinary, PAGED, {"f": {"agentId": "nobody"}, "n": 3})
    # History: walk back from the newest with `before: startCursor`, forward with `after: endCursor`.
    before = None
    while True:
        data = await _same(api, ordinary, HISTORY, {"c": ids[0], "last": 1, "before": before})
        if not data["history"]["info"]["hasPreviousPage"]:
            break
        before = data["history"]["info"]["startCursor"]
    assert data["history"]["edges"][0]["node"]["seq"] == 1
    after = None
    while True:
        data = await _same(api, ordinary, HISTORY, {"s": "p1", "first": 3, "after": after, "afterSeq": 1})
        assert data["history"]["total"] == 3
        if not data["history"]["info"]["hasNextPage"]:
            break
        after = data["history"]["edges"][-1]["c"]
    for variables in (
        {"c": ids[0], "last": 0},
        {"c": ids[0], "first": 0},
        {"c": ids[0], "first": 2, "afterSeq": 4},  # past the newest: empty
        {"c": ids[0], "first": 2, "afterSeq": 9},
        {"c": ids[0], "last": 2, "afterSeq": 3},
        {"c": ids[0], "last": 2, "before": before},  # before the first: empty
        {"c": ids[0]},  # neither: the last 50
        {"c": ids[2], "last": 5},  # no messages
        {"c": ids[2], "first": 5, "afterSeq": 0},
    ):
        await _same(api, ordinary, HISTORY, variables)
    for last in (10, 2, 50):
        await _same(api, ordinary, LAST, {"conversationId": ids[1], "last": last})
    await _same(api, ordinary, LAST, {"sessionId": "p2"})
    # The conversation root: counters, nested pages, by id or sessionId, null when not found.
    for variables in ({"c": ids[0], "m": 2}, {"s": "p1", "m": 0}, {"s": "p2", "m": 3}, {"c": ids[1]}):
        data = await _same(api, ordinary, DETAIL, variables)
    assert data["conversation"]["lastSeq"] == 4 and len(data["conversation"]["recent"]["edges"]) == 4
    # Not found is null, even with nested page arguments its resolver would refuse (it never
    # runs without a parent): answered here, not by the fallback.
    for variables in ({"c": str(uuid.uuid4())}, {"s": "nobody"}, {"s": "nobody", "m": 500}):
        unplanned = _unplanned()
        planned, reference, _ = await _both(api, ordinary, DETAIL, variables)
        assert planned == reference == {"data": {"conversation": None}}
        assert _unplanned() == unplanned, variables
    # The count stops at LIST_COUNT_CAP as the resolver's does.
    saved = app.state.resources.limits
    try:
        for application in (app, ordinary_app):
            application.state.resources.limits = dataclasses.replace(saved, list_count_cap=2)
        data = await _same(api, ordinary, PAGED, {"n": 1})
        assert data["conversations"]["totalCount"] == 2 and data["conversations"]["totalCountCapped"] is True
        data = await _same(api, ordinary, PAGED, {"n": 1, "f": {"tags": ["t1"]}})
        assert data["conversations"]["totalCount"] == 1 and data["conversations"]["totalCountCapped"] is False
    finally:
        for application in (app, ordinary_app):
            application.state.resources.limits = saved


async def test_a_batch_of_pushed_down_items_equals_the_ordinary_batch(
    api: Caller, ordinary: Caller, db: Database, app: Starlette
) -> None:
    ids = await _seed(api, db, app)
    batch = [
        {"query": CRM, "variables": {"f": {"agentId": "a1"}, "n": 5, "m": 3}},
        {
            "query": "query($c: ID!) { conversation(id: $c) { id title messageCount lastSeq } }",
            "variables": {"c": ids[0]},
        },
        {"query": LAST, "variables": {"conversationId": ids[0], "last": 10}},
    ]
    planned = await api.http.post("/graphql", json=batch, headers=api.headers)
    reference = await ordinary.http.post("/graphql", json=batch, headers=api.headers)
    assert planned.status_code == reference.status_code == 200
    assert planned.json() == reference.json()
    assert all("errors" not in item for item in planned.json()), planned.text
    # Each item's JSON was built by Postgres (json_build_object's `"key" : value`).
    for key in ('"edges" : ', '"messageCount" : ', '"totalCount" : '):
        assert key in planned.text, key


async def test_other_shapes_and_bad_input_take_the_other_paths_with_the_same_answers(
    api: Caller, ordinary: Caller, db: Database, app: Starlette
) -> None:
    ids = await _seed(api, db, app)
    fallbacks: list[tuple[str, dict[str, Any]]] = [
        # `since` and resolver fields are not pushed down
        ("query($c: ID) { conversation(id: $c) { id states { key } } }", {"c": ids[0]}),
        ('{ conversations { edges { node { id messages(since: "2000-01-01T00:00:00Z") { totalCount } } } } }', {}),
        (
            'query($c: ID) { history(conversationId: $c, since: "2000-01-01T00:00:00Z") { edges { node { seq } } } }',
            {"c": ids[0]},
        ),
        ("{ conversations { edges { node { id states { key } } } } }", {}),
    ]
    for query, variables in fallbacks:
        planned, reference, pushed = await _both(api, ordinary, query, variables)
        assert "errors" not in planned, planned
        assert planned == reference, query
        assert not pushed, query
    errors: list[tuple[str, dict[str, Any], str]] = [
        (CRM, {"f": {"agentId": "a1"}, "n": 20, "m": 500}, "BAD_USER_INPUT"),  # nested page size
        (CRM, {"f": None, "n": 101, "m": 1}, "BAD_USER_INPUT"),
        (
            CRM,
            {"f": {"createdFrom": "2030-01-01T00:00:00Z", "createdTo": "2020-01-01T00:00:00Z"}, "n": 1, "m": 1},
            "BAD_USER_INPUT",
        ),
        ('{ conversations(after: "bogus") { edges { node { id } } } }', {}, "BAD_USER_INPUT"),
        (TRANSCRIPT, {"c": "not-a-uuid"}, "BAD_USER_INPUT"),
        (TRANSCRIPT, {"c": ids[0], "s": "p0"}, "BAD_USER_INPUT"),
        (TRANSCRIPT, {"c": "00000000-0000-0000-0000-000000000000"}, "NOT_FOUND"),
        (HISTORY, {"c": ids[0], "first": 1, "last": 1}, "BAD_USER_INPUT"),
        (HISTORY, {"c": ids[0], "after": "bogus"}, "BAD_USER_INPUT"),
        (HISTORY, {"c": ids[0], "afterSeq": -1}, "BAD_USER_INPUT"),
        (DETAIL, {"c": "not-a-uuid"}, "BAD_USER_INPUT"),
        (DETAIL, {"c": ids[0], "s": "p0"}, "BAD_USER_INPUT"),
        (DETAIL, {"c": ids[0], "m": 500}, "BAD_USER_INPUT"),
    ]
    for query, variables, code in errors:
        planned, reference, _ = await _both(api, ordinary, query, variables)
        assert planned == reference, (query, variables)
        assert planned["errors"][0]["extensions"]["code"] == code


async def test_pushdown_keeps_tenants_apart(
    api: Caller, ordinary: Caller, other_api: Caller, db: Database, app: Starlette
) -> None:
    ids = await _seed(api, db, app)
    other = Caller(http=ordinary.http, tenant=other_api.tenant, key=other_api.key)
    await _seed(other_api, db, app)
    planned, reference, pushed = await _both(other_api, other, CRM, {"f": None, "n": 100, "m": 1})
    assert pushed and planned == reference
    theirs = {e["node"]["id"] for e in planned["data"]["conversations"]["edges"]}
    assert len(theirs) == 3 and not theirs & set(ids)
    planned, reference, _ = await _both(other_api, other, TRANSCRIPT, {"c": ids[0], "after": 0})
    assert planned == reference
    assert planned["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    # Another tenant's conversation is null, its history NOT_FOUND, whatever the paging asked.
    planned, reference, _ = await _both(other_api, other, DETAIL, {"c": ids[0], "m": 2})
    assert planned == reference == {"data": {"conversation": None}}
    planned, reference, _ = await _both(other_api, other, HISTORY, {"c": ids[0], "last": 2})
    assert planned == reference and planned["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    planned, reference, pushed = await _both(other_api, other, PAGED, {"n": 10})
    assert pushed and planned == reference and planned["data"]["conversations"]["totalCount"] == 3


@pytest.mark.parametrize("scopes", ["write"])
async def test_pushdown_checks_the_scope_like_the_resolvers(
    api: Caller, ordinary: Caller, db: Database, scopes: str
) -> None:
    from tests.api.conftest import make_caller

    writer = await make_caller(db, api.http, api.tenant, scopes)
    writer_ordinary = Caller(http=ordinary.http, tenant=api.tenant, key=writer.key)
    for query, variables in (
        (CRM, {"f": None, "n": 1, "m": 1}),
        (TRANSCRIPT, {"s": "x"}),
        (DETAIL, {"s": "p0"}),
        (PAGED, {"n": 1}),
        (HISTORY, {"s": "p0", "last": 1}),
    ):
        planned, reference, _ = await _both(writer, writer_ordinary, query, variables)
        assert planned == reference
        assert planned["errors"][0]["extensions"]["code"] == "FORBIDDEN"


_CONVERSATION_FIELDS = [
    "id",
    "sessionId",
    "userId",
    "agentId",
    "channel",
    "title",
    "status",
    "tags",
    "metadata",
    "createdAt",
    "updatedAt",
    "lastMessageAt",
    "closedAt",
    "closeReason",
    "messageCount",
    "tokenCount",
    "lastSeq",
    "__typename",
]
_MESSAGE_FIELDS = [
    "id",
    "conversationId",
    "seq",
    "role",
    "content",
    "name",
    "toolCallId",
    "toolCalls",
    "clientMessageId",
    "tokenCount",
    "metadata",
    "createdAt",
    "__typename",
]
_SOURCE_FIELDS = ["documentId", "chunkId", "title", "uri", "score", "snippet", "__typename"]


class _Shapes:
    """Random documents inside what the pushdown covers (aliases, fragments, nested pages with
    every paging argument, filters, orders): each must be pushed down and equal the ordinary path."""

    def __init__(self, rng: random.Random, ids: list[str], seq_cursor: str, list_cursor: str) -> None:
        self.rng, self.ids, self.seq_cursor, self.list_cursor = rng, ids, seq_cursor, list_cursor

    def pick(self, fields: list[str]) -> str:
        chosen = self.rng.sample(fields, self.rng.randint(1, min(5, len(fields))))
        return " ".join(f"a{i}: {f}" if self.rng.random() < 0.3 else f for i, f in enumerate(chosen))

    def page_args(self) -> str:
        options = [
            f"last: {self.rng.randint(0, 6)}",
            f"first: {self.rng.randint(0, 6)}",
            f"first: 2, afterSeq: {self.rng.randint(0, 5)}",
            f'first: 2, after: "{self.seq_cursor}"',
            f'last: 2, before: "{self.seq_cursor}"',
            "",
        ]
        args = self.rng.choice(options)
        return f"({args})" if args else ""

    def extras(self) -> str:
        """Computed connection fields, sometimes: counts and pageInfo."""
        out = []
        if self.rng.random() < 0.4:
            out.append(self.pick(["totalCount", "totalCountCapped", "__typename"]))
        if self.rng.random() < 0.4:
            out.append(f"pageInfo {{ {self.pick(['hasNextPage', 'hasPreviousPage', 'startCursor', 'endCursor'])} }}")
        return " ".join(out)

    def edges(self, node: str) -> str:
        cursor = "cursor " if self.rng.random() < 0.3 else ""
        return f"edges {{ {cursor}node {{ {node} }} }}"

    def message(self, sources: bool) -> str:
        body = self.pick(_MESSAGE_FIELDS)
        if sources and self.rng.random() < 0.5:
            body += f" sources {{ {self.pick(_SOURCE_FIELDS)} }}"
        return body

    def document(self) -> str:
        rng = self.rng
        if rng.random() < 0.3:
            target = f'conversationId: "{rng.choice(self.ids)}"' if rng.random() < 0.7 else 'sessionId: "p1"'
            paging = self.page_args().strip("()")
            body = f"{self.extras()} {self.edges(self.message(True))}"
            return f"{{ h: history({target}{', ' + paging if paging else ''}) {{ {body} }} }}"
        node = self.pick(_CONVERSATION_FIELDS)
        for i in range(rng.randint(0, 2)):
            node += (
                f" m{i}: messages{self.page_args()} {{ __typename {self.extras()} {self.edges(self.message(True))} }}"
            )
        if rng.random() < 0.2:
            target = f'id: "{rng.choice(self.ids)}"' if rng.random() < 0.7 else f'sessionId: "p{rng.randint(0, 3)}"'
            return f"{{ conversation({target}) {{ {node} }} }}"
        filters = ['{agentId: "a1"}', '{tags: ["x"]}', "{status: ACTIVE}", "{metadata: {a: 1}}", "{}"]
        args = [f"filter: {rng.choice(filters)}", f"first: {rng.randint(0, 4)}"]
        args.append(f"orderBy: {rng.choice(['LAST_ACTIVITY_DESC', 'CREATED_AT_DESC', 'CREATED_AT_ASC'])}")
        if rng.random() < 0.3:
            args.append(f'after: "{self.list_cursor}"')
        if rng.random() < 0.3:
            return f"query {{ conversations({', '.join(args)}) {{ {self.extras()} edges {{ ...E }} }} }} fragment E on ConversationEdge {{ node {{ {node} }} }}"
        return f"{{ conversations({', '.join(args)}) {{ {self.extras()} {self.edges(node)} }} }}"


async def test_generated_pushdown_shapes_equal_the_ordinary_path(
    api: Caller, ordinary: Caller, db: Database, app: Starlette
) -> None:
    ids = await _seed(api, db, app)
    cursor = (await api.data(f'{{ history(conversationId: "{ids[0]}", first: 2) {{ pageInfo {{ endCursor }} }} }}'))[
        "history"
    ]["pageInfo"]["endCursor"]
    list_cursor = (await api.data("{ conversations(first: 1) { edges { cursor } } }"))["conversations"]["edges"][0][
        "cursor"
    ]
    shapes = _Shapes(random.Random(7), ids, cursor, list_cursor)
    answered = 0
    for _ in range(150):
        text = shapes.document()
        planned, reference, pushed = await _both(api, ordinary, text, {})
        assert planned == reference, text
        # A conversation not found (sessionId p3) is null: no JSON from Postgres to tell by.
        assert "errors" in planned or pushed or planned == {"data": {"conversation": None}}, text
        answered += "errors" not in planned
    assert answered > 120, answered


async def test_a_round_trip_sends_the_items_statements_as_one(db: Database) -> None:
    import asyncio

    import asyncpg

    from app.services.json_reads import RoundTrip

    # Started together, as a batch's items are: one statement (one statement_timestamp for
    # all), parameters renumbered per statement with the tenant `$1` shared, no row -> None as
    # fetchval says it.
    shared = RoundTrip(db)
    stamp = "SELECT $1::text || $2::text || statement_timestamp()::text"
    answers = await asyncio.gather(
        shared.fetchval(stamp, "t:", "a:"),
        shared.fetchval(stamp + " WHERE $3::bool", "t:", "b:", True),
        shared.fetchval("SELECT $1::text WHERE $2::bool", "t:", False),
    )
    assert answers[2] is None
    assert answers[0] is not None and answers[1] is not None
    (t, a, at_a), (_, b, at_b) = answers[0].split(":", 2), answers[1].split(":", 2)
    assert (t, a, b) == ("t", "a", "b") and at_a == at_b
    # One failing statement fails them all (the engine then answers each the ordinary way).
    results = await asyncio.gather(
        shared.fetchval("SELECT $1::text", "t"), shared.fetchval("SELECT 1/$2::int", "t", 0), return_exceptions=True
    )
    assert all(isinstance(r, asyncpg.DivisionByZeroError) for r in results), results
    # Other tenants' statements are never merged (each keeps its own `$1`).
    apart = await asyncio.gather(shared.fetchval("SELECT $1::text", "x"), shared.fetchval("SELECT $1::text", "y"))
    assert list(apart) == ["x", "y"]
