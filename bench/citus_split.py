"""Where a Citus append / "last 50" read spends its CPU: pgbench, one client, prepared, per function body.

One tenant whose shard group is on worker 1; for each form below, `pgbench -n -c 1 -M prepared`
calls it N times and the CPU of each server (postmaster and backends, /proc) is divided by N:

- `append_message()` / `history_page()` on worker 1 (the dispatcher: lock, placement check, EXECUTE
  of the group's function), and the same through the coordinator (the delegated call);
- the group's static function called directly (`…_s<shard>`: the shard-direct body alone);
- the routed body (`…_routed`: every statement through Citus' planner, as before the dispatcher).

Run: `python -m bench.citus_split [--calls N]` (needs the Citus source). docs/scaling.md has the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

from app.embedded.citus import citus_install, start_citus_cluster
from app.services import conversations
from bench.citus_bench import _PLACEMENT, _cpu_s
from db.migrate import upgrade
from db.session import Database, create_pool


async def _setup(url: str, port: int) -> tuple[str, str, int]:
    """A tenant on the worker listening on `port`, its conversation (50 messages) and shard id."""
    db = Database(await create_pool(url, min_size=1, max_size=2))
    try:
        async with db.read() as conn:
            n = 0
            while await conn.fetchval(_PLACEMENT, tenant := f"split-{n}") != port:
                n += 1
            shard = int(
                await conn.fetchval("SELECT get_shard_id_for_distribution_column('conversations', $1::text)", tenant)
            )
        conv = await db.run(lambda uow: conversations.create(uow, tenant, session_id="split"))
        return tenant, str(conv.id), shard
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cs-citus-split-"))
    try:
        cluster = start_citus_cluster(root / "citus", fsync=True)
        upgrade(cluster.url)
        worker = cluster.workers[0]
        tenant, conv, shard = asyncio.run(_setup(cluster.url, worker.port))
        pgbench = str(citus_install() / "bin" / "pgbench")
        append_args = f"'{tenant}', '{conv}'::uuid, NULL, NULL, NULL, 'user', 'message ' || repeat('word ', 30), NULL, 1, NULL, NULL, '{{}}'::jsonb, NULL, NULL, NULL"
        page_args = f"'{tenant}', '{conv}'::uuid, NULL, false, 0, NULL, 50"
        forms = [
            ("append_message() via the coordinator", cluster.coordinator, f"append_message({append_args})"),
            ("append_message() on the worker (dispatcher)", worker, f"append_message({append_args})"),
            (f"append_message_s{shard}() on the worker", worker, f"append_message_s{shard}({append_args})"),
            ("append_message_routed() on the worker", worker, f"append_message_routed({append_args})"),
            ("history_page() via the coordinator", cluster.coordinator, f"history_page({page_args})"),
            ("history_page() on the worker (dispatcher)", worker, f"history_page({page_args})"),
            (f"history_page_s{shard}() on the worker", worker, f"history_page_s{shard}({page_args})"),
            ("history_page_routed() on the worker", worker, f"history_page_routed({page_args})"),
        ]
        print(f"\n{args.calls} calls each, one client, prepared (CPU ms per call)")
        print("| form | coordinator | worker 1 | latency ms |\n|---|---|---|---|")
        for name, server, call in forms:
            script = root / "call.sql"
            script.write_text(f"SELECT * FROM {call};\n")
            before = (_cpu_s(cluster.coordinator.pid), _cpu_s(worker.pid))
            out = subprocess.run(
                [pgbench, "-n", "-c", "1", "-M", "prepared", "-t", str(args.calls), "-f", str(script), server.url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            after = (_cpu_s(cluster.coordinator.pid), _cpu_s(worker.pid))
            latency = next(line.split("=")[1].split()[0] for line in out.splitlines() if "latency average" in line)
            coord, work = ((a - b) * 1000 / args.calls for a, b in zip(after, before, strict=True))
            print(f"| {name} | {coord:.2f} | {work:.2f} | {latency} |")
        cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
