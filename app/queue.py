"""The arq queue as the API and the CLI use it without being a worker: the JSON job format
shared with jobs/ (any language's arq client can read it), and re-enqueueing a dead letter."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from redis.asyncio import Redis


def json_serializer(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def json_deserializer(data: bytes) -> Any:
    return json.loads(data)


def replay_enqueuer(redis: Redis, queue_name: str) -> Callable[[str, dict[str, Any], str], Awaitable[None]]:
    """How a dead letter is put on the queue again (app/services/admin.replay_dead_letter): the
    envelope unchanged, under its own action_id as job id. arq keeps the failed run's result
    under that id and would refuse it, so that result goes first; a job still queued or running
    under the id is left alone (enqueue_job answers None)."""

    async def enqueue(function: str, envelope: dict[str, Any], job_id: str) -> None:
        arq = ArqRedis(
            connection_pool=redis.connection_pool,
            job_serializer=json_serializer,
            job_deserializer=json_deserializer,
            default_queue_name=queue_name,
        )
        await arq.delete(result_key_prefix + job_id)
        await arq.enqueue_job(function, envelope, _job_id=job_id, _queue_name=queue_name)

    return enqueue


__all__ = ["json_deserializer", "json_serializer", "replay_enqueuer"]
