"""`conversation.save_message` through a real worker vs the same append as a direct service call.

    .venv/bin/python -m bench.jobs_bench                 # ~1 min; table on stdout
    .venv/bin/python -m bench.jobs_bench --write         # ... and update the table in docs/jobs.md
    .venv/bin/python -m bench.jobs_bench --quick         # smoke test

Same run, same servers, interleaved rounds (direct, worker, worker, direct, …). Starts its own
embedded Postgres (fsync ON, synchronous_commit on: durable appends) and Redis in a temp dir,
unless BENCH_DATABASE_URL / BENCH_REDIS_URL are set.

- **direct**: `Database.run(lambda uow: messages.append(...))` with `messages.new_message(...)` per
  op (validation and token counting included), on the `Database` of `Resources.open` as the API
  has it (after commit: hot-cache write-through and the event published).
- **worker**: `ActionClient.call("conversation.save_message", ...)` from this process; a real
  `conversation-service worker` process (LOG_LEVEL=WARNING: arq logs two lines per job at INFO)
  validates the envelope, appends through the same service call, LPUSHes the answer on the
  client's callback list, and the client's reader hands it to the waiting call. Each op is a full
  round trip: enqueue → worker poll → append → answer → BRPOP.

Each writer (an in-flight call) appends to its own conversation; seqs are checked gap-free at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app import tokens
from app.embedded.postgres import start_postgres
from app.embedded.process import EmbeddedServer, die_with_parent
from app.embedded.redis import start_redis
from app.models import ConversationRef, Role
from app.resources import Resources
from app.services import conversations, messages, tenants
from app.settings import Settings
from bench.harness import cpu_seconds
from db.migrate import upgrade
from db.session import Database
from jobs.client import ActionClient

TENANT = "bench-jobs"
QUEUE = "bench-jobs"
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "jobs.md"
BEGIN, END = "<!-- jobs-bench:begin -->", "<!-- jobs-bench:end -->"
TEXT = "Can you summarise the last quarterly report for me? I mostly care about churn and the EMEA numbers."


def log(text: str) -> None:
    print(f"[jobs-bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Cell:
    ops: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    worker_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000

    def add(self, other: Cell) -> None:
        self.ops += other.ops
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.worker_cpu_s += other.worker_cpu_s


Op = Callable[[], Awaitable[None]]


async def measure(ops: Sequence[Op], warmup: float, seconds: float) -> Cell:
    """Every op loops until the deadline; only ops finishing inside the measured window count."""
    cell = Cell()
    start = time.perf_counter()
    lo, hi = start + warmup, start + warmup + seconds

    async def loop(op: Op) -> None:
        while (now := time.perf_counter()) < hi:
            await op()
            done = time.perf_counter()
            if lo <= done <= hi:
                cell.ops += 1
                cell.latencies.append(done - now)

    await asyncio.gather(*(loop(op) for op in ops))
    cell.seconds = seconds
    return cell


async def new_refs(db: Database, label: str, n: int) -> list[ConversationRef]:
    refs = []
    for i in range(n):
        session_id = f"{label}-{i}-{uuid.uuid4().hex[:6]}"
        c = await db.run(functools.partial(conversations.create, tenant_id=TENANT, session_id=session_id))
        refs.append(ConversationRef(id=c.id))
    return refs


def direct_op(db: Database, ref: ConversationRef) -> Op:
    async def op() -> None:
        msg = messages.new_message(role=Role.USER, content=TEXT, client_message_id=uuid.uuid4().hex)
        await db.run(lambda uow: messages.append(uow, TENANT, ref, msg))

    return op


def worker_op(client: ActionClient, ref: ConversationRef) -> Op:
    async def op() -> None:
        answer = await client.call(
            "conversation.save_message",
            tenant_id=TENANT,
            conversation_id=ref.id,
            data={"role": "user", "content": TEXT},
        )
        if not answer["success"]:
            raise RuntimeError(answer)

    return op


async def check_gap_free(db: Database) -> int:
    async with db.read() as conn:
        bad = await conn.fetchval(
            """
            SELECT count(*) FROM conversations c
            WHERE c.tenant_id = $1 AND c.last_seq <> (
                SELECT count(*) FROM messages m WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.id
            )
            """,
            TENANT,
        )
        total = await conn.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1", TENANT)
    if bad:
        raise RuntimeError(f"{bad} conversations have seq gaps or duplicates")
    return int(total)


@dataclass
class Args:
    seconds: float
    warmup: float
    rounds: int
    concurrency: list[int]
    write: bool


def start_worker(database_url: str, redis_url: str, args: Args, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "ARQ_QUEUE": QUEUE,
        "CRON_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "DB_POOL_MAX": str(max(args.concurrency) + 5),
    }
    with log_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - no imports or locks in it
        )


async def run(
    database_url: str, redis_url: str, args: Args, worker: subprocess.Popen[bytes], worker_log: Path
) -> dict[int, dict[str, Cell]]:
    # The direct path gets the same process wiring as the API and the worker: after each commit the
    # hot cache is written through and the event is published, so both forms do the same work.
    settings = Settings(database_url=database_url, redis_url=redis_url, db_pool_max=max(args.concurrency) + 2)
    resources = await Resources.open(settings, database_url, redis_url)
    db, redis = resources.db, resources.redis
    results: dict[int, dict[str, Cell]] = {}
    try:
        await db.run(lambda uow: tenants.ensure_tenant(uow, TENANT))  # actions refuse unknown tenants
        deadline = time.monotonic() + 60
        while not await redis.exists(f"{QUEUE}:health-check"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start; its log: {worker_log}")
            await asyncio.sleep(0.05)
        async with await ActionClient.connect(redis_url, queue_name=QUEUE) as client:
            for c in args.concurrency:
                cells = {"direct": Cell(), "worker": Cell()}
                direct_refs = await new_refs(db, f"direct-{c}", c)
                worker_refs = await new_refs(db, f"worker-{c}", c)
                for r in range(args.rounds):
                    order = ["direct", "worker"] if r % 2 == 0 else ["worker", "direct"]
                    for form in order:
                        before = cpu_seconds(worker.pid)
                        if form == "direct":
                            cell = await measure([direct_op(db, ref) for ref in direct_refs], args.warmup, args.seconds)
                        else:
                            cell = await measure(
                                [worker_op(client, ref) for ref in worker_refs], args.warmup, args.seconds
                            )
                        cell.worker_cpu_s = cpu_seconds(worker.pid) - before
                        cells[form].add(cell)
                        log(f"{c:>3} writers  {form:<6} {cell.rate:8,.0f} msg/s  p50 {cell.pct(50):6.2f} ms")
                results[c] = cells
        total = await check_gap_free(db)
        log(f"{total:,} messages, every conversation gap-free")
    finally:
        await resources.close()
    return results


def table(results: dict[int, dict[str, Cell]], args: Args) -> str:
    cores = os.cpu_count() or 1
    out = [
        "| writers in flight | form | msg/s | p50 ms | p99 ms | worker / direct | worker process CPU µs/op |",
        "|--:|---|--:|--:|--:|--:|--:|",
    ]
    for c, cells in results.items():
        direct, worker = cells["direct"], cells["worker"]
        for name, cell in (("direct service call", direct), ("action through the worker", worker)):
            ratio = f"{worker.rate / direct.rate:.0%}" if name.startswith("action") and direct.rate else ""
            cpu = f"{cell.worker_cpu_s / cell.ops * 1e6:,.0f}" if name.startswith("action") and cell.ops else ""
            out.append(
                f"| {c} | {name} | {cell.rate:,.0f} | {cell.pct(50):.2f} | {cell.pct(99):.2f} | {ratio} | {cpu} |"
            )
    out.append("")
    out.append(
        f"{cores} cores shared by Postgres, Redis, the worker and this client; {args.rounds} interleaved rounds of "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s per form and concurrency; durable commits (fsync on). "
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python -m bench.jobs_bench`; load average at the end "
        f"{os.getloadavg()[0]:.1f} (above {cores} means other processes competed: compare the ratios, "
        "measured interleaved, more than the absolute numbers)."
    )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per form, per round")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", default="8,64", help="writers in flight, comma-separated")
    p.add_argument("--quick", action="store_true", help="1 s per cell, one round")
    p.add_argument("--write", action="store_true", help=f"update the table in {DOC.relative_to(ROOT)}")
    a = p.parse_args(argv)
    if a.quick:
        a.seconds, a.warmup, a.rounds = 1.0, 0.3, 1
    return Args(a.seconds, a.warmup, a.rounds, [int(x) for x in a.concurrency.split(",")], a.write)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    tokens.warm_up()
    workdir = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    started: list[EmbeddedServer] = []
    try:
        database_url = os.environ.get("BENCH_DATABASE_URL")
        redis_url = os.environ.get("BENCH_REDIS_URL")
        if not database_url:
            pg = start_postgres(workdir / "postgres", fsync=True)
            started.append(pg)
            database_url = pg.url
        if not redis_url:
            rd = start_redis(workdir / "redis", persist=False)
            started.append(rd)
            redis_url = rd.url
        upgrade(database_url)
        worker_log = workdir / "worker.log"
        worker = start_worker(database_url, redis_url, args, worker_log)
        try:
            results = asyncio.run(run(database_url, redis_url, args, worker, worker_log))
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    text = table(results, args)
    print(text)
    if args.write:
        doc = DOC.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        if BEGIN not in doc:
            raise SystemExit(f"{DOC} has no {BEGIN} … {END} block to replace")
        DOC.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S))
        log(f"updated {DOC}")


if __name__ == "__main__":
    main()
