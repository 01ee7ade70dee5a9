"""Single Postgres vs Citus (coordinator + 2 workers) on this machine, side by side in one run.

Two numbers per engine, through the service layer (app/services, no HTTP, no hot cache):
- **append throughput**: CONCURRENCY writers, each appending to its own conversation of its own
  tenant (tenants spread over shards on Citus), messages/s;
- **"last 50" read**: `messages.history_by_ref(last=50)` of random conversations, reads/s and p50.

Both engines are embedded servers started here with the same settings (fsync on). On one 2-core
box the three Citus servers and the coordinator hop share the CPUs with the client, so this measures
the cost of the hop, not the scale-out (docs/scaling.md has the projection).

Run: `python -m bench.citus_bench [--messages N] [--concurrency C]` (needs the Citus source).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from app.embedded.citus import start_citus_cluster
from app.embedded.postgres import start_postgres
from app.models import Conversation, ConversationRef, NewMessage, Role
from app.services import conversations, messages
from db.migrate import upgrade
from db.session import Database, UnitOfWork, create_pool


async def _measure(url: str, total: int, concurrency: int, reads: int) -> dict[str, float]:
    db = Database(await create_pool(url, min_size=concurrency, max_size=concurrency + 2))
    try:
        tenants = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(concurrency)]
        convs: list[Conversation] = []
        for t in tenants:

            async def create(uow: UnitOfWork, t: str = t) -> Conversation:
                return await conversations.create(uow, t, session_id="bench")

            convs.append(await db.run(create))
        per_writer = total // concurrency

        async def writer(w: int) -> None:
            for i in range(per_writer):
                msg = messages.new_message(role=Role.USER, content=f"message {i} " + "word " * 30)

                async def work(uow: UnitOfWork, msg: NewMessage = msg) -> None:
                    await messages.append(uow, tenants[w], ConversationRef(id=convs[w].id), msg)

                await db.run(work)

        began = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(concurrency)))
        append_s = time.perf_counter() - began

        latencies: list[float] = []

        async def reader(n: int) -> None:
            for _ in range(n):
                w = random.randrange(concurrency)
                started = time.perf_counter()
                async with db.read() as conn:
                    page = await messages.history_by_ref(
                        conn, tenants[w], ConversationRef(id=convs[w].id), messages.HistoryArgs(last=50)
                    )
                latencies.append(time.perf_counter() - started)
                assert len(page.items) == min(50, per_writer)

        began = time.perf_counter()
        await asyncio.gather(*(reader(reads // concurrency) for _ in range(concurrency)))
        read_s = time.perf_counter() - began
        return {
            "append_per_s": per_writer * concurrency / append_s,
            "reads_per_s": len(latencies) / read_s,
            "read_p50_ms": statistics.median(latencies) * 1000,
        }
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cs-citus-bench-"))
    try:
        single = start_postgres(root / "single", fsync=True)
        upgrade(single.url)
        cluster = start_citus_cluster(root / "citus", fsync=True)
        upgrade(cluster.url)
        results = {}
        for name, url in (("single Postgres", single.url), ("Citus (coordinator + 2 workers)", cluster.url)):
            results[name] = asyncio.run(_measure(url, args.messages, args.concurrency, args.reads))
        base = results["single Postgres"]
        print(f"\n{args.messages} appends by {args.concurrency} writers, {args.reads} 'last 50' reads")
        print("| engine | appends/s | last-50 reads/s | read p50 ms |\n|---|---|---|---|")
        for name, r in results.items():
            print(
                f"| {name} | {r['append_per_s']:.0f} ({r['append_per_s'] / base['append_per_s']:.0%}) "
                f"| {r['reads_per_s']:.0f} ({r['reads_per_s'] / base['reads_per_s']:.0%}) | {r['read_p50_ms']:.2f} |"
            )
        cluster.stop()
        single.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
