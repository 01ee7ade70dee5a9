"""searchMessages for words of every density: what a page costs for a rare word (the GIN probe), a
medium one (past the count cap, a few % of the tenant: the probe reads every match and sorts them)
and a common one (the newest-first walk), against the plain query a client would write with raw
asyncpg (the match, ORDER BY created_at, LIMIT: the planner picks its own plan).

    .venv/bin/python -m bench.search_density_bench              # prints the table
    .venv/bin/python -m bench.search_density_bench --write      # and records it in docs/benchmarks.md

Starts its own Postgres (fsync on) through bench.harness and loads bench.gin_pending_bench's history
(one tenant, --history messages, VACUUM ANALYZEd, autovacuum off on messages). Each word runs --runs
times on one connection, alternating with the baseline: the first page (20, totalCount selected) and
the second (after the first page's cursor).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from app.services import search
from bench import docs
from bench.gin_pending_bench import TENANT, WORDS, load_history
from bench.harness import servers
from db.session import asyncpg_dsn, create_pool

NAIVE = """
SELECT m.conversation_id, m.seq, m.content FROM messages m
WHERE m.tenant_id = $1 AND to_tsvector(m.search_config, m.content) @@ websearch_to_tsquery('simple', $2)
ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC LIMIT 21
"""


async def _p50(work: Callable[[], Awaitable[object]], runs: int) -> float:
    took = []
    for _ in range(runs):
        began = time.perf_counter()
        await work()
        took.append((time.perf_counter() - began) * 1000)
    return statistics.median(took)


async def measure(url: str, history: int, runs: int) -> list[tuple[str, str, int, float, float, float]]:
    await load_history(url, history)
    raw = await asyncpg.connect(asyncpg_dsn(url))
    pool = await create_pool(url, min_size=1, max_size=1)
    rows = []
    try:
        async with pool.acquire() as conn:
            for label, word in WORDS.items():
                matches = await raw.fetchval(
                    "SELECT count(*) FROM messages WHERE tenant_id = $1 AND "
                    "to_tsvector(search_config, content) @@ websearch_to_tsquery('simple', $2)",
                    TENANT,
                    word,
                )
                first = await search.search_messages(conn, TENANT, word)
                cursor = first.end_cursor

                async def page1(word: str = word) -> object:
                    return await search.search_messages(conn, TENANT, word)

                async def page2(word: str = word, cursor: str | None = cursor) -> object:
                    return await search.search_messages(conn, TENANT, word, after=cursor)

                async def naive(word: str = word) -> object:
                    return await raw.fetch(NAIVE, TENANT, word)

                p1, p2, base = [], [], []
                for _ in range(5):  # alternating slices: the shared machine's drift hits all three
                    p1.append(await _p50(page1, runs // 5))
                    p2.append(await _p50(page2, runs // 5))
                    base.append(await _p50(naive, runs // 5))
                rows.append(
                    (label, word, int(matches), statistics.median(p1), statistics.median(p2), statistics.median(base))
                )
    finally:
        await pool.close()
        await raw.close()
    return rows


def render(rows: list[tuple[str, str, int, float, float, float]], history: int, runs: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## searchMessages by word density (bench/search_density_bench.py)",
        "",
        f"Measured {when} on {docs.cpu_model()}, 2 cores shared with other work; embedded Postgres (fsync on), one "
        f"tenant of {history:,} messages (bench.gin_pending_bench's history, vacuumed), p50 of {runs} runs per cell "
        "on one connection, in alternating slices. *Raw* is the baseline: the plain query with raw asyncpg (match, "
        "newest first, LIMIT 21; the planner's own plan, no count). Command: "
        f"`python -m bench.search_density_bench --runs {runs} --write`.",
        "",
        "| word | matches | searchMessages page 1 ms | page 2 ms | raw query ms |",
        "|---|--:|--:|--:|--:|",
    ]
    for label, word, matches, p1, p2, base in rows:
        lines.append(f"| {label} (`{word}`) | {matches:,} | {p1:.2f} | {p2:.2f} | {base:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    with servers("cs-density-bench-") as s:
        rows = asyncio.run(measure(s.pg.url, args.history, args.runs))
    table = render(rows, args.history, args.runs)
    print(table)
    if args.write:
        docs.write_section("search-density-bench", table)
    sys.exit(0)


if __name__ == "__main__":
    main()
