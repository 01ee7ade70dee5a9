"""The embedding pipeline (issue 14.2): messages get vectors after commit, off the request path.

- `Trigger` (a `Database` listener in the API and the worker) notes which conversations got
  messages (a set insert per committed append: the append path's whole cost) and, every
  FLUSH_DELAY_S at most, hands them over in one call through an enqueuer the jobs layer installs
  (a Redis set of pending conversations and one drain job).
- The drain job calls `embed_conversation` for each, which embeds the conversation's messages that have no vector of the
  current model, in batches, in a thread (the local model is CPU work), and stores them.
- Anything a lost enqueue missed (process killed, Redis down) is found by the sweep cron (recently
  active conversations) and by `embed-backfill` (everything; idempotent, with progress).
Writes are idempotent: a vector is written once per (message, model); a new model re-embeds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.models import DomainEvent, EventType
from app.services.embedder import Embedder
from db.repositories import embeddings as repo
from db.session import Database, UnitOfWork

log = logging.getLogger("conversation_service.embeddings")

#: Hand the conversations that got messages to the worker (one call per flush, whatever their number).
Enqueue = Callable[[list[tuple[str, uuid.UUID]]], Awaitable[None]]

#: How long the trigger gathers appends before handing them over: at most 1/FLUSH_DELAY_S calls a
#: second per process, however fast messages arrive.
FLUSH_DELAY_S = 0.2


class Trigger:
    def __init__(self, enqueue: Enqueue, delay_s: float = FLUSH_DELAY_S) -> None:
        self.enqueue = enqueue
        self.delay_s = delay_s
        self.pending: set[tuple[str, uuid.UUID]] = set()
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, events: list[DomainEvent]) -> None:
        for event in events:
            if event.type is EventType.MESSAGE_ADDED:
                self.pending.add((event.tenant_id, event.conversation_id))
        if self.pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.delay_s)
        await self.flush()

    async def flush(self) -> None:
        pending, self.pending = self.pending, set()
        if not pending:
            return
        try:
            await self.enqueue(sorted(pending))
        except Exception as exc:  # never fails the write it follows; the sweep finds them later
            log.warning("could not queue the embedding of %d conversations: %s", len(pending), exc)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()


async def embed_conversation(
    db: Database, embedder: Embedder, tenant_id: str, conversation_id: uuid.UUID, batch: int
) -> int:
    """Embed the conversation's messages that have no vector of this model; returns how many were
    stored. Safe to run twice at once (the second writes nothing new)."""
    stored = 0
    while True:
        async with db.read() as conn:
            rows = await repo.missing(conn, tenant_id, conversation_id, embedder.model, batch)
        if not rows:
            return stored
        vectors = await embedder.embed([r["content"] for r in rows])
        seqs = [int(r["seq"]) for r in rows]

        async def write(uow: UnitOfWork, seqs: list[int] = seqs, vectors: list[list[float]] = vectors) -> int:
            return await repo.store(
                uow.conn, tenant_id, conversation_id, embedder.model, embedder.dimensions, seqs, vectors
            )

        written = await db.run(write)
        stored += written
        if len(rows) < batch or written == 0:  # the last batch, or the conversation is gone
            return stored


@dataclass(slots=True)
class Progress:
    tenant_id: str
    embedded: int
    total: int
    stored_now: int


async def backfill(
    db: Database,
    embedder: Embedder,
    *,
    tenant_id: str | None = None,
    batch: int = 64,
    active_since_s: float | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> int:
    """Embed every message without a vector of the current model (one tenant or all), conversation
    by conversation; `active_since_s` limits it to recently active conversations (the sweep).
    Idempotent: a second run stores nothing. Returns how many vectors were stored."""
    async with db.read() as conn:
        if active_since_s is None:  # the backfill, not the minutely sweep: DDL once per run
            await repo.ensure_index(conn, embedder.dimensions)
        tenants = [tenant_id] if tenant_id is not None else await repo.tenant_ids(conn)
    stored = 0
    for tenant in tenants:
        after: uuid.UUID | None = None
        stored_tenant = 0
        while True:
            async with db.read() as conn:
                ids = await repo.conversation_ids(conn, tenant, after, 500, active_since_s)
            for cid in ids:
                stored_tenant += await embed_conversation(db, embedder, tenant, cid, batch)
            if ids and on_progress is not None and active_since_s is None:
                async with db.read() as conn:
                    done, total = await repo.progress(conn, tenant, embedder.model)
                on_progress(Progress(tenant, done, total, stored_tenant))
            if len(ids) < 500:
                break
            after = ids[-1]
        stored += stored_tenant
    return stored
