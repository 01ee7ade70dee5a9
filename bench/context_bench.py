"""Context windows and recent history: the Redis hot cache vs Postgres, and vs the peer approach.

Measured in one run, against one embedded Postgres (fsync on) and Redis, one thing at a time:

1. **Context window, end to end through GraphQL** (`graphql/AgentContextWindow.graphql`, maxTokens
   4000, over HTTP to a uvicorn process) at 100, 10,000 and 100,000 stored messages: our service
   with the hot cache, and the same service with `CACHE_ENABLED=false` (Postgres source).
2. **The peer approach** on the same conversations, in this process (no HTTP, which favours it):
   load the whole history from Postgres, build LangChain messages, and trim them with
   `langchain_core.messages.trim_messages(strategy="last", include_system=True, start_on="human")`
   and a tiktoken (o200k_base) counter — what a LangChain app does per LLM call.
3. **Recent-history page** (`last: 50` of 10,000): the service call `messages.history_by_ref` hot
   (one Redis round trip), from Postgres (`cache=None`), and on a miss (evicted first: the read
   fills the entry); then the same page through GraphQL on both servers.

Run: `python -m bench.context_bench [--write] [--quick]` after `pip install -e '.[bench]'` (or
`pip install -r bench/requirements-context.txt`): langchain-core is a bench-only dependency.
`--write` replaces the section between `<!-- cache-bench:start -->` and `<!-- cache-bench:end -->`
in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app import tokens
from app.cache.client import HotCache
from app.cache.options import CacheOptions
from app.embedded.process import free_port
from app.models import Conversation, ConversationRef, Role
from app.services import conversations, messages, tenants
from bench import harness
from bench.docs import cpu_model, write_section
from db.session import Database, UnitOfWork, create_pool

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- cache-bench:start -->", "<!-- cache-bench:end -->"
TENANT = "ctx-bench"
SIZES = (100, 10_000, 100_000)
MAX_TOKENS = 4000
#: Concurrent readers for the history throughput measurement.
READERS = 8
_VOCABULARY = (
    "the order number delivery refund account password invoice payment card shipping address "
    "customer agent help please thanks issue problem update status ticket support question answer "
    "pedido número entrega reembolso cuenta factura pago tarjeta envío dirección cliente ayuda gracias "
    "problema estado consulta respuesta when where why how can could would should today tomorrow"
)
WORDS = _VOCABULARY.split()


@dataclass
class Stat:
    label: str
    samples_ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def timed(stat: Stat, n: int, op: Callable[[], Awaitable[Any]]) -> Any:
    result = None
    for _ in range(n):
        started = time.perf_counter()
        result = await op()
        stat.samples_ms.append((time.perf_counter() - started) * 1000)
    return result


# ------------------------------------------------------------------------------------------- seed


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 60)))


async def seed(url: str) -> tuple[str, dict[int, uuid.UUID]]:
    """A tenant with an API key and one conversation per size: a system prompt, then user and
    assistant turns of 12-60 words (token counts computed like the service does)."""
    db = Database(await create_pool(url))
    rng = random.Random(7)
    try:

        async def setup(uow: UnitOfWork) -> str:
            await tenants.ensure_tenant(uow, TENANT)
            _, key = await tenants.create_api_key(uow, TENANT, list(tenants.Scope))
            return key

        key: str = await db.run(setup)
        ids: dict[int, uuid.UUID] = {}
        for size in SIZES:

            async def create(uow: UnitOfWork, size: int = size) -> Conversation:
                return await conversations.create(uow, TENANT, session_id=f"ctx-{size}")

            conv = await db.run(create)
            ids[size] = conv.id
            start = datetime.now(UTC).timestamp() - size
            total = 0
            for lo in range(1, size + 1, 10_000):
                seqs = list(range(lo, min(size, lo + 9_999) + 1))
                roles = ["system" if s == 1 else ("user" if s % 2 == 0 else "assistant") for s in seqs]
                contents = ["You are a helpful support agent. Answer briefly." if s == 1 else _text(rng) for s in seqs]
                counts = [tokens.count_message(c) for c in contents]
                total += sum(counts)
                async with db.read() as conn:
                    await conn.execute(
                        """INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count,
                                                 created_at)
                           SELECT $1, $2, t.seq, gen_random_uuid(), t.role, t.content, t.tokens,
                                  to_timestamp($3 + t.seq)
                           FROM unnest($4::int[], $5::text[], $6::text[], $7::int[]) AS t(seq, role, content, tokens)""",
                        TENANT,
                        conv.id,
                        start,
                        seqs,
                        roles,
                        contents,
                        counts,
                    )
            async with db.read() as conn:
                await conn.execute(
                    """UPDATE conversations SET last_seq = $3, message_count = $3, token_count = $4,
                              last_message_at = now(), last_activity_at = now()
                       WHERE tenant_id = $1 AND id = $2""",
                    TENANT,
                    conv.id,
                    size,
                    total,
                )
        async with db.read() as conn:
            await conn.execute("VACUUM ANALYZE messages")
            await conn.execute("VACUUM ANALYZE conversations")
        return key, ids
    finally:
        await db.close()


# --------------------------------------------------------------------------------- the servers


def serve(port: int, database_url: str, redis_url: str, cache: bool) -> None:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(_env_file=None, log_level="WARNING", cache_enabled=cache)
    app = create_app(settings, database_url=database_url, redis_url=redis_url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_server(port: int, pg_url: str, redis_url: str, cache: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "bench.context_bench", "serve", str(port), pg_url, redis_url, "on" if cache else "off"]
    return harness.start(cmd, port, "/healthz", ok_only=True)


stop_server = harness.stop


# ---------------------------------------------------------------------------------- measurements


@dataclass
class Results:
    window: dict[tuple[str, int], Stat] = field(default_factory=dict)
    window_shape: dict[int, tuple[int, int]] = field(default_factory=dict)
    peer: dict[int, Stat] = field(default_factory=dict)
    peer_load: dict[int, Stat] = field(default_factory=dict)
    peer_shape: dict[int, tuple[int, int]] = field(default_factory=dict)
    history: dict[str, Stat] = field(default_factory=dict)
    throughput: dict[str, list[float]] = field(default_factory=dict)
    cache_hits: dict[str, float] = field(default_factory=dict)


async def graphql_windows(
    port: int, key: str, ids: dict[int, uuid.UUID], label: str, results: Results, n: int, answers: dict[int, Any]
) -> None:
    window_doc = (ROOT / "graphql" / "AgentContextWindow.graphql").read_text()
    history_doc = (ROOT / "graphql" / "AgentLastMessages.graphql").read_text()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as http:

        async def post(doc: str, variables: dict[str, Any]) -> Any:
            r = await http.post("/graphql", json={"query": doc, "variables": variables})
            body = r.json()
            assert r.status_code == 200 and "errors" not in body, body
            return body["data"]

        for size in SIZES:
            variables = {"conversationId": str(ids[size]), "maxTokens": MAX_TOKENS}
            await timed(Stat("warm-up"), 20, lambda v=variables: post(window_doc, v))  # type: ignore[misc]
            stat = results.window[(label, size)] = Stat(f"{label} {size}")
            data = await timed(stat, n, lambda v=variables: post(window_doc, v))  # type: ignore[misc]
            window = data["contextWindow"]
            # Both servers must answer the same window (the cache is never wrong).
            if size in answers:
                assert answers[size] == window, f"{label} window differs at {size}"
            answers[size] = window
            results.window_shape[size] = (len(window["openaiMessages"]), window["totalTokens"])
        variables = {"conversationId": str(ids[10_000]), "last": 50}
        await timed(Stat("warm-up"), 20, lambda: post(history_doc, variables))
        await timed(results.history.setdefault(f"graphql {label}", Stat("")), n, lambda: post(history_doc, variables))
        metrics = (await http.get("/metrics")).text
        results.cache_hits[label] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("cache_hits_total{") and 'kind="window"' in line
        )


async def history_service(
    pg_url: str, redis_url: str, ids: dict[int, uuid.UUID], results: Results, n: int, seconds: float
) -> None:
    """Hot and Postgres interleaved (A B A B…: the machine's drift hits both alike), one reader
    at a time for latency, then 8 concurrent readers for throughput; then misses."""
    db = Database(await create_pool(pg_url, min_size=READERS, max_size=READERS))
    cache = HotCache(redis_url, CacheOptions())
    cache.attach(db)
    await cache.start()
    target = ConversationRef(id=ids[10_000])
    forms: dict[str, HotCache | None] = {"service hot": cache, "service postgres": None}
    try:
        async with db.read() as conn:
            truth = [
                m.seq
                for m in (await messages.history_by_ref(conn, TENANT, target, messages.HistoryArgs(last=50))).items
            ]

        async def read(with_cache: HotCache | None) -> None:
            async with db.read() as conn:
                page = await messages.history_by_ref(
                    conn, TENANT, target, messages.HistoryArgs(last=50), cache=with_cache
                )
            assert [m.seq for m in page.items] == truth

        for form in forms.values():
            await timed(Stat("warm-up"), 100, lambda form=form: read(form))  # type: ignore[misc]
        for _ in range(4):
            for label, form in forms.items():
                await timed(results.history.setdefault(label, Stat("")), n // 4, lambda form=form: read(form))  # type: ignore[misc]
        for _ in range(2):
            for label, form in forms.items():
                done = 0
                stop = time.perf_counter() + seconds / 2

                async def reader(form: HotCache | None = form, stop: float = stop) -> None:
                    nonlocal done
                    while time.perf_counter() < stop:
                        await read(form)
                        done += 1

                started = time.perf_counter()
                await asyncio.gather(*(reader() for _ in range(READERS)))
                results.throughput.setdefault(label, []).append(done / (time.perf_counter() - started))
        miss = results.history.setdefault("service miss", Stat(""))
        for _ in range(max(n // 8, 20)):
            await cache.evict(TENANT, target.id)  # type: ignore[arg-type]
            await timed(miss, 1, lambda: read(cache))
    finally:
        await cache.close()
        await db.close()


async def peer(pg_url: str, ids: dict[int, uuid.UUID], results: Results, quick: bool) -> None:
    # A bench-only dependency (`pip install -e '.[bench]'`); CI type-checks without it.
    from langchain_core.messages import (  # type: ignore[import-not-found, unused-ignore]
        AIMessage,
        BaseMessage,
        HumanMessage,
        SystemMessage,
        trim_messages,
    )

    encoding = tokens.get_encoding(tokens.DEFAULT_ENCODING)

    def tiktoken_counter(batch: list[BaseMessage]) -> int:
        return sum(len(encoding.encode(str(m.content))) + 3 for m in batch) + 3

    kinds: dict[str, type[BaseMessage]] = {
        Role.SYSTEM.value: SystemMessage,
        Role.USER.value: HumanMessage,
        Role.ASSISTANT.value: AIMessage,
    }
    pool = await create_pool(pg_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            for size in SIZES:
                rounds = {100: 200, 10_000: 20, 100_000: 5}[size] // (4 if quick else 1) or 1

                async def load(size: int = size) -> list[BaseMessage]:
                    rows = await conn.fetch(
                        "SELECT role, content FROM messages WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY seq",
                        TENANT,
                        ids[size],
                    )
                    return [kinds[r["role"]](content=r["content"]) for r in rows]

                async def trim(size: int = size) -> list[BaseMessage]:
                    kept: list[BaseMessage] = trim_messages(
                        await load(size),
                        max_tokens=MAX_TOKENS,
                        token_counter=tiktoken_counter,
                        strategy="last",
                        include_system=True,
                        start_on="human",
                    )
                    return kept

                await trim()
                kept = await timed(results.peer.setdefault(size, Stat("")), rounds, trim)
                await timed(results.peer_load.setdefault(size, Stat("")), rounds, load)
                results.peer_shape[size] = (len(kept), tiktoken_counter(kept))
    finally:
        await pool.close()


# ---------------------------------------------------------------------------------------- report


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}"


def render(r: Results, wall_s: float) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    hot = {s: r.window[("hot cache", s)] for s in SIZES}
    pg = {s: r.window[("postgres", s)] for s in SIZES}
    lines = [
        START,
        "## Context windows and recent history: hot cache, Postgres, and the peer approach",
        "",
        "Generated by `python -m bench.context_bench --write` (edit that, not this text). "
        f"Last run: {now}, {wall_s:.0f} s wall; {machine()}; embedded Postgres (fsync on) and Redis "
        "on the same cores as the client. Latencies are sequential requests (one at a time).",
        "",
        f"### Context window through GraphQL (`AgentContextWindow`, maxTokens {MAX_TOKENS}, HTTP to uvicorn)",
        "",
        "| stored messages | window (messages, tokens) | hot cache p50 ms | p99 ms | Postgres p50 ms | p99 ms "
        "| peer p50 ms | peer (messages, tokens) | peer / hot cache |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in SIZES:
        shape, peer_shape = r.window_shape[s], r.peer_shape[s]
        lines.append(
            f"| {s:,} | {shape[0]}, {shape[1]:,} | {hot[s].p50:.2f} | {hot[s].p99:.2f} | {pg[s].p50:.2f} | "
            f"{pg[s].p99:.2f} | {r.peer[s].p50:,.1f} | {peer_shape[0]}, {peer_shape[1]:,} | "
            f"**{r.peer[s].p50 / hot[s].p50:,.0f}×** |"
        )
    scale = hot[100_000].p50 / hot[100].p50
    peer_10k = r.peer[10_000].p50 / hot[10_000].p50
    h = r.history
    history_ratio = h["service postgres"].p50 / h["service hot"].p50
    rps = {label: statistics.mean(values) for label, values in r.throughput.items()}
    rps_ratio = rps["service hot"] / rps["service postgres"]
    lines += [
        "",
        f"- **O(window):** hot-cache p50 at 100,000 messages is **{scale:.2f}×** the p50 at 100 (target ≤ 1.5×); "
        f"from Postgres {pg[100_000].p50 / pg[100].p50:.2f}×. Both read only the window's messages.",
        f"- **Peer approach at 10,000 messages: {peer_10k:,.0f}× slower** than our GraphQL answer (target ≥ 50×): "
        f"loading the history takes {r.peer_load[10_000].p50:.1f} ms of its {r.peer[10_000].p50:.1f} ms, "
        "the rest is re-tokenizing it; at 100,000 messages it takes "
        f"{r.peer[100_000].p50 / 1000:.2f} s per call. The peer runs in this process without HTTP or GraphQL "
        "(in its favour); its window differs a little (no tool-call rules, no reply priming in its budget).",
        f"- The window server counted {r.cache_hits.get('hot cache', 0):,.0f} window hits (the Postgres server "
        f"{r.cache_hits.get('postgres', 0):,.0f}); both servers answered identical windows.",
        "",
        "### Recent-history page (`last: 50` of 10,000 messages)",
        "",
        f"| path | p50 ms (one reader) | p99 ms | reads/s ({READERS} readers) |",
        "|---|--:|--:|--:|",
        f"| service, hot cache (one Redis round trip) | {h['service hot'].p50:.3f} | {h['service hot'].p99:.3f} "
        f"| {rps['service hot']:,.0f} |",
        f"| service, Postgres (`cache=None`: one statement) | {h['service postgres'].p50:.3f} | "
        f"{h['service postgres'].p99:.3f} | {rps['service postgres']:,.0f} |",
        f"| service, miss (entry evicted: the read fills it from Postgres) | {h['service miss'].p50:.3f} | "
        f"{h['service miss'].p99:.3f} | |",
        f"| GraphQL `AgentLastMessages`, hot cache | {h['graphql hot cache'].p50:.2f} | "
        f"{h['graphql hot cache'].p99:.2f} | |",
        f"| GraphQL `AgentLastMessages`, Postgres | {h['graphql postgres'].p50:.2f} | "
        f"{h['graphql postgres'].p99:.2f} | |",
        "",
        f"- **Hot vs Postgres at the service: {history_ratio:.1f}× faster** one read at a time (target ≥ 3×), "
        f"**{rps_ratio:.1f}× the reads/s** with {READERS} concurrent readers (the client, Postgres and Redis share "
        "the 2 cores: a hot read costs one small Redis script instead of a Postgres statement). One read at a "
        "time is mostly the loopback round trip, which this VM answers in 50 to 150 µs from run to run. Through "
        f"GraphQL the difference is {h['graphql postgres'].p50 / h['graphql hot cache'].p50:.2f}×: HTTP, parsing "
        "and serializing 50 messages dominate both.",
        "- A miss costs about five statements (header, newest messages, their sources, state, the first SYSTEM "
        "message) plus one Redis write; later reads are hot until the entry is invalidated or expires.",
        END,
    ]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    # render() frames the section with the cache-bench markers; the docs writer sets them again.
    write_section("cache-bench", section.replace(START, "").replace(END, "").strip("\n"))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "on")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = parser.parse_args()
    n = 60 if args.quick else 300
    started = time.monotonic()
    results = Results()
    with harness.servers("cs-ctx-bench-") as srv:
        pg, rd = srv.pg, srv.redis
        print("seeding 100 / 10,000 / 100,000 messages…", flush=True)
        key, ids = asyncio.run(seed(pg.url))
        answers: dict[int, Any] = {}
        for label, cache in (("hot cache", True), ("postgres", False)):
            port = free_port()
            proc = start_server(port, pg.url, rd.url, cache)
            try:
                print(f"GraphQL, {label}…", flush=True)
                asyncio.run(graphql_windows(port, key, ids, label, results, n, answers))
            finally:
                stop_server(proc)
        print("history through the service…", flush=True)
        asyncio.run(history_service(pg.url, rd.url, ids, results, n * 4, 2.0 if args.quick else 6.0))
        print("the peer approach (LangChain trim_messages)…", flush=True)
        asyncio.run(peer(pg.url, ids, results, args.quick))
    section = render(results, time.monotonic() - started)
    print(section)
    if args.write:
        write_docs(section)
        print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
