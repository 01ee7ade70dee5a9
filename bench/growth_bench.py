"""Growth table (issue 11): every read's sequential p50 over GraphQL for tenants of ~10k, ~100k and ~1M
messages (100 messages per conversation), plus EXPLAIN (ANALYZE, BUFFERS) of search and stats on the
largest.

    .venv/bin/python -m bench.growth_bench                    # 10k, 100k, 1M (the 1M load takes minutes)
    .venv/bin/python -m bench.growth_bench --sizes 10000,100000 --rounds 5 --write

Starts its own embedded Postgres (fsync on) and Redis; one tenant per size, all in the same database
(so every size reads the same table, indexes and caches), loaded with set-based SQL (the rollup
triggers run as for any write). Requests go through the real ASGI app (auth, GraphQL, services,
Postgres, Redis) in-process, one at a time. Measurement is in --rounds rounds; each round times every
read on every tenant (--requests / --rounds requests each, after warm-ups), the tenants' order rotating
from round to round, so a busy minute of the shared machine lands on all sizes alike; a read's p50 is
over all its samples. The rare word occurs in 15 messages of every tenant; the common word in half.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.services import stats
from app.services.limits import Limits
from bench.run import ROOT, log
from db.migrate import upgrade
from db.repositories import text_search
from db.session import Database, UnitOfWork, asyncpg_dsn, create_pool

TENANT = "growth"  # one tenant per size: growth-10000, growth-100000, …


def tenant_of(size: int) -> str:
    return f"{TENANT}-{size}"


PER_CONVERSATION = 100
RARE = "zyxquux"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- growth-bench:begin -->"
END = "<!-- growth-bench:end -->"
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


async def load(url: str, tenant: str, first: int, count: int) -> None:
    """Conversations first..first+count-1 of `tenant`, 100 messages each, spread over the last 60 days."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO conversations (tenant_id, id, session_id, agent_id, status, title, created_at,
                    updated_at, last_message_at, last_activity_at, closed_at, last_seq, message_count, token_count)
                SELECT $1, gen_random_uuid(), 's-' || i, 'agent-' || (i % 10),
                       CASE WHEN i % 2 = 0 THEN 'closed' ELSE 'active' END, 'conversation ' || i,
                       $4::timestamptz - (i % 1440) * interval '1 hour', $4::timestamptz,
                       $4::timestamptz - (i % 1440) * interval '1 hour' + interval '100 minutes',
                       $4::timestamptz - (i % 1440) * interval '1 hour' + interval '100 minutes',
                       CASE WHEN i % 2 = 0 THEN $4::timestamptz - (i % 1440) * interval '1 hour' + interval '2 hours' END,
                       0, 0, 0
                FROM generate_series($2::int, $2::int + $3::int - 1) i
                """,
                tenant,
                first,
                count,
                NOW,
            )
            await conn.execute(
                f"""
                INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count, created_at,
                                      search_config)
                SELECT c.tenant_id, c.id, g, gen_random_uuid(), CASE WHEN g % 2 = 0 THEN 'assistant' ELSE 'user' END,
                       'message ' || g || CASE WHEN g % 2 = 0 THEN ' the answer is here' ELSE ' a question about it' END
                       || CASE WHEN substr(c.session_id, 3)::int < 15 AND g = 7 THEN ' {RARE}' ELSE '' END
                       || ' lorem ipsum dolor sit amet', 20, c.created_at + g * interval '1 minute',
                       'simple'::regconfig
                FROM conversations c, generate_series(1, $2::int) g
                WHERE c.tenant_id = $1 AND substr(c.session_id, 3)::int >= $3::int
                """,
                tenant,
                PER_CONVERSATION,
                first,
            )
            await conn.execute(
                """
                UPDATE conversations SET last_seq = $2, message_count = $2, token_count = $2 * 20
                WHERE tenant_id = $1 AND substr(session_id, 3)::int >= $3::int
                """,
                tenant,
                PER_CONVERSATION,
                first,
            )
    finally:
        await conn.close()
    # The hourly fold cron, as it would have run on data this old (the load is all in the past).
    db = Database(await create_pool(url, min_size=1, max_size=1))
    try:
        await stats.fold_rollups(db, NOW)
    finally:
        await db.close()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("VACUUM ANALYZE conversations")
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("VACUUM ANALYZE stats_daily")
        # The load's dirty pages are flushed now, not by a checkpoint during the measurements.
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def reads(conversation_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
    start = (NOW - timedelta(days=30)).replace(hour=0)
    end = NOW.replace(hour=0) + timedelta(days=1)
    return {
        "history (last 50)": (
            "query($id: ID!) { history(conversationId: $id, last: 50) { edges { node { seq role content } } } }",
            {"id": conversation_id},
        ),
        "context window (4000 tokens)": (
            "query($id: ID!) { contextWindow(conversationId: $id, maxTokens: 4000) { totalTokens messages { seq } } }",
            {"id": conversation_id},
        ),
        "list 20, no totalCount": (
            "{ conversations(first: 20) { edges { node { id title messageCount } } pageInfo { hasNextPage endCursor } } }",
            {},
        ),
        "list 20 + totalCount": (
            "{ conversations(first: 20) { totalCount edges { node { id title messageCount } } pageInfo { hasNextPage } } }",
            {},
        ),
        "search rare word + totalCount": (
            f'{{ searchMessages(query: "{RARE}") {{ totalCount totalCountCapped edges {{ node {{ seq content }} }} }} }}',
            {},
        ),
        "search common word + totalCount": (
            '{ searchMessages(query: "answer") { totalCount totalCountCapped edges { node { seq content } } } }',
            {},
        ),
        "stats 30 days": (
            "query($f: DateTime!, $t: DateTime!) { stats(from: $f, to: $t) { conversations messages tokens "
            "avgMessagesPerConversation agents { agentId messages } daily { day messages } } }",
            {"f": start.isoformat(), "t": end.isoformat()},
        ),
    }


async def time_reads(
    client: httpx.AsyncClient, key: str, conversation_id: str, n: int, out: dict[str, list[float]]
) -> None:
    """Append n timed samples (after 2 warm-ups) of every read to out[read]."""
    headers = {"Authorization": f"Bearer {key}"}
    for name, (query, variables) in reads(conversation_id).items():
        samples = out.setdefault(name, [])
        for i in range(n + 2):
            t0 = time.perf_counter()
            r = await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
            dt = time.perf_counter() - t0
            body = r.json()
            if "errors" in body:
                raise RuntimeError(f"{name}: {body['errors']}")
            if i >= 2:
                samples.append(dt * 1000)


EXPLAINED = {
    "search, rare word (the probe that finds and counts the matches)": (
        "WITH hits AS MATERIALIZED (SELECT m.conversation_id, m.seq, m.created_at FROM messages m "
        f"WHERE m.tenant_id = $1 AND {text_search.match('simple', '$2')} LIMIT "
        + str(Limits().search_count_cap + 1)
        + "), page AS (SELECT * FROM hits h "
        "ORDER BY h.created_at DESC, h.conversation_id DESC, h.seq DESC LIMIT 21) "
        "SELECT n.total, m.seq FROM (SELECT count(*) AS total FROM hits) n LEFT JOIN (page p JOIN messages m "
        "ON m.tenant_id = $1 AND m.conversation_id = p.conversation_id AND m.seq = p.seq) ON true",
        RARE,
    ),
    "search, common word (expected in >= 5 % of messages: no probe, the newest-first walk)": (
        "SELECT m.seq FROM conversations c JOIN messages m ON m.tenant_id = c.tenant_id AND m.conversation_id = c.id "
        f"AND {text_search.match('simple', '$2')} "
        "WHERE c.tenant_id = $1 AND m.tenant_id = $1 ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC "
        "LIMIT 21",
        "answer",
    ),
}


async def explain(url: str, tenant: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    parts = []
    try:
        for label, (sql, word) in EXPLAINED.items():
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", tenant, word)
            parts.append(f"**{label}**\n\n```\n" + "\n".join(r[0] for r in rows) + "\n```\n")
        start = (NOW - timedelta(days=30)).date()
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT day, agent_id, role, status, sum(conversations)::bigint, "
            "sum(conversation_messages)::bigint, sum(closed)::bigint, sum(duration_seconds), "
            "sum(messages)::bigint, sum(tokens)::bigint FROM stats_daily WHERE tenant_id = $1 AND day >= $2 "
            "AND day < $3 GROUP BY GROUPING SETS ((day, role, status), (agent_id, role, status)) "
            "HAVING sum(conversations) <> 0 OR sum(messages) <> 0",
            tenant,
            start,
            NOW.date() + timedelta(days=1),
        )
        parts.append("**stats, 30 whole days from the rollups**\n\n```\n" + "\n".join(r[0] for r in rows) + "\n```\n")
    finally:
        await conn.close()
    return "\n".join(parts)


async def run(
    pg_url: str, redis_url: str, sizes: list[int], n: int, rounds: int
) -> tuple[dict[int, dict[str, float]], str]:
    from app.main import create_app
    from app.services import tenants
    from app.settings import Settings

    db = Database(await create_pool(pg_url))
    keys: dict[int, str] = {}
    for size in sizes:

        async def setup(uow: UnitOfWork, tenant: str = tenant_of(size)) -> str:
            await tenants.ensure_tenant(uow, tenant)
            _, key = await tenants.create_api_key(uow, tenant, list(tenants.Scope))
            return key

        keys[size] = await db.run(setup)
    await db.close()
    conversation_ids: dict[int, str] = {}
    for size in sizes:
        t0 = time.perf_counter()
        await load(pg_url, tenant_of(size), 0, size // PER_CONVERSATION)
        log(f"loaded {tenant_of(size)}: {size:,} messages in {time.perf_counter() - t0:.0f} s")
        conn = await asyncpg.connect(asyncpg_dsn(pg_url))
        conversation_ids[size] = str(
            await conn.fetchval(
                "SELECT id FROM conversations WHERE tenant_id = $1 AND session_id = 's-3'", tenant_of(size)
            )
        )
        await conn.close()
    app = create_app(Settings(_env_file=None), database_url=pg_url, redis_url=redis_url)
    samples: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
    per_round = max(1, n // rounds)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
    ):
        for r in range(rounds):
            order = sizes[r % len(sizes) :] + sizes[: r % len(sizes)]
            for size in order:
                await time_reads(client, keys[size], conversation_ids[size], per_round, samples[size])
            log(f"round {r + 1}/{rounds} done")
        plans = await explain(pg_url, tenant_of(sizes[-1]))
    results = {size: {name: statistics.median(v) for name, v in reads_.items()} for size, reads_ in samples.items()}
    for size in sizes:
        for name, p50 in results[size].items():
            log(f"  {size:>9,} {name:<34} p50 {p50:8.2f} ms")
    return results, plans


def render(results: dict[int, dict[str, float]], plans: str, n: int, rounds: int) -> str:
    sizes = sorted(results)
    names = list(results[sizes[0]])
    head = "| read | " + " | ".join(f"{s:,} msgs p50 ms" for s in sizes) + " | largest ÷ smallest |"
    lines = [head, "|---|" + "--:|" * (len(sizes) + 1)]
    for name in names:
        values = [results[s][name] for s in sizes]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {values[-1] / values[0]:.2f}× |")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{BEGIN}\n## Growth: tenants of {sizes[0]:,} to {sizes[-1]:,} messages in one database (bench/growth_bench.py)\n\n"
        f"Measured {stamp}; one tenant per size in the same database, sequential requests through the real ASGI "
        "app in-process (auth, GraphQL, services, Postgres with fsync on, Redis); "
        f"{rounds} interleaved rounds (the tenants' order rotating), p50 of {n} requests per read and size; "
        "100 messages per conversation, 10 agents, 60 days of history; the rare word is in 15 messages of every "
        "tenant, the common word in half of all messages. The machine is 2 cores shared with other work: "
        "absolute numbers are noisy, the ratio is the point. Regenerate with "
        "`.venv/bin/python -m bench.growth_bench --write`.\n\n"
        + "\n".join(lines)
        + f"\n\n### EXPLAIN (ANALYZE, BUFFERS) at {sizes[-1]:,} messages\n\n"
        + plans
        + f"\n{END}"
    )


def write_doc(section: str) -> None:
    text = DOC.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="10000,100000,1000000", help="message counts, ascending")
    p.add_argument("--requests", type=int, default=30, help="timed requests per read and size (over all rounds)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the sizes")
    p.add_argument("--write", action="store_true", help=f"write the section into {DOC.relative_to(ROOT)}")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="growth-bench-"))
    from app.embedded.postgres import start_postgres
    from app.embedded.redis import start_redis

    pg = start_postgres(workdir / "pgdata", fsync=True, dbname="bench")
    rd = start_redis(workdir / "redis", persist=False)
    try:
        upgrade(pg.url)
        results, plans = asyncio.run(run(pg.url, rd.url, sizes, args.requests, args.rounds))
        n = max(1, args.requests // args.rounds) * args.rounds
        section = render(results, plans, n, args.rounds)
        print(section)
        if args.write:
            write_doc(section)
            log(f"wrote {DOC.relative_to(ROOT)}")
    finally:
        rd.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
