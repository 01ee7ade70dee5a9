"""The query cost is an upper bound of what a query returns, on generated shapes.

MAX_QUERY_COST protects the service only if a document's cost never understates the objects its
answer holds. Generated documents (random root fields, aliases, nested connections with literal,
variable or default page sizes, fragments, unpaged lists) run against a tenant with data, and
every answer's object count must be at most the cost app/api/cost.py computed for it. Unpaged
lists (sources, states) are costed at a typical size (cost.UNPAGED_LIST_SIZE): the data here
stays under it, as the services' caps keep most lists."""

from __future__ import annotations

import random
from typing import Any

from graphql import parse

from app.api.cost import UNPAGED_LIST_SIZE, plan
from app.api.schema import build_schema
from app.settings import Settings
from tests.api.conftest import Caller

CONVERSATIONS = 6
MESSAGES = 8
SOURCES = 2
STATES = 3
DOCUMENTS = 150

ADD = """mutation($s: String!, $m: [MessageInput!]!) {
  addMessages(input: {sessionId: $s, messages: $m}) { createdCount } }"""
SET = """mutation($c: ID!, $k: String!) {
  setState(input: {conversationId: $c, key: $k, value: {n: 1}}) { version } }"""
ID = "query($s: String!) { conversation(sessionId: $s) { id } }"


def _objects(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_objects(v) for v in value.values())
    if isinstance(value, list):
        return sum(_objects(v) for v in value)
    return 0


class Shapes:
    """Random documents over the read side of the schema."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.variables: dict[str, int] = {}
        self.definitions: list[str] = []
        self.fragment = False

    def size(self, argument: str) -> str:
        choice = self.rng.random()
        if choice < 0.2:
            return ""  # the field's default page size
        value = self.rng.choice([0, 1, 3, 10, 50, 100])
        if choice < 0.6:
            return f"{argument}: {value}"
        name = f"v{len(self.variables)}"
        self.variables[name] = value
        self.definitions.append(f"${name}: Int")
        return f"{argument}: ${name}"

    def message(self) -> str:
        fields = ["seq", *self.rng.sample(["content", "role", "tokenCount", "createdAt"], self.rng.randint(0, 2))]
        if self.rng.random() < 0.4:
            fields.append("sources { documentId title }")
        if self.rng.random() < 0.3:
            self.fragment = True
            fields.append("...M")
        return " ".join(fields)

    def page(self, field: str, fixed: str = "", argument: str | None = None) -> str:
        size = self.size(argument or self.rng.choice(["first", "last"]))
        args = ", ".join(a for a in (fixed, size) if a)
        call = f"{field}({args})" if args else field
        return f"{call} {{ edges {{ cursor node {{ {self.message()} }} }} }}"

    def conversation(self) -> str:
        fields = ["id", *self.rng.sample(["title", "messageCount", "status", "sessionId"], self.rng.randint(0, 2))]
        if self.rng.random() < 0.7:
            fields.append(self.page("messages"))
        if self.rng.random() < 0.3:
            fields.append("states { key version }")
        if self.rng.random() < 0.2:
            fields.append('state(key: "k0") { key version }')
        return " ".join(fields)

    def root(self) -> str:
        kind = self.rng.randrange(4)
        if kind == 0:
            size = self.size("first")
            args = f"({size})" if size else ""
            return f"conversations{args} {{ totalCount edges {{ node {{ {self.conversation()} }} }} }}"
        if kind == 1:
            session = self.rng.randrange(CONVERSATIONS)
            return self.page("history", f'sessionId: "cost-{session}"', "last")
        if kind == 2:
            return f'conversation(sessionId: "cost-{self.rng.randrange(CONVERSATIONS)}") {{ {self.conversation()} }}'
        size = self.size("first")
        return (
            f'searchMessages(query: "alpha"{", " + size if size else ""}) {{ edges {{ node {{ {self.message()} }} }} }}'
        )

    def document(self) -> tuple[str, dict[str, int]]:
        roots = [f"a{i}: {self.root()}" for i in range(self.rng.randint(1, 3))]
        head = f"query Q({', '.join(self.definitions)})" if self.definitions else "query Q"
        text = f"{head} {{ {' '.join(roots)} }}"
        if self.fragment:
            text += " fragment M on Message { id content }"
        return text, self.variables


async def test_the_cost_bounds_every_generated_answer(api: Caller) -> None:
    for c in range(CONVERSATIONS):
        batch = [
            {
                "role": "USER",
                "content": f"alpha message {m} of conversation {c}",
                "sources": [{"documentId": f"d{s}", "title": "t"} for s in range(SOURCES if m % 2 else 0)],
            }
            for m in range(MESSAGES)
        ]
        await api.data(ADD, {"s": f"cost-{c}", "m": batch})
        conversation_id = (await api.data(ID, {"s": f"cost-{c}"}))["conversation"]["id"]
        for k in range(STATES):
            await api.data(SET, {"c": conversation_id, "k": f"k{k}"})
    assert max(SOURCES, STATES) <= UNPAGED_LIST_SIZE
    settings = Settings(_env_file=None)
    schema = build_schema(settings)._schema
    checked = 0
    for seed in range(DOCUMENTS):
        text, variables = Shapes(seed).document()
        cost_plan = plan(schema, parse(text), None, max_page_size=settings.max_page_size)
        assert cost_plan is not None, text
        cost = cost_plan.cost(variables)
        body = await api.gql(text, variables)
        if cost > settings.max_query_cost:
            assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", (text, body)
            continue
        assert "errors" not in body, (text, body["errors"])
        returned = _objects(body["data"]) - 1  # the data object itself is not selected
        assert returned <= cost, (text, variables, returned, cost)
        checked += 1
    assert checked >= DOCUMENTS * 0.8, checked
