"""Where does the service append's time go? Steps from raw to service, same server, same run.

    .venv/bin/python -m bench.profile_append                 # steps table at 8 writers
    .venv/bin/python -m bench.profile_append --cprofile 25   # + cProfile of the service, top 25

Each step adds one layer of the service path to the one before, so the
differences in client CPU, Postgres CPU and round trips per message attribute
the cost. Steps are interleaved in rounds like bench.run; on a shared or noisy
machine trust the CPU columns over msg/s.

    A  raw CTE                     one prepared statement, held connection
    B  + service SQL               the service's append statement, held connection, prepared
    C  + service code              messages.append(UnitOfWork(conn), ...) on a held connection
    D  + Database.run              the same through the pool (acquire/release per message)
    E  + new_message               the service as the API calls it (validation, tiktoken)
    B' what-if                     B returning six columns instead of the message and the whole
                                   conversation header (compare with B, not with E)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from app.models import ConversationRef, NewMessage, Role
from app.services import messages
from bench.run import (
    TENANT,
    TEXT_TOKENS,
    TEXTS,
    Args,
    Cell,
    CpuMeter,
    Form,
    Op,
    Statement,
    Workload,
    _f,
    _runner,
    compare,
    count_round_trips,
    log,
    measure,
    new_conversations,
    pool_pids,
    raw_append_form,
    service_append_form,
    service_append_op,
    verify,
)
from db.repositories import messages as repo
from db.session import Connection, Database, UnitOfWork, create_pool


def prebuilt(prefix: str, n: int) -> NewMessage:
    """What new_message returns, without running it."""
    i = n % len(TEXTS)
    return NewMessage(role=Role.USER, content=TEXTS[i], client_message_id=f"{prefix}-{n}", token_count=TEXT_TOKENS[i])


@contextlib.asynccontextmanager
async def held_service_connections(url: str, n: int) -> AsyncIterator[Sequence[Connection]]:
    """n connections of a db.session pool (its codecs and settings), each held for the whole run."""
    pool = await create_pool(url, min_size=n, max_size=n)
    conns = [await pool.acquire() for _ in range(n)]
    try:
        yield conns
    finally:
        for c in conns:
            await pool.release(c)
        await pool.close()


#: What-if: the service's append returning only what an append's answer needs (the message's seq, id
#: and time and the conversation's counters), instead of the message and the whole header.
LEAN_APPEND = repo.APPEND_BY_ID.replace("SELECT *", "SELECT seq, id, created_at, last_seq, message_count")


def service_sql_form(url: str, refs: Sequence[ConversationRef], label: str, *, lean: bool = False) -> Form:
    def make(stmt: Statement, target: ConversationRef, prefix: str) -> Op:
        n = 0

        async def op() -> None:
            nonlocal n
            n += 1
            m = prebuilt(prefix, n)
            await stmt.fetchrow(
                TENANT, target.id, m.client_message_id, uuid.uuid4(), m.role.value, m.content, m.name,
                m.token_count, m.tool_call_id, m.tool_calls, m.metadata, m.execution, None, None,
            )  # fmt: skip

        return op

    @contextlib.asynccontextmanager
    async def setup() -> AsyncIterator[Workload]:
        async with held_service_connections(url, len(refs)) as conns:
            stmts = [await c.prepare(LEAN_APPEND if lean else repo.APPEND_BY_ID) for c in conns]
            ops = [make(s, r, f"{label}-{i}") for i, (s, r) in enumerate(zip(stmts, refs, strict=True))]
            yield Workload(ops, [c.get_server_pid() for c in conns])

    return Form("B' = B with a lean RETURNING (what-if)" if lean else "B + service SQL", setup, 1.0)


def service_code_form(url: str, refs: Sequence[ConversationRef], label: str) -> Form:
    def make(conn: Connection, target: ConversationRef, prefix: str) -> Op:
        n = 0

        async def op() -> None:
            nonlocal n
            n += 1
            await messages.append(UnitOfWork(conn), TENANT, target, prebuilt(prefix, n))

        return op

    @contextlib.asynccontextmanager
    async def setup() -> AsyncIterator[Workload]:
        async with held_service_connections(url, len(refs)) as conns:
            ops = [make(c, r, f"{label}-{i}") for i, (c, r) in enumerate(zip(conns, refs, strict=True))]
            yield Workload(ops, [c.get_server_pid() for c in conns])

    return Form("C + service code", setup, 1.0)


def database_run_form(url: str, refs: Sequence[ConversationRef], label: str, round_trips: float) -> Form:
    def make(db: Database, target: ConversationRef, prefix: str) -> Op:
        n = 0

        async def op() -> None:
            nonlocal n
            n += 1
            msg = prebuilt(prefix, n)
            await db.run(lambda uow: messages.append(uow, TENANT, target, msg))

        return op

    @contextlib.asynccontextmanager
    async def setup() -> AsyncIterator[Workload]:
        db = Database(await create_pool(url, min_size=len(refs), max_size=len(refs)))
        try:
            ops = [make(db, r, f"{label}-{i}") for i, r in enumerate(refs)]
            yield Workload(ops, await pool_pids(db.pool, len(refs)))
        finally:
            await db.close()

    return Form("D + Database.run (pool)", setup, round_trips)


async def steps(url: str, writers: int, args: Args, cpu: CpuMeter, cprofile_top: int) -> None:
    setup = Database(await create_pool(url, min_size=1, max_size=1))
    try:
        (rt_target,) = await new_conversations(setup, f"rt-{uuid.uuid4().hex[:6]}", 1)
        svc_rt = await count_round_trips(url, lambda db: service_append_op(db, rt_target, "rt"))

        def service(refs: list[ConversationRef], label: str) -> Form:
            form = service_append_form(url, refs, label, svc_rt)
            return Form("E + new_message (service)", form.setup, form.round_trips)

        def raw(refs: list[ConversationRef], label: str) -> Form:
            form = raw_append_form(url, refs, label)
            return Form("A raw CTE", form.setup, form.round_trips)

        builders: list[Callable[[list[ConversationRef], str], Form]] = [
            raw,
            lambda refs, label: service_sql_form(url, refs, label),
            lambda refs, label: service_code_form(url, refs, label),
            lambda refs, label: database_run_form(url, refs, label, svc_rt),
            service,
            lambda refs, label: service_sql_form(url, refs, label, lean=True),
        ]
        forms: list[Form] = []
        written: list[ConversationRef] = []
        for build in builders:
            label = f"prof-{uuid.uuid4().hex[:6]}"
            refs = await new_conversations(setup, label, writers)
            written += refs
            forms.append(build(refs, label))
        log(f"{writers} writers:")
        cells = await compare(url, forms, args, cpu)
        await verify(url, written)
        print_steps(forms, cells, writers, args)
        if cprofile_top:
            await profile(url, setup, writers, args, cpu, cprofile_top)
    finally:
        await setup.close()


def print_steps(forms: Sequence[Form], cells: dict[str, Cell], writers: int, args: Args) -> None:
    raw = cells[forms[0].key]
    print(f"\n{writers} writers, {args.rounds} interleaved rounds, {args.seconds:g} s measured per step\n")
    print(
        "| step | msg/s | vs raw | p50 ms | p99 ms | round trips | client CPU µs/msg | Δ client "
        "| its backends' CPU µs/msg | Δ backends | Postgres background µs/msg |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    prev: Cell | None = None
    for f in forms:
        c = cells[f.key]
        client, backends = c.per_op_us(c.client_cpu), c.per_op_us(c.backend_cpu)
        d_client = d_backends = None
        if prev is not None:
            pc, pb = prev.per_op_us(prev.client_cpu), prev.per_op_us(prev.backend_cpu)
            d_client = client - pc if client is not None and pc is not None else None
            d_backends = backends - pb if backends is not None and pb is not None else None
        print(
            f"| {f.key} | {c.rate:,.0f} | {c.rate / raw.rate:.0%} | {c.pct(50):.2f} | {c.pct(99):.2f} "
            f"| {_f(c.round_trips, '{:.0f}')} | {_f(client)} | {_f(d_client, '{:+,.0f}')} | {_f(backends)} "
            f"| {_f(d_backends, '{:+,.0f}')} | {_f(c.per_op_us(c.background_cpu))} |"
        )
        prev = c


async def profile(url: str, setup: Database, writers: int, args: Args, cpu: CpuMeter, top: int) -> None:
    refs = await new_conversations(setup, f"cprof-{uuid.uuid4().hex[:6]}", writers)
    db = Database(await create_pool(url, min_size=writers, max_size=writers))
    try:
        work = Workload([service_append_op(db, r, f"cprof-{i}") for i, r in enumerate(refs)], [])
        prof = cProfile.Profile()
        prof.enable()
        cell = await measure(work, warmup=0.2, seconds=args.seconds, cpu=cpu)
        prof.disable()
    finally:
        await db.close()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(f"\ncProfile of the service at {cell.rate:,.0f} msg/s (profiler overhead included):")
    print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile_append")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per step (default 6)")
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--cprofile", type=int, default=0, metavar="TOP", help="also cProfile the service path")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ns = p.parse_args(argv)
    args = Args(
        seconds=ns.seconds,
        warmup=ns.warmup,
        rounds=max(1, ns.rounds),
        writers=[ns.writers],
        readers=0,
        hot=False,
        pgbench=False,
        write=False,
        loop=ns.loop,
    )
    workdir = Path(tempfile.mkdtemp(prefix="conversation-profile-"))
    from app.embedded.postgres import start_postgres
    from db.migrate import upgrade

    server = start_postgres(workdir / "pgdata", fsync=True, dbname="bench")
    try:
        upgrade(server.url)
        with _runner(ns.loop) as runner:
            runner.run(steps(server.url, ns.writers, args, CpuMeter(server.pid), ns.cprofile))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
