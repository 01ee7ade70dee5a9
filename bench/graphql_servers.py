"""Servers for bench/graphql_bench.py, one per process: `ours` (the real app) and `bare`
(Starlette + asyncpg doing the same database work with no GraphQL and no service layer)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import tokens
from db.repositories.messages import APPEND_BY_SESSION
from db.repositories.records import MESSAGE_COLUMNS
from db.session import create_pool

LAST_50 = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY seq DESC LIMIT $3"
)


def bare_app(database_url: str) -> Starlette:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tokens.warm_up()
        state["pool"] = await create_pool(database_url, min_size=4, max_size=20)
        yield
        await state["pool"].close()

    def row_json(row: Any) -> dict[str, Any]:
        out = dict(row)
        out["id"], out["conversation_id"] = str(out["id"]), str(out["conversation_id"])
        out["created_at"] = out["created_at"].isoformat()
        return out

    async def add(request: Request) -> Response:
        body = orjson.loads(await request.body())
        count = tokens.count_message(body["content"])
        async with state["pool"].acquire() as conn:
            row = await conn.fetchrow(
                APPEND_BY_SESSION,
                body["tenant"],
                body["sessionId"],
                None,
                uuid.uuid4(),
                body["role"],
                body["content"],
                None,
                count,
                None,
                None,
                {},
                None,
                None,
                None,
            )
        return Response(
            orjson.dumps({"message": {"seq": row["seq"], "id": str(row["id"])}}), media_type="application/json"
        )

    async def last(request: Request) -> Response:
        body = orjson.loads(await request.body())
        async with state["pool"].acquire() as conn:
            rows = await conn.fetch(LAST_50, body["tenant"], uuid.UUID(body["conversationId"]), body["last"])
        return Response(
            orjson.dumps({"messages": [row_json(r) for r in reversed(rows)]}), media_type="application/json"
        )

    return Starlette(
        routes=[Route("/add", add, methods=["POST"]), Route("/last", last, methods=["POST"])], lifespan=lifespan
    )


def trace_memory(directory: str, every_s: float) -> None:
    """CS_TRACEMALLOC=<dir> (bench only, never the product): trace allocations with 8 frames and
    dump a snapshot every CS_TRACEMALLOC_EVERY seconds to <dir>/snapshot-<seconds>.tracemalloc,
    with the traced total and RSS in <dir>/totals.txt, so that `python -m bench.graphql_servers
    compare A B` can say what grew between two moments of a soak (and whether Python objects
    account for the RSS growth at all, or the allocator does)."""
    import tracemalloc

    from bench.harness import rss_kib

    tracemalloc.start(8)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def loop() -> None:
        while True:
            time.sleep(every_s)
            seconds = round(time.monotonic() - started)
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [
                    tracemalloc.Filter(False, tracemalloc.__file__),
                    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
                ]
            )
            snapshot.dump(str(out / f"snapshot-{seconds:05d}.tracemalloc"))
            traced, _ = tracemalloc.get_traced_memory()
            with (out / "totals.txt").open("a") as f:
                f.write(f"{seconds} traced_kib={traced // 1024} rss_kib={rss_kib(os.getpid())}\n")

    # A daemon thread: the snapshot holds the GIL while it copies, which only slows the bench.
    threading.Thread(target=loop, name="tracemalloc-dumper", daemon=True).start()


def compare(before: str, after: str, key: str = "traceback", limit: int = 25) -> None:
    """Print the allocation sites that grew most between two dumped snapshots."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(before), tracemalloc.Snapshot.load(after)
    print(
        f"traced: {sum(s.size for s in old.statistics('filename')) / 2**20:.1f} MiB -> "
        f"{sum(s.size for s in new.statistics('filename')) / 2**20:.1f} MiB"
    )
    for stat in new.compare_to(old, key)[:limit]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  now {stat.size / 1024:9.1f} KiB")
        for line in stat.traceback.format()[-16:] if key == "traceback" else stat.traceback.format()[:2]:
            print("    " + line)


def start_ours(
    port: int, database_url: str, redis_url: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The real app in its own uvicorn process (its RSS and CPU are its own), once it answers."""
    from bench.harness import start

    return start(
        [sys.executable, "-m", "bench.graphql_servers", "ours", str(port), database_url, redis_url],
        port,
        "/healthz",
        env,
    )


def main() -> None:
    if sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "traceback")
        return
    if directory := os.environ.get("CS_TRACEMALLOC"):
        trace_memory(directory, float(os.environ.get("CS_TRACEMALLOC_EVERY", "60")))
    kind, port, database_url, redis_url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if kind == "bare":
        app = bare_app(database_url)
    else:
        from app.main import create_app
        from app.settings import Settings

        app = create_app(Settings(_env_file=None, log_level="WARNING"), database_url=database_url, redis_url=redis_url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
