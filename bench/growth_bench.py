"""Growth table (issue 11): every read's sequential p50 over GraphQL as one tenant grows from ~10k to
~100k to ~1M messages (100 messages per conversation), plus EXPLAIN (ANALYZE, BUFFERS) of search and
stats at the largest size.

    .venv/bin/python -m bench.growth_bench                    # 10k, 100k, 1M (the 1M load takes minutes)
    .venv/bin/python -m bench.growth_bench --sizes 10000,100000 --write

Starts its own embedded Postgres (fsync on) and Redis; data is generated with set-based SQL (the rollup
triggers run as for any write). Requests go through the real ASGI app (auth, GraphQL, services,
Postgres, Redis) in-process, one at a time; each read is timed over --requests requests after warm-up.
The rare word occurs in 15 messages whatever the size; the common word in half of all messages.
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
from db.session import Database, UnitOfWork, asyncpg_dsn, create_pool

TENANT = "growth"
PER_CONVERSATION = 100
RARE = "zyxquux"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- growth-bench:begin -->"
END = "<!-- growth-bench:end -->"
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


async def load(url: str, first: int, count: int) -> None:
    """Conversations first..first+count-1, 100 messages each, spread over the last 60 days."""
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
                TENANT,
                first,
                count,
                NOW,
            )
            await conn.execute(
                f"""
                INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count, created_at)
                SELECT c.tenant_id, c.id, g, gen_random_uuid(), CASE WHEN g % 2 = 0 THEN 'assistant' ELSE 'user' END,
                       'message ' || g || CASE WHEN g % 2 = 0 THEN ' the answer is here' ELSE ' a question about it' END
                       || CASE WHEN substr(c.session_id, 3)::int < 15 AND g = 7 THEN ' {RARE}' ELSE '' END
                       || ' lorem ipsum dolor sit amet', 20, c.created_at + g * interval '1 minute'
                FROM conversations c, generate_series(1, $2::int) g
                WHERE c.tenant_id = $1 AND substr(c.session_id, 3)::int >= $3::int
                """,
                TENANT,
                PER_CONVERSATION,
                first,
            )
            await conn.execute(
                """
                UPDATE conversations SET last_seq = $2, message_count = $2, token_count = $2 * 20
                WHERE tenant_id = $1 AND substr(session_id, 3)::int >= $3::int
                """,
                TENANT,
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


async def time_reads(client: httpx.AsyncClient, key: str, conversation_id: str, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {key}"}
    for name, (query, variables) in reads(conversation_id).items():
        samples = []
        for i in range(n + 3):
            t0 = time.perf_counter()
            r = await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
            dt = time.perf_counter() - t0
            body = r.json()
            if "errors" in body:
                raise RuntimeError(f"{name}: {body['errors']}")
            if i >= 3:
                samples.append(dt)
        out[name] = statistics.median(samples) * 1000
        log(f"  {name:<34} p50 {out[name]:8.2f} ms")
    return out


EXPLAINED = {
    "search, rare word (the probe that finds and counts the matches)": (
        "WITH hits AS MATERIALIZED (SELECT m.conversation_id, m.seq, m.created_at FROM messages m "
        "WHERE m.tenant_id = $1 AND to_tsvector('simple'::regconfig, m.content) @@ "
        "websearch_to_tsquery('simple'::regconfig, $2) LIMIT "
        + str(Limits().search_count_cap + 1)
        + "), page AS (SELECT * FROM hits h "
        "ORDER BY h.created_at DESC, h.conversation_id DESC, h.seq DESC LIMIT 21) "
        "SELECT n.total, m.seq FROM (SELECT count(*) AS total FROM hits) n LEFT JOIN (page p JOIN messages m "
        "ON m.tenant_id = $1 AND m.conversation_id = p.conversation_id AND m.seq = p.seq) ON true",
        RARE,
    ),
    "search, common word (expected in >= 5 % of messages: no probe, the newest-first walk)": (
        "SELECT m.seq FROM conversations c JOIN messages m ON m.tenant_id = c.tenant_id AND m.conversation_id = c.id "
        "AND to_tsvector('simple'::regconfig, m.content) @@ websearch_to_tsquery('simple'::regconfig, $2) "
        "WHERE c.tenant_id = $1 AND m.tenant_id = $1 ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC "
        "LIMIT 21",
        "answer",
    ),
}


async def explain(url: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    parts = []
    try:
        for label, (sql, word) in EXPLAINED.items():
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", TENANT, word)
            parts.append(f"**{label}**\n\n```\n" + "\n".join(r[0] for r in rows) + "\n```\n")
        start = (NOW - timedelta(days=30)).date()
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT day, agent_id, role, status, sum(conversations)::bigint, "
            "sum(conversation_messages)::bigint, sum(closed)::bigint, sum(duration_seconds), "
            "sum(messages)::bigint, sum(tokens)::bigint FROM stats_daily WHERE tenant_id = $1 AND day >= $2 "
            "AND day < $3 GROUP BY GROUPING SETS ((day, role, status), (agent_id, role, status)) "
            "HAVING sum(conversations) <> 0 OR sum(messages) <> 0",
            TENANT,
            start,
            NOW.date() + timedelta(days=1),
        )
        parts.append("**stats, 30 whole days from the rollups**\n\n```\n" + "\n".join(r[0] for r in rows) + "\n```\n")
    finally:
        await conn.close()
    return "\n".join(parts)


async def run(pg_url: str, redis_url: str, sizes: list[int], n: int) -> tuple[dict[int, dict[str, float]], str]:
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
    app = create_app(Settings(_env_file=None), database_url=pg_url, redis_url=redis_url)
    results: dict[int, dict[str, float]] = {}
    loaded = 0
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
    ):
        for size in sizes:
            conversations = size // PER_CONVERSATION
            t0 = time.perf_counter()
            await load(pg_url, loaded, conversations - loaded)
            log(f"loaded {size:,} messages ({conversations:,} conversations) in {time.perf_counter() - t0:.0f} s")
            loaded = conversations
            conn = await asyncpg.connect(asyncpg_dsn(pg_url))
            cid = str(
                await conn.fetchval("SELECT id FROM conversations WHERE tenant_id = $1 AND session_id = 's-3'", TENANT)
            )
            await conn.close()
            results[size] = await time_reads(client, key, cid, n)
        plans = await explain(pg_url)
    return results, plans


def render(results: dict[int, dict[str, float]], plans: str, n: int) -> str:
    sizes = sorted(results)
    names = list(results[sizes[0]])
    head = "| read | " + " | ".join(f"{s:,} msgs p50 ms" for s in sizes) + " | largest ÷ smallest |"
    lines = [head, "|---|" + "--:|" * (len(sizes) + 1)]
    for name in names:
        values = [results[s][name] for s in sizes]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {values[-1] / values[0]:.2f}× |")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{BEGIN}\n## Growth: one tenant from {sizes[0]:,} to {sizes[-1]:,} messages (bench/growth_bench.py)\n\n"
        f"Measured {stamp}; sequential requests through the real ASGI app in-process (auth, GraphQL, services, "
        f"Postgres with fsync on, Redis), p50 of {n} requests after 3 warm-ups; 100 messages per conversation, "
        "10 agents, 60 days of history; the rare word is in 15 messages at every size, the common word in half "
        "of all messages. The machine is 2 cores shared with other work: absolute numbers are noisy, the ratio "
        "is the point. Regenerate with `.venv/bin/python -m bench.growth_bench --write`.\n\n"
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
    p.add_argument("--requests", type=int, default=30, help="timed requests per read and size")
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
        results, plans = asyncio.run(run(pg.url, rd.url, sizes, args.requests))
        section = render(results, plans, args.requests)
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
