"""The arq worker: one WorkerSettings, JSON (never pickle), a named queue.

Domain actions, CRM sync and crons arrive with their issue; until then the
worker consumes the queue and answers `ping`, so deployments can be wired and
health-checked now.
"""

from __future__ import annotations

import json
from typing import Any

from arq.connections import RedisSettings

from app.settings import get_settings


def json_serializer(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def json_deserializer(data: bytes) -> Any:
    return json.loads(data)


async def ping(ctx: dict[str, Any], payload: Any = None) -> dict[str, Any]:
    """Round-trip check for the queue: answers with what it was given."""
    return {"pong": True, "payload": payload}


def worker_settings(redis_url: str, queue_name: str | None = None) -> dict[str, Any]:
    """Keyword arguments for arq's Worker (module-level functions: arq finds jobs by qualname)."""
    return {
        "functions": [ping],
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": queue_name or get_settings().arq_queue,
        "job_serializer": json_serializer,
        "job_deserializer": json_deserializer,
        "max_tries": 5,
        "job_timeout": 60,
        "handle_signals": True,
    }
