"""`conversation-service import` throughput on conversations of ~100 messages, durable Postgres.

    .venv/bin/python -m bench.import_bench             # 500 conversations x 100 messages: one line per transaction
                                                       # (--batch 1 --jobs 8, the path before) and batches (100, --jobs 4)
    .venv/bin/python -m bench.import_bench --conversations 1000 --runs 1:8,50:2,100:4 --rounds 3
    .venv/bin/python -m bench.import_bench --runs 100:4 --index default,256,off --rounds 3

Starts its own embedded Postgres with fsync on (the tests' servers run fsync off), writes a JSONL file
in the export format (token counts included, as an export has them), runs the real CLI command as a
subprocess into a fresh tenant per run, then once more into the same tenant (idempotent: nothing added).
Rounds alternate the configurations. "msg/s" is the CLI's own count (from its first line read to its
last commit); "wall" includes the process start (~1 s of imports).

--index alternates storage parameters of the full-text GIN index (`ix_messages_search`): `migrated`
(as the migrations left it), `default` (Postgres' own: fastupdate on, 4 MB), a pending-list limit in
kB (fastupdate on), or `off` (fastupdate off).
Each run starts with the pending list emptied; "merge after" is the server CPU of emptying what the
import left in it (work a later insert or autovacuum would otherwise pay), per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.run import TEXTS, log
from db.migrate import upgrade
from db.session import asyncpg_dsn


def write_file(path: Path, conversations: int, per: int) -> int:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for c in range(conversations):
            at = start + timedelta(minutes=c)
            line = {
                "format": "conversation-service/conversation@1",
                "conversation": {
                    "session_id": f"imp-{c}",
                    "agent_id": f"agent-{c % 7}",
                    "status": "closed",
                    "created_at": at.isoformat(),
                    "closed_at": (at + timedelta(hours=1)).isoformat(),
                },
                "messages": [
                    {
                        "id": str(uuid.uuid4()),
                        "seq": i + 1,
                        "role": "user" if i % 2 == 0 else "assistant",
                        "content": TEXTS[(c + i) % len(TEXTS)],
                        "client_message_id": f"m-{c}-{i}",
                        "token_count": 40,
                        "created_at": (at + timedelta(seconds=10 * i)).isoformat(),
                    }
                    for i in range(per)
                ],
            }
            n += per
            out.write(json.dumps(line) + "\n")
    return n


def _server_cpu(pgdata: Path) -> float:
    """CPU seconds of the postmaster and all its processes: exited backends are in its children's times."""
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")

    def times(p: int, children: bool) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0  # exited meanwhile: counted in the postmaster's children's times
        return sum(int(f) for f in fields[11 : 15 if children else 13]) / tick

    kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return times(pid, True) + sum(times(k, False) for k in kids)


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


INDEX = "ix_messages_search"


def set_index(url: str, variant: str) -> None:
    """The GIN index as `variant` says, its pending list emptied."""
    sql = "" if variant == "migrated" else f"ALTER INDEX {INDEX} RESET (fastupdate, gin_pending_list_limit); "
    if variant not in ("migrated", "default"):
        options = (
            "fastupdate = off" if variant == "off" else f"fastupdate = on, gin_pending_list_limit = {int(variant)}"
        )
        sql += f"ALTER INDEX {INDEX} SET ({options}); "
    psql(url, sql + f"SELECT gin_clean_pending_list('{INDEX}')")


def psql(url: str, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def run_import(url: str, path: Path, tenant: str, batch: int, jobs: int) -> tuple[float, str]:
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": ""}
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "import",
            str(path),
            "--tenant",
            tenant,
            "--jobs",
            str(jobs),
            "--batch",
            str(batch),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return wall, done.stderr.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--conversations", type=int, default=500)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--runs", default="1:8,100:4", help="batch:jobs pairs (batch 1 = one line per transaction)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument(
        "--index", default="migrated", help="GIN index variants: migrated, default, a pending-list limit in kB, off"
    )
    args = p.parse_args()
    variants = args.index.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="import-bench-"))
    from app.embedded.postgres import start_postgres

    server = start_postgres(workdir / "pgdata", fsync=True, dbname="bench")
    try:
        upgrade(server.url)
        path = workdir / "lines.jsonl"
        total = write_file(path, args.conversations, args.messages)
        log(f"{total} messages in {args.conversations} conversations, {path.stat().st_size / 1e6:.1f} MB")
        print(
            "| GIN index | --batch | --jobs | messages | wall s (whole CLI run) | msg/s (CLI's count) "
            "| server CPU µs/msg | merge after µs/msg | importer CPU µs/msg | re-run (idempotent) s |"
        )
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for k in range(args.rounds):
            for variant in variants if k % 2 == 0 else list(reversed(variants)):
                for run in args.runs.split(","):
                    batch, jobs = (int(x) for x in run.split(":"))
                    tenant = f"imp-{batch}-{jobs}-{uuid.uuid4().hex[:6]}"
                    set_index(server.url, variant)
                    server0, client0 = _server_cpu(server.data_dir), _client_cpu()
                    wall, summary = run_import(server.url, path, tenant, batch, jobs)
                    server1 = _server_cpu(server.data_dir)
                    server_us = (server1 - server0) * 1e6 / total
                    client_us = (_client_cpu() - client0) * 1e6 / total
                    psql(server.url, f"SELECT gin_clean_pending_list('{INDEX}')")
                    merge_us = (_server_cpu(server.data_dir) - server1) * 1e6 / total
                    again, again_summary = run_import(server.url, path, tenant, batch, jobs)
                    log(f"{variant} batch {batch} jobs {jobs}: {summary} / re-run: {again_summary}")
                    rate = summary.rsplit("(", 1)[-1].split(" ")[0]
                    print(
                        f"| {variant} | {batch} | {jobs} | {total:,} | {wall:.2f} | {rate} | {server_us:.0f} "
                        f"| {merge_us:.0f} | {client_us:.0f} | {again:.2f} |"
                    )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
