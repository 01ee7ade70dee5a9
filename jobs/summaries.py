"""The summarizer job (app/services/summaries.py has the rules).

Job id `summary:<tenant>:<conversation>` with no kept result: triggers arriving while one is
queued, deferred for a retry or running make no second job; once it ends the id is free again.
"""

from __future__ import annotations

import uuid
from typing import Any

from arq import Retry
from arq.connections import ArqRedis
from arq.worker import Function, func

from app.services import summaries
from app.settings import Settings
from db.session import Database
from jobs.context import is_transient, retry_later, state

SUMMARIZE = "summaries.summarize"


def job_id(tenant_id: str, conversation_id: uuid.UUID) -> str:
    return f"summary:{tenant_id}:{conversation_id}"


def enqueuer(redis: ArqRedis, queue_name: str) -> summaries.Enqueue:
    async def enqueue(tenant_id: str, conversation_id: uuid.UUID) -> None:
        await redis.enqueue_job(
            SUMMARIZE,
            {"tenant_id": tenant_id, "conversation_id": str(conversation_id)},
            _job_id=job_id(tenant_id, conversation_id),
            _queue_name=queue_name,
        )

    return enqueue


def install(db: Database, redis: ArqRedis, settings: Settings, queue_name: str) -> summaries.Trigger | None:
    """In a process holding an arq pool (the API, the worker): queue summaries after commit.
    Nothing when no summarizer is configured."""
    options = summaries.SummarizerOptions.from_settings(settings)
    if not options.enabled:
        summaries.set_enqueuer(None)
        return None
    enqueue = enqueuer(redis, queue_name)
    summaries.set_enqueuer(enqueue)
    trigger = summaries.Trigger(db, options, enqueue)
    db.listen(trigger)
    return trigger


async def summarize_job(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    options = summaries.SummarizerOptions.from_settings(st.settings)
    tenant_id = str(payload["tenant_id"])
    conversation_id = uuid.UUID(str(payload["conversation_id"]))
    try:
        outcome = await summaries.summarize(st.db, st.http, tenant_id, conversation_id, options)
    except Exception as exc:
        if is_transient(exc) and (retry := retry_later(ctx)) is not None:
            raise retry from exc
        raise
    if outcome.retry_in_s is not None:
        # The failure is recorded (FAILED, error, attempts); the same job id comes back later.
        raise Retry(defer=outcome.retry_in_s)
    return summaries.describe(outcome)


def functions(settings: Settings) -> list[Function]:
    # Attempts are counted in Postgres (summaries.SummarizerOptions.max_attempts); arq's own
    # limit only has to stay out of the way (+ the transient retries).
    return [
        func(
            summarize_job,
            name=SUMMARIZE,
            keep_result=0,
            max_tries=settings.summarizer_max_attempts + settings.arq_max_tries,
            timeout=settings.arq_job_timeout_s,
        )
    ]
