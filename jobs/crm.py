"""CRM jobs: deliver one outbox row; the sweep that finds deliveries whose job was lost.

The schedule lives in Postgres (`crm_outbox.next_attempt_at`), not in arq: a delivery job claims
its row, sends, and records the outcome; a failed attempt enqueues the next one, deferred by the
backoff. Job ids are `crm:<tenant>:<outbox id>:<attempts so far>`, so the sweep and a retry
never queue the same attempt twice.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Function, func

from app import tracing
from app.services import crm
from jobs.context import is_transient, retry_later, state
from jobs.metrics import CRM_DELIVERED

log = logging.getLogger("conversation_service.crm")

DELIVER = "crm.deliver"
#: A deferred attempt starts this much after its `next_attempt_at`, so its claim finds it due.
DEFER_MARGIN_S = 0.05


async def enqueue_delivery(
    redis: ArqRedis,
    queue_name: str,
    tenant_id: str,
    outbox_id: uuid.UUID,
    attempts: int,
    defer_s: float | None = None,
) -> bool:
    """Queue an attempt; False when that attempt is already queued."""
    payload = {"tenant_id": tenant_id, "outbox_id": str(outbox_id)}
    traceparent = tracing.current_traceparent()
    if traceparent is not None:  # the delivery joins the trace of the request that closed the conversation
        payload["traceparent"] = traceparent
    job = await redis.enqueue_job(
        DELIVER,
        payload,
        _job_id=f"crm:{tenant_id}:{outbox_id}:{attempts}",
        _queue_name=queue_name,
        _defer_by=defer_s + DEFER_MARGIN_S if defer_s is not None else None,
    )
    return job is not None


def dispatcher(redis: ArqRedis, queue_name: str) -> crm.Dispatch:
    """What `crm.set_dispatcher` takes in a process that holds an arq pool (the worker, the API)."""

    async def dispatch(tenant_id: str, outbox_id: uuid.UUID, attempts: int) -> None:
        await enqueue_delivery(redis, queue_name, tenant_id, outbox_id, attempts)

    return dispatch


async def crm_deliver(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    st = state(ctx)
    tenant_id = str(payload["tenant_id"])
    outbox_id = uuid.UUID(str(payload["outbox_id"]))
    try:
        with tracing.job_span(DELIVER, payload.get("traceparent"), {"conversation_service.outbox_id": str(outbox_id)}):
            result = await crm.deliver(st.db, st.http, tenant_id, outbox_id, st.crm)
    except Exception as exc:
        if is_transient(exc) and (retry := retry_later(ctx)) is not None:
            raise retry from exc
        raise  # the sweep sends it again once its claim expires
    record = result.record
    if result.delivered:
        CRM_DELIVERED.inc()
    if result.retry_in_s is not None and record is not None:
        try:
            await enqueue_delivery(st.redis, st.queue_name, tenant_id, outbox_id, record.attempts, result.retry_in_s)
        except Exception as exc:  # the row is pending with its time: the sweep queues it
            log.warning("could not queue the next attempt of CRM delivery %s: %s", outbox_id, exc)
    return {
        "delivered": result.delivered,
        "status": record.status.value if record else None,
        "attempts": record.attempts if record else None,
        "retry_in_s": result.retry_in_s,
    }


async def crm_sweep(ctx: dict[str, Any]) -> dict[str, Any]:
    """Cron: queue every due delivery nobody holds (a lost job, a restart, Redis down at commit)."""
    st = state(ctx)
    queued = 0
    for record in await crm.due_deliveries(st.db):
        queued += await enqueue_delivery(st.redis, st.queue_name, record.tenant_id, record.id, record.attempts)
    return {"queued": queued}


def functions() -> list[Function]:
    # No kept result: the job id must be free again for the sweep once an attempt has run.
    return [func(crm_deliver, name=DELIVER, keep_result=0)]
