"""`conversation-service import` throughput on conversations of ~100 messages, durable Postgres.

    .venv/bin/python -m bench.import_bench                       # 300 conversations x 100 messages, --jobs 1 and 8
    .venv/bin/python -m bench.import_bench --conversations 100 --jobs 1,4,8,16

Starts its own embedded Postgres with fsync on (the tests' servers run fsync off), writes a JSONL file
in the export format (token counts included, as an export has them), runs the real CLI command as a
subprocess into a fresh tenant per run, then once more into the same tenant (idempotent: nothing added).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.run import TEXTS, log
from db.migrate import upgrade


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


def run_import(url: str, path: Path, tenant: str, jobs: int) -> tuple[float, str]:
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": ""}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "import", str(path), "--tenant", tenant, "--jobs", str(jobs)],
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
    p.add_argument("--conversations", type=int, default=300)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--jobs", default="1,8")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="import-bench-"))
    from app.embedded.postgres import start_postgres

    server = start_postgres(workdir / "pgdata", fsync=True, dbname="bench")
    try:
        upgrade(server.url)
        path = workdir / "lines.jsonl"
        total = write_file(path, args.conversations, args.messages)
        log(f"{total} messages in {args.conversations} conversations, {path.stat().st_size / 1e6:.1f} MB")
        print("| --jobs | messages | wall s (whole CLI run) | msg/s | re-run (idempotent) s | re-run summary |")
        print("|--:|--:|--:|--:|--:|---|")
        for jobs in [int(j) for j in args.jobs.split(",")]:
            tenant = f"imp-{jobs}-{uuid.uuid4().hex[:6]}"
            wall, summary = run_import(server.url, path, tenant, jobs)
            again, again_summary = run_import(server.url, path, tenant, jobs)
            log(f"jobs {jobs}: {summary}")
            print(f"| {jobs} | {total:,} | {wall:.2f} | {total / wall:,.0f} | {again:.2f} | {again_summary} |")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
