"""Embedding jobs (app/services/embeddings.py has the pipeline).

After commit, a process's trigger adds the conversations that got messages to the Redis set
`<queue>:embed-pending` and queues `embeddings.drain` under the job id `embed-drain:<unix second>`:
one SADD and one enqueue per flush however many appends it covers, and at most one drain job a
second. A drain pops conversations from the set and embeds their messages that have no vector yet,
until the set is empty. A conversation whose embedding fails goes back into the set and the job
retries with backoff. The cron `embeddings.sweep` embeds what a lost hand-over missed in recently
active conversations.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from arq.connections import ArqRedis
from arq.cron import CronJob, cron
from arq.worker import Function, func

from app.services import embedder as embedders
from app.services import embeddings
from app.settings import Settings
from db.session import Database
from jobs.context import is_transient, retry_later, state

DRAIN = "embeddings.drain"
#: The sweep looks at conversations active this recently (it runs every minute).
SWEEP_WINDOW_S = 600.0
#: Conversations a drain pops at a time.
POP = 50

log = logging.getLogger("conversation_service.jobs.embeddings")


def pending_key(queue_name: str) -> str:
    return f"{queue_name}:embed-pending"


def _member(tenant_id: str, conversation_id: uuid.UUID) -> str:
    return f"{tenant_id}:{conversation_id}"


def _parse(member: bytes | str) -> tuple[str, uuid.UUID]:
    text = member.decode() if isinstance(member, bytes) else member
    tenant_id, cid = text.rsplit(":", 1)
    return tenant_id, uuid.UUID(cid)


def install(db: Database, redis: ArqRedis, settings: Settings, queue_name: str) -> embeddings.Trigger | None:
    """In a process holding an arq pool (the API, the worker): hand appends to the drain after
    commit. Nothing when no embedder is configured."""
    embedders.configure(embedders.from_settings(settings))
    if embedders.configured() is None:
        return None
    key = pending_key(queue_name)

    async def enqueue(conversations: list[tuple[str, uuid.UUID]]) -> None:
        await redis.sadd(key, *(_member(t, c) for t, c in conversations))  # type: ignore[misc]
        await redis.enqueue_job(DRAIN, _job_id=f"embed-drain:{int(time.time())}", _queue_name=queue_name)

    trigger = embeddings.Trigger(enqueue)
    db.listen(trigger)
    return trigger


async def drain_job(ctx: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    embedder = embedders.configured()
    if embedder is None:
        return {"stored": 0, "embedder": None}
    key = pending_key(st.queue_name)
    stored = conversations = 0
    deadline = time.monotonic() + st.settings.arq_job_timeout_s / 2
    while True:
        if time.monotonic() > deadline:
            # A long backlog: hand the rest to a fresh job rather than be cut off by the timeout.
            await st.redis.enqueue_job(DRAIN, _job_id=f"embed-drain:{uuid.uuid4()}", _queue_name=st.queue_name)
            return {"stored": stored, "conversations": conversations, "more": True}
        popped: list[bytes] | None = await st.redis.spop(key, POP)  # type: ignore[misc]
        if not popped:
            return {"stored": stored, "conversations": conversations, "embedder": embedder.model}
        todo = [_parse(m) for m in popped]
        for i, (tenant_id, cid) in enumerate(todo):
            try:
                stored += await embeddings.embed_conversation(
                    st.db, embedder, tenant_id, cid, st.settings.embeddings_batch
                )
                conversations += 1
            except Exception as exc:
                # Endpoint or database trouble: the rest go back into the set and the job comes back
                # later (keyword search finds those messages meanwhile; the sweep catches up after
                # the last try).
                await st.redis.sadd(key, *(_member(t, c) for t, c in todo[i:]))  # type: ignore[misc]
                if (is_transient(exc) or isinstance(exc, embedders.EmbeddingError)) and (
                    retry := retry_later(ctx)
                ) is not None:
                    raise retry from exc
                raise


async def sweep(ctx: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    embedder = embedders.configured()
    if embedder is None:
        return {"stored": 0}
    stored = await embeddings.backfill(
        st.db, embedder, batch=st.settings.embeddings_batch, active_since_s=SWEEP_WINDOW_S
    )
    if stored:
        log.info("embedding sweep stored %d vectors a trigger had missed", stored)
    return {"stored": stored}


def functions(settings: Settings) -> list[Function]:
    return [
        func(drain_job, name=DRAIN, keep_result=0, max_tries=settings.arq_max_tries, timeout=settings.arq_job_timeout_s)
    ]


def cron_jobs(settings: Settings) -> list[CronJob]:
    if embedders.from_settings(settings) is None:
        return []
    return [
        cron(
            sweep,
            name="embeddings.sweep",
            unique=True,
            timeout=settings.arq_job_timeout_s,
            max_tries=1,
            keep_result=0,
            second={50},
        )
    ]
