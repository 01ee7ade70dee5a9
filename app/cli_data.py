"""Data commands: `export`, `import` (JSONL, one conversation per line) and `dead-letters`.

    conversation-service export [--tenant T ...] [--from DATE] [--to DATE] [--output FILE]
    conversation-service import FILE|- [--tenant T]
    conversation-service dead-letters [--limit N]

A progress bar is drawn on stderr when it is a terminal (or with --progress); a summary line is
always printed there, so stdout carries only the data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from app import runtime
from app.errors import BadUserInput, DomainError, ServiceUnavailable
from app.settings import Settings

# A batch also ends at this many messages: one transaction's COPY stays a few MB.
BATCH_MESSAGES = 10_000


class Progress:
    """A small progress bar on a stream (no dependency): redrawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self, total: int | None, unit: str, *, stream: IO[str] | None = None, enabled: bool | None = None):
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int = 1, *, done: int | None = None) -> None:
        self.done = done if done is not None else self.done + n
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * self.WIDTH)
            text = f"[{bar:<{self.WIDTH}}] {share:6.1%} {self.done}/{self.total} {self.unit}"
        else:
            text = f"{self.done} {self.unit}"
        self.stream.write(f"\r{text}  {rate:,.0f}/s  {elapsed:,.1f}s ")
        self.stream.flush()

    def close(self, summary: str) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
        self.stream.write(summary + "\n")
        self.stream.flush()


def _date(value: str) -> datetime:
    """An ISO-8601 date or date-time; without an offset it is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date or date-time: {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class _Evictor:
    """Drops the hot-cache copies of imported conversations (the service runs elsewhere)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def on_events(self, events: list[Any]) -> None:
        from app.cache.scripts import evict

        try:
            await evict(self.redis, {(e.tenant_id, e.conversation_id) for e in events})
        except Exception as exc:  # Redis away: cached copies expire with their TTL
            print(f"warning: could not evict cached conversations ({exc})", file=sys.stderr)

    async def close(self) -> None:
        await self.redis.aclose()


async def _cache_evictor(settings: Settings) -> _Evictor | None:
    """The service's Redis (REDIS_URL, or the embedded one `run` started), if there is one."""
    from redis.asyncio import Redis

    url = runtime.running_redis_url(settings)
    return _Evictor(Redis.from_url(url)) if url else None


def _database(settings: Settings) -> runtime.Endpoints:
    return runtime.admin_endpoints(settings)


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import transfer
    from db.session import Database, create_pool

    endpoints = _database(settings)

    async def work() -> int:
        db = Database(await create_pool(endpoints.database_url, min_size=1, max_size=2))
        try:
            tenants = await transfer.export_tenants(db, args.tenant)
            f = transfer.export_filter(args.date_from, args.date_to)
            progress = Progress(await transfer.count(db, tenants, f), "conversations", enabled=args.progress)
            messages = 0
            with _output(args.output) as out:
                async for line in transfer.export_conversations(db, tenants, f):
                    out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
                    messages += len(line["messages"])
                    progress.advance()
            progress.close(f"exported {progress.done} conversations, {messages} messages from {len(tenants)} tenants")
            return 0
        finally:
            await db.close()

    try:
        return asyncio.run(work())
    finally:
        endpoints.stop()


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        yield out
    os.replace(partial, target)  # a finished file or none, never half a file under the real name


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import transfer
    from app.services.limits import Limits
    from db.session import Database, create_pool

    endpoints = _database(settings)
    limits = Limits.from_settings(settings)
    source = sys.stdin if args.file == "-" else Path(args.file).open(encoding="utf-8")  # noqa: SIM115
    size = None if args.file == "-" else os.fstat(source.fileno()).st_size

    async def work() -> int:
        # Batches of conversations of one tenant, each one transaction of set-based statements with
        # the messages COPY'd (app/services/bulk_import), several batches at once over the pool: the
        # server's cores and commits overlap (issue 11). A batch holds each sessionId once; two
        # batches sharing one lock its row in turn, and a create race retries.
        jobs = max(1, args.jobs)
        per_batch = max(1, args.batch)
        db = Database(await create_pool(endpoints.database_url, min_size=1, max_size=jobs))
        evictor = await _cache_evictor(settings)
        if evictor is not None:
            db.listen(evictor.on_events)
        report = transfer.ImportReport()
        progress = Progress(size, "bytes", enabled=args.progress)
        started = time.monotonic()
        done = 0
        failures: list[tuple[int, str]] = []
        running: set[asyncio.Task[None]] = set()

        async def one(tenant_id: str, batch: list[tuple[int, int, Any]]) -> None:
            nonlocal done
            if len(batch) > 1:
                try:
                    results = await _import_batch(db, tenant_id, [line for _, _, line in batch], limits)
                except DomainError as exc:
                    if isinstance(exc, ServiceUnavailable):
                        raise
                    # One line is refused: import them one by one to say which, keeping those before it.
                else:
                    for result in results:
                        report.add(result)
                    done += sum(nbytes for _, nbytes, _ in batch)
                    progress.advance(done=done)
                    return
            for number, nbytes, line in batch:
                try:
                    report.add(await _import_line(db, tenant_id, line, limits))
                except DomainError as exc:  # bad input, a reused clientMessageId: the line is named
                    if isinstance(exc, ServiceUnavailable):
                        raise
                    failures.append((number, exc.message))
                    return
                done += nbytes
                progress.advance(done=done)

        async def submit(tenant_id: str | None, batch: list[tuple[int, int, Any]]) -> None:
            nonlocal running
            if tenant_id is None or not batch:
                return
            running.add(asyncio.create_task(one(tenant_id, list(batch))))
            if len(running) >= jobs:
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()  # anything but bad input stops the import as it always did

        try:
            batch: list[tuple[int, int, Any]] = []
            batch_tenant: str | None = None
            batch_sessions: set[str] = set()
            batch_messages = 0
            for number, text in enumerate(source, start=1):
                nbytes = len(text.encode())
                if not text.strip():
                    done += nbytes
                    continue
                try:
                    line = transfer.parse_line(json.loads(text))
                    tenant_id = args.tenant or line.tenant_id
                    if tenant_id is None:
                        raise BadUserInput("the line has no tenant_id: give --tenant", field="tenant_id")
                    # Checked with the line (app/services/bulk_import): a refused line is then found alone.
                    session_id = line.conversation.session_id or str(line.conversation.id)
                except (ValueError, BadUserInput) as exc:
                    failures.append((number, exc.message if isinstance(exc, BadUserInput) else str(exc)))
                    break
                if tenant_id != batch_tenant or session_id in batch_sessions:
                    await submit(batch_tenant, batch)
                    batch, batch_tenant, batch_sessions, batch_messages = [], tenant_id, set(), 0
                batch.append((number, nbytes, line))
                batch_sessions.add(session_id)
                batch_messages += len(line.messages)
                if len(batch) >= per_batch or batch_messages >= BATCH_MESSAGES:
                    await submit(batch_tenant, batch)
                    batch, batch_sessions, batch_messages = [], set(), 0
                if failures:
                    break
            if not failures or min(failures)[0] > max((n for n, _, _ in batch), default=0):
                await submit(batch_tenant, batch)  # the lines before a bad one are imported
            if running:
                await asyncio.gather(*running)
            elapsed = time.monotonic() - started
            if failures:
                number, message = min(failures)
                progress.close(_import_summary(report, elapsed))
                print(
                    f"error on line {number}: {message} (lines before it were imported; lines after it that "
                    "were under way may be too: a re-run skips what is there)",
                    file=sys.stderr,
                )
                return 1
            progress.close(_import_summary(report, elapsed))
            return 0
        finally:
            for task in running:
                task.cancel()
            await db.close()
            if evictor is not None:
                await evictor.close()

    try:
        with _quiet_gc():
            return asyncio.run(work())
    finally:
        if source is not sys.stdin:
            source.close()
        endpoints.stop()


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    """Fewer, cheaper cyclic collections for the import's many short-lived objects (parsed lines,
    planned rows: freed by reference counting, nearly never cyclic). Measured: the default
    thresholds' collections, each walking the ~1 s of imported modules' objects, were ~14 µs of
    the importer's CPU per message (docs/benchmarks.md, "Import"). Startup's objects are frozen
    out of the walks; collections still run, every 100,000 allocations instead of 700."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _import_line(db: Any, tenant_id: str, line: Any, limits: Any) -> Any:
    from app.services import transfer

    return await db.run(lambda uow: transfer.import_conversation(uow, tenant_id, line, limits))


async def _import_batch(db: Any, tenant_id: str, lines: list[Any], limits: Any) -> list[Any]:
    from app.services import bulk_import

    return await db.run(lambda uow: bulk_import.import_batch(uow, tenant_id, lines, limits))  # type: ignore[no-any-return]


def _import_summary(report: Any, elapsed: float) -> str:
    rate = report.messages_added / elapsed if elapsed > 0 else 0.0
    return (
        f"imported {report.lines} conversations ({report.conversations_created} new) into "
        f"{len(report.tenants)} tenants: {report.messages_added} messages added, "
        f"{report.messages_skipped} already there, {report.state_added} state keys added "
        f"in {elapsed:.2f} s ({rate:,.0f} messages/s)"
    )


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    if args.tenant is not None:
        from app.cli_admin import cmd_tenant_dead_letters

        return cmd_tenant_dead_letters(settings, args)
    from redis.asyncio import Redis

    from jobs.actions import read_dead_letters

    endpoints = runtime.resolve(settings, start=False)

    async def work() -> list[dict[str, Any]]:
        redis = Redis.from_url(endpoints.redis_url)
        try:
            return await read_dead_letters(redis, settings.arq_queue, args.limit)
        finally:
            await redis.aclose()

    try:
        for entry in asyncio.run(work()):
            print(json.dumps(entry, ensure_ascii=False))
    finally:
        endpoints.stop()
    return 0


def add_data_commands(sub: Any) -> None:
    """Register the data commands on the CLI's subparsers (app/cli.py)."""
    export = sub.add_parser("export", help="write conversations as JSONL, one per line")
    export.add_argument("--tenant", action="append", help="a tenant to export (repeat for more; default: all)")
    export.add_argument("--from", dest="date_from", type=_date, help="created at or after (ISO-8601)")
    export.add_argument("--to", dest="date_to", type=_date, help="created before (ISO-8601)")
    export.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    export.add_argument("--progress", action="store_true", default=None, help="draw the progress bar")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="read JSONL conversations (idempotent: a re-run adds nothing)")
    imp.add_argument("file", help="a file written by export, or - for stdin")
    imp.add_argument("--tenant", help="import into this tenant (default: each line's tenant_id)")
    imp.add_argument("--progress", action="store_true", default=None, help="draw the progress bar")
    imp.add_argument("--jobs", type=int, default=4, help="batches imported at once, one transaction each (default 4)")
    imp.add_argument(
        "--batch",
        type=int,
        default=100,
        help="conversations per transaction (default 100, and at most 10,000 messages; 1: one line at a time)",
    )
    imp.set_defaults(func=cmd_import)

    dead = sub.add_parser("dead-letters", help="print the newest dead-lettered actions, one JSON per line")
    dead.add_argument("--limit", type=int, default=20)
    dead.add_argument("--tenant", help="that tenant's dead letters with their ids (for dead-letter-replay)")
    dead.set_defaults(func=cmd_dead_letters)

    emb = sub.add_parser(
        "embed-backfill", help="embed the messages that have no vector of the current embedder (idempotent)"
    )
    emb.add_argument("--tenant", help="only this tenant (default: all)")
    emb.set_defaults(func=cmd_embed_backfill)


def cmd_embed_backfill(settings: Settings, args: argparse.Namespace) -> int:
    """Vectors for existing messages (issue 14.2), conversation by conversation, printing each
    tenant's progress; a re-run stores nothing new. Runs here, not in the worker."""
    from app.services import embedder as embedders
    from app.services import embeddings
    from db.session import Database, create_pool

    embedder = embedders.from_settings(settings)
    if embedder is None:
        print("error: no embedder is configured (EMBEDDER=none)", file=sys.stderr)
        return 1
    endpoints = _database(settings)

    def report(p: embeddings.Progress) -> None:
        print(f"{p.tenant_id}: {p.embedded}/{p.total} messages embedded ({p.stored_now} now)", file=sys.stderr)

    async def go() -> int:
        db = Database(await create_pool(endpoints.database_url, min_size=1, max_size=2))
        try:
            stored = await embeddings.backfill(
                db, embedder, tenant_id=args.tenant, batch=settings.embeddings_batch, on_progress=report
            )
        finally:
            await db.close()
        print(f"stored {stored} vectors ({embedder.model})")
        return 0

    try:
        return asyncio.run(go())
    finally:
        endpoints.stop()


def cmd_reindex_search(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import search_language
    from db.session import Database, create_pool

    endpoints = _database(settings)

    async def work() -> int:
        db = Database(await create_pool(endpoints.database_url, min_size=1, max_size=1))
        try:
            config, messages = await search_language.total(db, args.tenant)
            progress = Progress(messages, "messages", enabled=args.progress)
            after = None
            changed = 0
            while True:
                step = await db.run(
                    functools.partial(
                        search_language.reindex_step, tenant_id=args.tenant, after=after, limit=max(1, args.batch)
                    )
                )
                changed += step.changed
                progress.advance(step.passed)
                if step.after is None:
                    break
                after = step.after
            progress.close(
                f"re-indexed tenant {args.tenant} with {config!r}: {progress.done} messages passed, {changed} changed"
            )
            return 0
        finally:
            await db.close()

    try:
        return asyncio.run(work())
    finally:
        endpoints.stop()


def add_tenant_data_commands(tenant: Any) -> None:
    """`tenant reindex-search` (under the `tenant` command of app/cli.py)."""
    reindex = tenant.add_parser(
        "reindex-search",
        help="index a tenant's stored messages with its searchLanguage (resumable: a re-run finishes it)",
    )
    reindex.add_argument("tenant")
    reindex.add_argument("--batch", type=int, default=5000, help="messages per transaction (default 5000)")
    reindex.add_argument("--progress", action="store_true", default=None, help="draw the progress bar")
    reindex.set_defaults(func=cmd_reindex_search)
