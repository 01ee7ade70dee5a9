"""Embedding jobs (app/services/embeddings.py has the pipeline).

`embeddings.embed` embeds one conversation's messages that have no vector yet. Its job id
`embed:<tenant>:<conversation>:<seq>` (no kept result) makes repeated triggers for the same newest
message one job, while a newer message gets its own even when a job for the conversation is running.
The cron `embeddings.sweep` embeds what a lost trigger missed in recently active conversations.
"""

from __future__ import annotations

import logging
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

EMBED = "embeddings.embed"
#: The sweep looks at conversations active this recently (it runs every minute).
SWEEP_WINDOW_S = 600.0

log = logging.getLogger("conversation_service.jobs.embeddings")


def job_id(tenant_id: str, conversation_id: uuid.UUID, seq: int) -> str:
    return f"embed:{tenant_id}:{conversation_id}:{seq}"


def install(db: Database, redis: ArqRedis, settings: Settings, queue_name: str) -> embeddings.Trigger | None:
    """In a process holding an arq pool (the API, the worker): queue embeddings after commit.
    Nothing when no embedder is configured."""
    embedders.configure(embedders.from_settings(settings))
    if embedders.configured() is None:
        return None

    async def enqueue(tenant_id: str, conversation_id: uuid.UUID, seq: int) -> None:
        await redis.enqueue_job(
            EMBED,
            {"tenant_id": tenant_id, "conversation_id": str(conversation_id)},
            _job_id=job_id(tenant_id, conversation_id, seq),
            _queue_name=queue_name,
        )

    trigger = embeddings.Trigger(enqueue)
    db.listen(trigger)
    return trigger


async def embed_job(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    embedder = embedders.configured()
    if embedder is None:
        return {"stored": 0, "embedder": None}
    try:
        stored = await embeddings.embed_conversation(
            st.db,
            embedder,
            str(payload["tenant_id"]),
            uuid.UUID(str(payload["conversation_id"])),
            st.settings.embeddings_batch,
        )
    except Exception as exc:
        # Endpoint or database trouble: try again later (the messages stay without vectors meanwhile;
        # keyword search still finds them, and the sweep or backfill catches up after the last try).
        if (is_transient(exc) or isinstance(exc, embedders.EmbeddingError)) and (retry := retry_later(ctx)) is not None:
            raise retry from exc
        raise
    return {"stored": stored, "embedder": embedder.model}


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
        func(embed_job, name=EMBED, keep_result=0, max_tries=settings.arq_max_tries, timeout=settings.arq_job_timeout_s)
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
