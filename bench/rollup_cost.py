"""What the stats rollup triggers cost the append path (issue 11): service appends with the
stats_daily triggers enabled vs disabled, interleaved rounds, durable Postgres (fsync on).

    .venv/bin/python -m bench.rollup_cost              # 1 and 8 writers, single and batch-of-10 appends
    .venv/bin/python -m bench.rollup_cost --seconds 2  # shorter
    .venv/bin/python -m bench.rollup_cost --statement  # server time of one append statement, by form

Each writer appends to its own conversation. Rounds alternate on/off (on off, off on, ...) after a
CHECKPOINT so machine drift hits both alike; the triggers are toggled between rounds.

`--statement` times the single append statement itself with EXPLAIN (ANALYZE, TIMING OFF), in
alternating blocks of 50 per form: the statement before the in-statement rollup with the trigger
doing it ("trigger"), today's statement that upserts its own rollup while the trigger skips it
("in-statement"), and the old statement with the trigger disabled ("none", the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import uuid
from pathlib import Path

import asyncpg

from app.models import ConversationRef, Role
from app.services import messages
from bench.harness import alternating
from bench.run import (
    TENANT,
    TEXTS,
    Cell,
    CpuMeter,
    Op,
    Workload,
    checkpoint,
    log,
    measure,
    new_conversations,
    pool_pids,
)
from db.migrate import upgrade
from db.repositories import append_rollup
from db.repositories import messages as messages_repo
from db.session import Database, asyncpg_dsn, create_pool

# What an append fires (the conversation row trigger's WHEN never matches a counter bump).
TRIGGERS = [("messages", "stats_daily_messages_ins"), ("conversations", "stats_daily_conversation_moved")]


async def toggle(url: str, on: bool) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        verb = "ENABLE" if on else "DISABLE"
        for table, name in TRIGGERS:
            await conn.execute(f"ALTER TABLE {table} {verb} TRIGGER {name}")
    finally:
        await conn.close()


def append_op(db: Database, target: ConversationRef, prefix: str, batch: int) -> Op:
    n = 0

    async def op() -> None:
        nonlocal n
        n += 1
        msgs = [
            messages.new_message(
                role=Role.USER, content=TEXTS[(n + i) % len(TEXTS)], client_message_id=f"{prefix}-{n}-{i}"
            )
            for i in range(batch)
        ]
        if batch == 1:
            await db.run(lambda uow: messages.append(uow, TENANT, target, msgs[0]))
        else:
            await db.run(lambda uow: messages.append_batch(uow, TENANT, target, msgs))

    return op


async def run(url: str, postmaster: int | None, seconds: float, rounds: int) -> list[str]:
    cpu = CpuMeter(postmaster)
    lines = [
        "| writers | append | rollups | msg/s | rounds min–max | p50 ms | p99 ms | its backends µs/msg |",
        "|--:|---|---|--:|--:|--:|--:|--:|",
    ]
    for writers in (1, 8):
        for batch in (1, 10):
            db = Database(await create_pool(url, min_size=writers, max_size=writers))
            try:
                refs = await new_conversations(db, f"rc-{writers}-{batch}", writers)
                work = Workload(
                    [append_op(db, r, f"w{writers}-{batch}-{i}", batch) for i, r in enumerate(refs)],
                    await pool_pids(db.pool, writers),
                )
                parts: dict[bool, list[Cell]] = {True: [], False: []}
                for k in range(rounds):
                    for on in (True, False) if k % 2 == 0 else (False, True):
                        await toggle(url, on)
                        await checkpoint(url)
                        parts[on].append(await measure(work, warmup=0.3, seconds=seconds / rounds, cpu=cpu))
            finally:
                await db.close()
            for on in (True, False):
                c = Cell.merged(parts[on], None)
                rates = [p.rate * batch for p in parts[on]]
                backend = c.per_op_us(c.backend_cpu)
                row = (
                    f"| {writers} | {'single' if batch == 1 else f'batch of {batch}'} | {'on' if on else 'off'} "
                    f"| {c.rate * batch:,.0f} | {min(rates):,.0f}–{max(rates):,.0f} | {c.pct(50):.2f} | {c.pct(99):.2f} "
                    f"| {(backend / batch) if backend is not None else float('nan'):,.0f} |"
                )
                log(row)
                lines.append(row)
    await toggle(url, True)
    return lines


async def statement_cost(url: str, blocks: int) -> list[str]:
    """Server time of one single-append statement per form (EXPLAIN ANALYZE, alternating blocks)."""
    now = messages_repo._APPEND_BY_ID_PLAIN
    before = now.replace(append_rollup.MARK, "").replace(append_rollup.ROLLUP, "").replace("bump b, mark", "bump b")
    forms = {"trigger": (before, True), "in-statement": (now, True), "none": (before, False)}
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", TENANT)
        cid = uuid.uuid4()
        await conn.execute(
            "INSERT INTO conversations (tenant_id, id, session_id, agent_id) VALUES ($1, $2, $3, 'a')",
            TENANT,
            cid,
            f"stmt-{cid}",
        )
        timings: dict[str, list[float]] = {name: [] for name in forms}
        n = 0
        for _, name in alternating(list(forms), blocks):
            sql, trigger = forms[name]
            await toggle(url, trigger)
            explain = await conn.prepare("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql)
            for _ in range(50):
                n += 1
                args = [TENANT, cid, f"stmt-{n}", None, "user", TEXTS[n % len(TEXTS)], None, 12]
                async with conn.transaction():
                    plan = json.loads(await explain.fetchval(*args, None, None, "{}", None, None, None))
                timings[name].append(plan[0]["Execution Time"] * 1000)
        await toggle(url, True)
        brute = await conn.fetchval("SELECT sum(messages) FROM stats_daily WHERE tenant_id = $1 AND role <> ''", TENANT)
        rolled = sum(len(timings[name]) for name, (_, trigger) in forms.items() if trigger)
        assert brute == rolled, f"stats_daily counts {brute} messages, {rolled} were rolled up"
    finally:
        await conn.close()
    lines = [
        "| form | statements | p25 µs | median µs | mean µs | over none (median) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    floor = statistics.median(timings["none"])
    for name, values in timings.items():
        q = sorted(values)
        median = statistics.median(q)
        row = (
            f"| {name} | {len(q)} | {q[len(q) // 4]:,.0f} | {median:,.0f} | {statistics.mean(q):,.0f} "
            f"| {median - floor:+,.0f} |"
        )
        log(row)
        lines.append(row)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per form and case (default 4)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--statement", action="store_true", help="time the single append statement by form instead")
    p.add_argument("--blocks", type=int, default=20, help="--statement: blocks of 50 statements per form")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rollup-cost-"))
    from app.embedded.postgres import start_postgres

    server = start_postgres(workdir / "pgdata", fsync=True, dbname="bench")
    try:
        upgrade(server.url)
        if args.statement:
            lines = asyncio.run(statement_cost(server.url, args.blocks))
        else:
            lines = asyncio.run(run(server.url, server.pid, args.seconds, args.rounds))
        print("\n".join(lines))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
