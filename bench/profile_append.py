"""Where does the service append's time go? Variants between raw and service, same server, same run.

    .venv/bin/python -m bench.profile_append                 # variants table at 8 writers
    .venv/bin/python -m bench.profile_append --cprofile 20   # + cProfile of the client, top 20

Each variant removes or adds one piece of the service path, so the differences
attribute the cost (client CPU, Postgres CPU, round trips). The "what-if"
variants build their pool outside db.session (a no-op pool reset) or skip
`new_message`: they are measurements for the design discussion, not code the
service runs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from app.models import ConversationRef, NewMessage, Role
from app.services import messages
from bench.run import (
    RAW_APPEND,
    TENANT,
    TEXT_TOKENS,
    TEXTS,
    Args,
    Cell,
    CpuMeter,
    Op,
    _f,
    _runner,
    checkpoint,
    log,
    measure,
    new_conversations,
    raw_append_op,
    service_append_op,
    verify,
)
from db.repositories import messages as repo
from db.session import Database, _init_connection, asyncpg_dsn, create_pool


async def _noop_reset(conn: Any) -> None:
    """asyncpg still rolls back an open transaction before calling this (Connection._reset)."""


async def pool_without_reset(url: str, size: int) -> asyncpg.Pool:
    """db.session.create_pool's pool, minus the per-release reset query."""
    pool = await asyncpg.create_pool(
        asyncpg_dsn(url),
        min_size=size,
        max_size=size,
        init=_init_connection,
        statement_cache_size=256,
        reset=_noop_reset,
        server_settings={"statement_timeout": "15000", "application_name": "bench", "TimeZone": "UTC"},
    )
    assert pool is not None
    return pool


def append_args(target: ConversationRef, prefix: str, n: int) -> list[Any]:
    i = n % len(TEXTS)
    msg = NewMessage(role=Role.USER, content=TEXTS[i], client_message_id=f"{prefix}-{n}", token_count=TEXT_TOKENS[i])
    return [
        TENANT, target.id, msg.client_message_id, uuid.uuid4(), msg.role.value, msg.content, msg.name,
        msg.token_count, msg.tool_call_id, msg.tool_calls, msg.metadata, msg.execution, None, None,
    ]  # fmt: skip


def service_sql_op(stmt: asyncpg.prepared_stmt.PreparedStatement[Any], target: ConversationRef, prefix: str) -> Op:
    n = 0

    async def op() -> None:
        nonlocal n
        n += 1
        await stmt.fetchrow(*append_args(target, prefix, n))

    return op


def service_precounted_op(db: Database, target: ConversationRef, prefix: str) -> Op:
    """The service append with a NewMessage built directly: no validation, no tokenising."""
    n = 0

    async def op() -> None:
        nonlocal n
        n += 1
        i = n % len(TEXTS)
        msg = NewMessage(
            role=Role.USER, content=TEXTS[i], client_message_id=f"{prefix}-{n}", token_count=TEXT_TOKENS[i]
        )
        await db.run(lambda uow: messages.append(uow, TENANT, target, msg))

    return op


async def held(url: str, size: int, sql: str) -> tuple[asyncpg.Pool, list[Any], list[Any]]:
    pool = await create_pool(url, min_size=size, max_size=size)
    conns = [await pool.acquire() for _ in range(size)]
    return pool, conns, [await c.prepare(sql) for c in conns]


async def variants(url: str, writers: int, args: Args, cpu: CpuMeter, cprofile_top: int) -> None:
    setup = Database(await create_pool(url, min_size=1, max_size=1))
    rows: list[tuple[str, Cell]] = []
    profile_text = ""
    try:
        names = [
            "A raw CTE (held conns)",
            "B service SQL (held conns, prepared)",
            "C service, no-op pool reset, pre-counted msg",
            "D service, no-op pool reset",
            "E service as is",
        ]
        for name in names:
            label = f"p{name[0]}-{uuid.uuid4().hex[:6]}"
            refs = await new_conversations(setup, label, writers)
            await checkpoint(url)
            log(f"{name} ...")
            if name[0] in "AB":
                raw = name[0] == "A"
                pool, conns, stmts = await held(url, writers, RAW_APPEND if raw else repo.APPEND_BY_ID)
                try:
                    ops = [
                        raw_append_op(s, r.id, f"{label}-{i}") if raw and r.id else service_sql_op(s, r, f"{label}-{i}")
                        for i, (s, r) in enumerate(zip(stmts, refs, strict=True))
                    ]
                    cell = await measure(ops, warmup=args.warmup, seconds=args.seconds, cpu=cpu)
                finally:
                    for c in conns:
                        await pool.release(c)
                    await pool.close()
            else:
                if name[0] in "CD":
                    db = Database(await pool_without_reset(url, writers))
                else:
                    db = Database(await create_pool(url, min_size=writers, max_size=writers))
                maker = service_precounted_op if name[0] == "C" else service_append_op
                try:
                    ops = [maker(db, r, f"{label}-{i}") for i, r in enumerate(refs)]
                    cell = await measure(ops, warmup=args.warmup, seconds=args.seconds, cpu=cpu)
                finally:
                    await db.close()
            await verify(url, refs)
            log(f"  {cell.rate:,.0f} msg/s")
            rows.append((name, cell))
        if cprofile_top:
            refs = await new_conversations(setup, f"cprof-{uuid.uuid4().hex[:6]}", writers)
            db = Database(await create_pool(url, min_size=writers, max_size=writers))
            try:
                ops = [service_append_op(db, r, f"cprof-{i}") for i, r in enumerate(refs)]
                prof = cProfile.Profile()
                prof.enable()
                cell = await measure(ops, warmup=0.2, seconds=args.seconds, cpu=cpu)
                prof.disable()
            finally:
                await db.close()
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            stats.sort_stats("tottime").print_stats(cprofile_top)
            stats.sort_stats("cumulative").print_stats(cprofile_top)
            profile_text = f"cProfile of E at {cell.rate:,.0f} msg/s (profiler overhead included):\n{out.getvalue()}"
    finally:
        await setup.close()
    base = rows[0][1]
    print(f"\n{writers} writers, {args.seconds:g} s per variant\n")
    print("| variant | msg/s | vs raw | p50 ms | p99 ms | client CPU µs/msg | Postgres CPU µs/msg |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, c in rows:
        print(
            f"| {name} | {c.rate:,.0f} | {c.rate / base.rate:.0%} | {c.pct(50):.2f} | {c.pct(99):.2f} "
            f"| {_f(c.per_op_us(c.client_cpu))} | {_f(c.per_op_us(c.server_cpu))} |"
        )
    if profile_text:
        print("\n" + profile_text)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile_append")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--cprofile", type=int, default=0, metavar="TOP", help="also cProfile the service path")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ns = p.parse_args(argv)
    args = Args(ns.seconds, ns.warmup, [ns.writers], 0, False, False, False, ns.loop)
    workdir = Path(tempfile.mkdtemp(prefix="conversation-profile-"))
    from app.embedded import start_postgres
    from db.migrate import upgrade

    server = start_postgres(workdir / "pgdata", fsync=True, dbname="bench")
    try:
        upgrade(server.url)
        with _runner(ns.loop) as runner:
            runner.run(variants(server.url, ns.writers, args, CpuMeter(server.pid), ns.cprofile))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"done in {time.process_time():.0f} s CPU", file=sys.stderr)


if __name__ == "__main__":
    main()
