"""Search modes at 100k messages (issue 14.2): p50 of `search` KEYWORD / SEMANTIC / HYBRID over
GraphQL, and what the embedding trigger adds to an append.

    .venv/bin/python -m bench.search_bench                       # 100k messages, prints the table
    .venv/bin/python -m bench.search_bench --messages 100000 --write

Starts its own embedded Postgres (fsync on) and Redis. One tenant gets 1,000 conversations of 100
messages (sentences of tests/search/labelled.py with varying references); their vectors are real
(the offline wordllama model, computed here in one pass: ~1 s) and written set-based with the HNSW
index built after the load. Requests go through the real ASGI app in-process, one at a time; the
questions rotate over 24 paraphrases (the query-vector cache serves repeats, as in production).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from app.services.embedder import LocalEmbedder
from bench.harness import servers
from bench.run import ROOT, log
from db.repositories.embeddings import vector_text
from db.session import Database, UnitOfWork, asyncpg_dsn, create_pool
from tests.search.labelled import DISTRACTORS, PAIRS

TENANT = "search-bench"
PER_CONVERSATION = 100
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- search-bench:begin -->"
END = "<!-- search-bench:end -->"
SEARCH = """query($q: String!, $mode: SearchMode) {
  search(query: $q, mode: $mode, first: 10) { edges { node { score snippet message { seq content } } } }
}"""
ADD = """mutation($s: String!, $c: String!) { addMessage(input: {sessionId: $s, role: USER, content: $c}) {
  message { seq } } }"""


def texts(n: int) -> list[str]:
    base = [a for a, _ in PAIRS] + DISTRACTORS
    return [f"{base[i % len(base)]} (ref {i // len(base)})" for i in range(n)]


async def load(url: str, n: int) -> None:
    contents = texts(n)
    t0 = time.perf_counter()
    vectors = await LocalEmbedder().embed(contents)
    log(f"embedded {n:,} messages in {time.perf_counter() - t0:.1f} s (wordllama, one process)")
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("DROP INDEX IF EXISTS ix_message_embeddings_hnsw_256")
        conversations = n // PER_CONVERSATION
        ids = [uuid.uuid4() for _ in range(conversations)]
        await conn.execute(
            """
            INSERT INTO conversations (tenant_id, id, session_id, agent_id, status, title, last_seq, message_count,
                                       token_count)
            SELECT $1, u.id, 's-' || u.i, 'agent-' || (u.i % 10), 'active', 'conversation ' || u.i, $3, $3, $3 * 20
            FROM unnest($2::uuid[]) WITH ORDINALITY AS u(id, i)
            """,
            TENANT,
            ids,
            PER_CONVERSATION,
        )
        step = 5000
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            cids = [ids[i // PER_CONVERSATION] for i in range(lo, hi)]
            seqs = [i % PER_CONVERSATION + 1 for i in range(lo, hi)]
            await conn.execute(
                """
                INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count)
                SELECT $1, u.c, u.s, gen_random_uuid(), CASE WHEN u.s % 2 = 0 THEN 'assistant' ELSE 'user' END,
                       u.t, 20
                FROM unnest($2::uuid[], $3::int[], $4::text[]) AS u(c, s, t)
                """,
                TENANT,
                cids,
                seqs,
                contents[lo:hi],
            )
            await conn.execute(
                """
                INSERT INTO message_embeddings (tenant_id, conversation_id, seq, model, dims, embedding)
                SELECT $1, u.c, u.s, $5, 256, u.v::vector FROM unnest($2::uuid[], $3::int[], $4::text[]) AS u(c, s, v)
                """,
                TENANT,
                cids,
                seqs,
                [vector_text(v) for v in vectors[lo:hi]],
                LocalEmbedder.model,
            )
        t0 = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(
            "CREATE INDEX ix_message_embeddings_hnsw_256 ON message_embeddings "
            "USING hnsw ((embedding::vector(256)) vector_cosine_ops) WHERE dims = 256"
        )
        log(f"built the HNSW index over {n:,} vectors in {time.perf_counter() - t0:.0f} s")
        for table in ("conversations", "messages", "message_embeddings"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def p50(client: httpx.AsyncClient, headers: dict[str, str], body: Any, n: int) -> float:
    samples = []
    for i in range(n + 3):
        payload = body(i)
        t0 = time.perf_counter()
        r = await client.post("/graphql", json=payload, headers=headers)
        dt = time.perf_counter() - t0
        data = r.json()
        if "errors" in data:
            raise RuntimeError(data["errors"])
        if i >= 3:
            samples.append(dt)
    return statistics.median(samples) * 1000


async def run(pg_url: str, redis_url: str, n_messages: int, n: int) -> dict[str, float]:
    from app.main import create_app
    from app.services import tenants
    from app.settings import Settings

    db = Database(await create_pool(pg_url))

    async def setup(uow: UnitOfWork) -> str:
        await tenants.ensure_tenant(uow, TENANT)
        _, key = await tenants.create_api_key(uow, TENANT, list(tenants.Scope))
        return key

    key = await db.run(setup)
    await db.close()
    await load(pg_url, n_messages)
    app = create_app(Settings(_env_file=None), database_url=pg_url, redis_url=redis_url)
    headers = {"Authorization": f"Bearer {key}"}
    questions = [q for _, q in PAIRS]
    out: dict[str, float] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
    ):
        out["KEYWORD (one word, 'refunded')"] = await p50(
            client, headers, lambda i: {"query": SEARCH, "variables": {"q": "refunded", "mode": "KEYWORD"}}, n
        )
        out["KEYWORD (question)"] = await p50(
            client, headers, lambda i: {"query": SEARCH, "variables": {"q": questions[i % 24], "mode": "KEYWORD"}}, n
        )
        for mode in ("SEMANTIC", "HYBRID"):
            out[f"{mode} (question)"] = await p50(
                client,
                headers,
                lambda i, m=mode: {"query": SEARCH, "variables": {"q": questions[i % 24], "mode": m}},
                n,
            )
        # The append path: addMessage with the embedding trigger installed, then without it.
        listeners = app.state.resources.db.listeners
        trigger = next(x for x in listeners if type(x).__name__ == "Trigger" and x.__module__.endswith("embeddings"))
        add = lambda i: {"query": ADD, "variables": {"s": f"append-{i % 50}", "c": f"an appended message {i}"}}  # noqa: E731
        await p50(client, headers, add, 50)  # creates the 50 sessions: the measured appends only append
        # Two rounds each way, alternating; the better round of each (the machine is shared).
        with_trigger = without = float("inf")
        for _ in range(2):
            with_trigger = min(with_trigger, await p50(client, headers, add, n * 4))
            listeners.remove(trigger)
            without = min(without, await p50(client, headers, add, n * 4))
            listeners.append(trigger)
        out["addMessage with the embedding trigger"] = with_trigger
        out["addMessage without it"] = without
    return out


def render(results: dict[str, float], n_messages: int, n: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(f"| {name} | {ms:.2f} |" for name, ms in results.items())
    return (
        f"{BEGIN}\n## Search modes at {n_messages:,} messages (bench/search_bench.py)\n\n"
        f"Measured {stamp} on the shared 2-core machine while other sessions ran (noisy: compare within the "
        f"table, not across runs); one tenant, {n_messages // PER_CONVERSATION:,} conversations of "
        f"{PER_CONVERSATION} messages, real 256-d vectors (wordllama), HNSW (m 16, ef_construction 64, "
        f"iterative scan); sequential requests through the ASGI app in-process, p50 of {n} (appends: {n * 4}, the better of two alternating rounds) after "
        "3 warm-ups; first: 10.\n\n| request | p50 ms |\n|---|--:|\n"
        f"{rows}\n{END}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    with servers("search-bench-") as s:
        results = asyncio.run(run(s.pg.url, s.redis.url, args.messages, args.requests))
    table = render(results, args.messages, args.requests)
    print(table)
    if args.write:
        doc = DOC.read_text()
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + table + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip("\n") + "\n\n" + table + "\n"
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
