"""The full-text GIN index's pending list under a steady append load: what each setting of
`ix_messages_search` costs the appends (a merge lands on one unlucky insert) and the keyword
searches (every GIN probe scans the whole pending list).

    .venv/bin/python -m bench.gin_pending_bench                       # prints the tables
    .venv/bin/python -m bench.gin_pending_bench --seconds 60 --rounds 2 --write

Starts its own Postgres (fsync on) through bench.harness. One tenant gets a history of
--history messages (1,000 conversations, real chat sentences plus a ticket number each; a rare word
in 15 of them), VACUUMed (pending list merged) before the run. Then, per window, the index gets one
variant's storage parameters (ALTER INDEX ... SET / RESET, pending list emptied, CHECKPOINT) and
--writers writers append at --rate messages/s in total through the service path
(`Database.run(messages.append)`, validation and tiktoken included), paced open-loop (a writer that
fell behind catches up at once), while one reader runs `search.search_messages` (searchMessages,
totalCount selected) at --search-rate, cycling a rare, a medium and a common word. Windows run in
alternating order over --rounds rounds, so drift of the shared machine hits every variant alike.

Autovacuum is off on `messages` during the windows: on a production-sized table its insert trigger
(20 % of the table's rows; autoanalyze's, which merges the list too, 10 %) is hundreds of thousands
of appends away, so the pending list is merged by the insert that crosses the limit; a 100k-row
bench table would be vacuumed or analyzed every ~10–20k appends instead and hide exactly that.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from app.models import Conversation, ConversationRef, Role
from app.services import conversations, messages, search, tenants
from bench import docs
from bench.harness import alternating, cpu_seconds, servers
from bench.run import TEXTS, log
from db.session import Database, UnitOfWork, asyncpg_dsn, create_pool
from tests.search.labelled import DISTRACTORS, PAIRS

TENANT = "gin-bench"
INDEX = "ix_messages_search"
PER_CONVERSATION = 100
RARE = "zyxquux"
#: The three search paths: a probe that finds 15 matches; a probe that overflows the count cap
#: (~1 % of messages, then the newest-first walk); a word in most messages, which skips the probe.
WORDS = {"rare": RARE, "medium": "refunded", "common": "the"}
#: Chat-like sentences: the bench's conversation texts, the labelled search answers and distractors.
CORPUS = TEXTS + [answer for answer, _ in PAIRS] + DISTRACTORS


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    #: storage parameters set on the index after a RESET of both; empty: the defaults
    options: str


VARIANTS = [
    Variant("fastupdate on, 4 MB (Postgres default)", ""),
    Variant("fastupdate on, 1 MB", "fastupdate = on, gin_pending_list_limit = 1024"),
    Variant("fastupdate on, 256 kB (migrated)", "fastupdate = on, gin_pending_list_limit = 256"),
    Variant("fastupdate on, 64 kB", "fastupdate = on, gin_pending_list_limit = 64"),
    Variant("fastupdate off", "fastupdate = off"),
]


@dataclass(slots=True)
class Window:
    """One variant's measured window in one round."""

    variant: str
    round: int = 0
    seconds: float = 0.0
    append_ms: list[float] = field(default_factory=list)
    search_ms: dict[str, list[float]] = field(default_factory=dict)
    #: the same searches right after the pending list was emptied, no appends running
    idle_ms: dict[str, list[float]] = field(default_factory=dict)
    writer_cpu_s: float = 0.0
    wal_bytes: int = 0
    pending_pages: list[int] = field(default_factory=list)
    merges_seen: int = 0


def content(n: int, prefix: str) -> str:
    return f"{CORPUS[n % len(CORPUS)]} Ticket {prefix}-{n}."


async def load_history(url: str, n: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        await conn.execute(
            """
            INSERT INTO conversations (tenant_id, id, session_id, agent_id, status, title, last_seq, message_count,
                                       token_count)
            SELECT $1, gen_random_uuid(), 'h-' || i, 'agent-' || (i % 10), 'active', 'conversation ' || i, $2, $2,
                   $2 * 40
            FROM generate_series(0, $3::int - 1) i
            """,
            TENANT,
            PER_CONVERSATION,
            n // PER_CONVERSATION,
        )
        await conn.execute(
            f"""
            INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count, created_at,
                                  search_config)
            SELECT c.tenant_id, c.id, g, gen_random_uuid(), CASE WHEN g % 2 = 0 THEN 'assistant' ELSE 'user' END,
                   ($2::text[])[1 + (substr(c.session_id, 3)::int * 7 + g) % cardinality($2::text[])]
                   || ' Ticket h' || substr(c.session_id, 3) || '-' || g || '.'
                   || CASE WHEN substr(c.session_id, 3)::int < 15 AND g = 7 THEN ' {RARE}' ELSE '' END,
                   40, now() - interval '30 days' + (substr(c.session_id, 3)::int * 100 + g) * interval '1 second',
                   'simple'::regconfig
            FROM conversations c, generate_series(1, $3::int) g
            WHERE c.tenant_id = $1
            """,
            TENANT,
            CORPUS,
            PER_CONVERSATION,
        )
        await conn.execute("VACUUM ANALYZE conversations")
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("ALTER TABLE messages SET (autovacuum_enabled = off)")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def pending(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(f"SELECT pending_pages FROM pgstatginindex('{INDEX}')"))


async def prepare(conn: asyncpg.Connection, variant: Variant) -> None:
    """The variant's storage parameters, an empty pending list and a fresh checkpoint (so no timed
    checkpoint and its full-page writes fall into one window and not another)."""
    await conn.execute(f"ALTER INDEX {INDEX} RESET (fastupdate, gin_pending_list_limit)")
    if variant.options:
        await conn.execute(f"ALTER INDEX {INDEX} SET ({variant.options})")
    await conn.execute(f"SELECT gin_clean_pending_list('{INDEX}')")
    await conn.execute("CHECKPOINT")


async def timed_search(db: Database, word: str) -> float:
    t0 = time.perf_counter()
    async with db.read() as conn:
        page = await search.search_messages(conn, TENANT, word, first=20)
    dt = (time.perf_counter() - t0) * 1000
    if not page.items:
        raise AssertionError(f"no hit for {word!r}")
    return dt


async def paced(period: float, until: float, op: Callable[[int], Awaitable[None]]) -> None:
    """op(0), op(1), … started every `period` seconds until `until` (open loop: a late op is followed
    at once by the ones it delayed, so a stall does not thin the load)."""
    i = 0
    due = time.perf_counter()
    while due < until:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await op(i)
        i += 1
        due += period


async def measure(
    url: str,
    admin: asyncpg.Connection,
    writers: Database,
    writer_pids: list[int],
    refs: list[ConversationRef],
    reader: Database,
    variant: Variant,
    k: int,
    args: argparse.Namespace,
) -> Window:
    w = Window(variant.label, k)
    await prepare(admin, variant)
    for name, word in WORDS.items():
        w.idle_ms[name] = [await timed_search(reader, word) for _ in range(10)]
    cpu0 = sum(cpu_seconds(p) for p in writer_pids)
    lsn0 = await admin.fetchval("SELECT pg_current_wal_lsn()")
    start = time.perf_counter()
    until = start + args.seconds
    stop = asyncio.Event()

    def writer(i: int, ref: ConversationRef) -> Callable[[int], Awaitable[None]]:
        async def op(n: int) -> None:
            msg = messages.new_message(
                role=Role.USER if n % 2 else Role.ASSISTANT,
                content=content(n, f"r{k}w{i}"),
                client_message_id=f"{variant.label[:20]}-{k}-{i}-{n}",
            )
            t0 = time.perf_counter()
            await writers.run(lambda uow: messages.append(uow, TENANT, ref, msg))
            w.append_ms.append((time.perf_counter() - t0) * 1000)

        return op

    names = list(WORDS)

    async def searcher(n: int) -> None:
        name = names[n % len(names)]
        w.search_ms.setdefault(name, []).append(await timed_search(reader, WORDS[name]))

    async def sampler() -> None:
        last = 0
        while not stop.is_set():
            pages = await pending(admin)
            if pages < last:
                w.merges_seen += 1
            w.pending_pages.append(pages)
            last = pages
            await asyncio.sleep(0.2)

    sampling = asyncio.create_task(sampler())
    period = len(refs) / args.rate
    await asyncio.gather(
        *(paced(period, until, writer(i, ref)) for i, ref in enumerate(refs)),
        paced(1 / args.search_rate, until, searcher),
    )
    w.seconds = time.perf_counter() - start
    stop.set()
    await sampling
    w.writer_cpu_s = sum(cpu_seconds(p) for p in writer_pids) - cpu0
    w.wal_bytes = int(await admin.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn0))
    return w


async def run(url: str, args: argparse.Namespace) -> tuple[list[Window], dict[str, str]]:
    setup = Database(await create_pool(url, min_size=1, max_size=1))

    async def tenant(uow: UnitOfWork) -> None:
        await tenants.ensure_tenant(uow, TENANT)

    await setup.run(tenant)
    t0 = time.perf_counter()
    await load_history(url, args.history)
    log(f"history: {args.history:,} messages loaded and vacuumed in {time.perf_counter() - t0:.0f} s")
    refs = []
    for i in range(args.writers):

        async def create(uow: UnitOfWork, session_id: str = f"live-{i}") -> Conversation:
            return await conversations.create(uow, TENANT, session_id=session_id)

        refs.append(conversations.ref((await setup.run(create)).id, None))
    await setup.close()
    writers = Database(await create_pool(url, min_size=args.writers, max_size=args.writers))
    reader = Database(await create_pool(url, min_size=1, max_size=1))
    admin = await asyncpg.connect(asyncpg_dsn(url))
    held = [await writers.pool.acquire() for _ in range(args.writers)]
    writer_pids = [c.get_server_pid() for c in held]
    for c in held:
        await writers.pool.release(c)
    settings = {
        name: str(await admin.fetchval(f"SHOW {name}"))
        for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers", "work_mem", "max_wal_size")
    }
    windows = []
    try:
        for k, variant in alternating(VARIANTS, args.rounds):
            w = await measure(url, admin, writers, writer_pids, refs, reader, variant, k, args)
            log(
                f"round {k + 1} {variant.label:<30} appends {len(w.append_ms):>6} p99 {pct(w.append_ms, 99):6.2f} "
                f"max {max(w.append_ms):7.1f} ms | rare p50 {pct(w.search_ms['rare'], 50):5.2f} "
                f"p99 {pct(w.search_ms['rare'], 99):5.2f} ms | pending max {max(w.pending_pages) * 8} kB, "
                f"merges seen {w.merges_seen}"
            )
            windows.append(w)
        settings["messages at the end"] = f"{await admin.fetchval('SELECT count(*) FROM messages'):,}"
        await admin.execute(f"ALTER INDEX {INDEX} RESET (fastupdate, gin_pending_list_limit)")
    finally:
        await admin.close()
        await writers.close()
        await reader.close()
    return windows, settings


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else float("nan")


def pooled(windows: list[Window], label: str) -> Window:
    out = Window(label)
    for w in (x for x in windows if x.variant == label):
        out.seconds += w.seconds
        out.append_ms += w.append_ms
        for src, dst in ((w.search_ms, out.search_ms), (w.idle_ms, out.idle_ms)):
            for name, values in src.items():
                dst.setdefault(name, []).extend(values)
        out.writer_cpu_s += w.writer_cpu_s
        out.wal_bytes += w.wal_bytes
        out.pending_pages += w.pending_pages
        out.merges_seen += w.merges_seen
    return out


def render(windows: list[Window], settings: dict[str, str], args: argparse.Namespace, stamp: str) -> str:
    rows_a, rows_s = [], []
    for v in VARIANTS:
        w = pooled(windows, v.label)
        n = len(w.append_ms)
        rows_a.append(
            f"| {v.label} | {n / w.seconds:,.0f} | {pct(w.append_ms, 50):.2f} | {pct(w.append_ms, 99):.2f} | "
            f"{pct(w.append_ms, 99.9):.1f} | {max(w.append_ms):.1f} | {w.writer_cpu_s / n * 1e6:.0f} | "
            f"{w.wal_bytes / n:,.0f} | {max(w.pending_pages) * 8:,} | {statistics.mean(w.pending_pages) * 8:,.0f} | "
            f"{w.merges_seen} |"
        )
        cells = []
        for name in WORDS:
            s = w.search_ms[name]
            cells.append(f"{pct(w.idle_ms[name], 50):.2f} | {pct(s, 50):.2f} | {pct(s, 99):.2f} | {max(s):.1f}")
        rows_s.append(f"| {v.label} | " + " | ".join(cells) + " |")
    rounds = ["| round | variant | append p99 ms | append max ms | rare p50 ms | rare p99 ms | merges seen |"]
    rounds.append("|--:|---|--:|--:|--:|--:|--:|")
    for w in windows:
        rounds.append(
            f"| {w.round + 1} | {w.variant} | {pct(w.append_ms, 99):.2f} | {max(w.append_ms):.1f} | "
            f"{pct(w.search_ms['rare'], 50):.2f} | {pct(w.search_ms['rare'], 99):.2f} | {w.merges_seen} |"
        )
    words = ", ".join(f"{name} `{word}`" for name, word in WORDS.items())
    return f"""## GIN pending list under a steady append load (bench/gin_pending_bench.py)

Measured {stamp}: `{" ".join(["python -m bench.gin_pending_bench", *args.argv])}`. CPU: {docs.cpu_model()},
{os.cpu_count()} cores, shared with the client (one Python process, uvloop) and whatever else ran
(load average {args.load[0]:.1f} before, {args.load[1]:.1f} after: absolute numbers are noisy, compare
the rows). Postgres {settings["server_version"]} embedded, fsync {settings["fsync"]}, synchronous_commit
{settings["synchronous_commit"]}, shared_buffers {settings["shared_buffers"]}, work_mem {settings["work_mem"]} (what
an inserting backend's merge uses), max_wal_size {settings["max_wal_size"]}; autovacuum off on `messages` (see the
module docstring). History: {args.history:,} messages of one tenant, vacuumed; {settings["messages at the end"]}
messages at the end. Load per window: {args.writers} writers appending {args.rate:g} msg/s in total through
`Database.run(messages.append)` (each to its own conversation, the sentences of the history plus a ticket number),
one reader running `search.search_messages` (first 20, totalCount) {args.search_rate:g} times a second over
{words}. {args.rounds} rounds × {args.seconds:g} s per variant, alternating order; each window starts with the
variant's storage parameters set, the pending list emptied and a CHECKPOINT. The baseline is the first row
(Postgres' default, what the index had before migration ac43885c0bbd) and, for searches, *empty*: the same
search right after the list was emptied, no appends running (10 per word per window).

Appends (every window of the variant pooled; *backend CPU* is the writers' Postgres backends, merges included,
per append; *pending* sampled every 0.2 s, so *merges seen* undercounts fast cycles):

| variant | appends/s | p50 ms | p99 ms | p99.9 ms | max ms | backend CPU µs/append | WAL bytes/append | pending max kB | pending mean kB | merges seen |
|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|
{chr(10).join(rows_a)}

Searches (ms; *empty* is the empty-list p50, then p50, p99 and max under the append load):

| variant | rare empty | rare p50 | rare p99 | rare max | medium empty | medium p50 | medium p99 | medium max | common empty | common p50 | common p99 | common max |
|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|
{chr(10).join(rows_s)}

Per round (the noise):

{chr(10).join(rounds)}
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--history", type=int, default=100_000, help="messages in the tenant before the windows")
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--rate", type=float, default=500, help="appends per second, all writers together")
    p.add_argument("--search-rate", type=float, default=30, help="searches per second")
    p.add_argument("--seconds", type=float, default=60, help="seconds per window")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = p.parse_args()
    args.argv = [a for a in sys.argv[1:] if a != "--write"]
    load_before = os.getloadavg()[0]
    with servers("gin-pending-bench-") as s:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            windows, settings = runner.run(run(s.pg.url, args))
    args.load = (load_before, os.getloadavg()[0])
    text = render(windows, settings, args, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    print(text)
    if args.write:
        docs.write_section("gin-pending-bench", text)


if __name__ == "__main__":
    main()
