"""Single Postgres vs Citus (coordinator + 2 workers) on this machine, side by side in one run.

Two numbers per engine, through the service layer (app/services, no HTTP, no hot cache):
- **append throughput**: CONCURRENCY writers, each appending to its own conversation of its own
  tenant (tenants spread over shards on Citus), messages/s;
- **"last 50" read**: `messages.history_by_ref(last=50)` of random conversations, reads/s and p50.

Citus is measured two ways: the service's pool on the coordinator (every call takes the coordinator
hop), and "querying from any node" (Citus 11+ syncs its metadata to the workers, so a worker plans and
delegates just as the coordinator does): writer/reader w uses a pool on worker w mod 2, the way N API
processes would each point DATABASE_URL at a different worker. For every engine the CPU time of each
server (the postmaster and all its backends, reaped ones included) and of this client process is read
from /proc around each phase and divided by the operations: where the time goes, per operation.

Both engines are embedded servers started here with the same settings (fsync on). On one 2-core
box the three Citus servers and the client share the CPUs, so this measures the cost of the hop and
of the per-node work, not the scale-out (docs/scaling.md has the projection). `--rounds N` alternates
the engines N times and reports each engine's median round, to tame the noise of a shared machine.

Run: `python -m bench.citus_bench [--messages N] [--concurrency C] [--rounds R]` (needs the Citus source).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from app.embedded.citus import start_citus_cluster
from app.embedded.postgres import start_postgres
from app.embedded.process import EmbeddedServer
from app.models import Conversation, ConversationRef, NewMessage, Role
from app.services import conversations, messages
from db import session as db_session
from db.migrate import upgrade
from db.session import Database, UnitOfWork, create_pool

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    # Fields after the command name (which may hold spaces): state is [0], ppid [1], utime [11].
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_s(pid: int | None) -> float:
    """CPU seconds of a process tree (Linux /proc): live processes' own time plus their reaped
    children's (a backend that exited during the phase is in its postmaster's cutime/cstime)."""
    if pid is None:
        return 0.0
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue  # exited while listing
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat(current)
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
        todo.extend(parents.get(current, []))
    return total


def _client_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class Engine:
    name: str
    urls: list[str]  # writer/reader w uses urls[w % len(urls)]
    servers: dict[str, EmbeddedServer]  # role -> server whose CPU is measured


def _cpu_snapshot(engine: Engine) -> dict[str, float]:
    snap = {role: _cpu_s(server.pid) for role, server in engine.servers.items()}
    snap["client"] = _client_cpu_s()
    return snap


def _per_op_ms(before: dict[str, float], after: dict[str, float], ops: int) -> dict[str, float]:
    return {role: (after[role] - before[role]) * 1000 / ops for role in before}


_PLACEMENT = """
SELECT p.nodeport FROM pg_dist_shard_placement p
WHERE p.shardid = get_shard_id_for_distribution_column('conversations', $1::text)
"""


async def _spread_tenants(db: Database, n: int) -> list[str]:
    """n fresh tenants; on Citus as many on each worker as can be (random names can all hash to one
    worker, which then does all the work while the other idles: a different measurement)."""
    names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    async with db.read() as conn:
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"):
            return names
        by_node: dict[int, list[str]] = {}
        workers = await conn.fetchval("SELECT count(*) FROM pg_dist_node WHERE groupid > 0")
        while sum(len(v) for v in by_node.values()) < n:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            bucket = by_node.setdefault(await conn.fetchval(_PLACEMENT, name), [])
            if len(bucket) < -(-n // workers):
                bucket.append(name)
    # Two of one node's tenants, then two of the next: writer w uses pool w mod 2 (via any node), so
    # half the writers' tenants are on their pool's node and half are not, as with random names.
    pairs = [[b[i : i + 2] for i in range(0, len(b), 2)] for b in by_node.values()]
    return [t for group in zip_longest(*pairs, fillvalue=[]) for pair in group for t in pair]


async def _measure(engine: Engine, total: int, concurrency: int, reads: int) -> dict[str, object]:
    # The Citus forms are chosen per process once a connection finds the extension: rounds alternate
    # engines, so the flag is cleared for each (the pools' first connection sets it again on Citus).
    db_session._CITUS[0] = False
    dbs = [Database(await create_pool(url, min_size=concurrency, max_size=concurrency + 2)) for url in engine.urls]
    try:
        tenants = await _spread_tenants(dbs[0], concurrency)
        convs: list[Conversation] = []
        for w, t in enumerate(tenants):

            async def create(uow: UnitOfWork, t: str = t) -> Conversation:
                return await conversations.create(uow, t, session_id="bench")

            convs.append(await dbs[w % len(dbs)].run(create))
        per_writer = total // concurrency

        async def writer(w: int) -> None:
            db = dbs[w % len(dbs)]
            for i in range(per_writer):
                msg = messages.new_message(role=Role.USER, content=f"message {i} " + "word " * 30)

                async def work(uow: UnitOfWork, msg: NewMessage = msg) -> None:
                    await messages.append(uow, tenants[w], ConversationRef(id=convs[w].id), msg)

                await db.run(work)

        cpu = _cpu_snapshot(engine)
        began = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(concurrency)))
        append_s = time.perf_counter() - began
        append_cpu = _per_op_ms(cpu, _cpu_snapshot(engine), per_writer * concurrency)

        latencies: list[float] = []

        async def reader(r: int, n: int) -> None:
            db = dbs[r % len(dbs)]
            for _ in range(n):
                w = random.randrange(concurrency)
                started = time.perf_counter()
                async with db.read() as conn:
                    page = await messages.history_by_ref(
                        conn, tenants[w], ConversationRef(id=convs[w].id), messages.HistoryArgs(last=50)
                    )
                latencies.append(time.perf_counter() - started)
                assert len(page.items) == min(50, per_writer)

        cpu = _cpu_snapshot(engine)
        began = time.perf_counter()
        await asyncio.gather(*(reader(r, reads // concurrency) for r in range(concurrency)))
        read_s = time.perf_counter() - began
        read_cpu = _per_op_ms(cpu, _cpu_snapshot(engine), len(latencies))
        return {
            "append_per_s": per_writer * concurrency / append_s,
            "reads_per_s": len(latencies) / read_s,
            "read_p50_ms": statistics.median(latencies) * 1000,
            "append_cpu": append_cpu,
            "read_cpu": read_cpu,
        }
    finally:
        for db in dbs:
            await db.close()


def _cpu_cell(cpu: object) -> str:
    assert isinstance(cpu, dict)
    return " / ".join(f"{role} {ms:.2f}" for role, ms in cpu.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cs-citus-bench-"))
    try:
        single = start_postgres(root / "single", fsync=True)
        upgrade(single.url)
        cluster = start_citus_cluster(root / "citus", fsync=True)
        upgrade(cluster.url)
        nodes = {"coordinator": cluster.coordinator} | {f"worker{i + 1}": w for i, w in enumerate(cluster.workers)}
        engines = [
            Engine("single Postgres", [single.url], {"server": single}),
            Engine("Citus via the coordinator", [cluster.url], nodes),
            Engine("Citus via any node (pools on the 2 workers)", [w.url for w in cluster.workers], nodes),
        ]
        rounds: dict[str, list[dict[str, object]]] = {e.name: [] for e in engines}
        for _ in range(args.rounds):
            for engine in engines:
                rounds[engine.name].append(asyncio.run(_measure(engine, args.messages, args.concurrency, args.reads)))
        results = {
            name: sorted(rs, key=lambda r: float(r["append_per_s"]))[len(rs) // 2]  # type: ignore[arg-type]
            for name, rs in rounds.items()
        }
        base = results["single Postgres"]
        print(
            f"\n{args.messages} appends by {args.concurrency} writers, {args.reads} 'last 50' reads, "
            f"median of {args.rounds} round(s), load average {os.getloadavg()[0]:.1f}"
        )
        print("| engine | appends/s | last-50 reads/s | read p50 ms |\n|---|---|---|---|")
        for name, r in results.items():
            a, b = float(r["append_per_s"]), float(base["append_per_s"])  # type: ignore[arg-type]
            ra, rb = float(r["reads_per_s"]), float(base["reads_per_s"])  # type: ignore[arg-type]
            print(f"| {name} | {a:.0f} ({a / b:.0%}) | {ra:.0f} ({ra / rb:.0%}) | {float(r['read_p50_ms']):.2f} |")  # type: ignore[arg-type]
        print("\nEvery round (appends/s, reads/s):")
        for name, rs in rounds.items():
            cells = ", ".join(f"{float(r['append_per_s']):.0f} / {float(r['reads_per_s']):.0f}" for r in rs)  # type: ignore[arg-type]
            print(f"- {name}: {cells}")
        print("\nCPU ms per operation (median round)\n| engine | per append | per last-50 read |\n|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {_cpu_cell(r['append_cpu'])} | {_cpu_cell(r['read_cpu'])} |")
        cluster.stop()
        single.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
