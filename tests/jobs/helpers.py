"""In-process worker state for calling job functions (crons, the CRM sweep) directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
from arq.connections import RedisSettings, create_pool

from app.queue import json_deserializer, json_serializer
from app.services.crm import CrmOptions
from app.services.limits import Limits
from app.services.maintenance import MaintenanceOptions
from app.settings import Settings
from db.session import Database
from jobs.context import WorkerState
from tests.conftest import Servers


@asynccontextmanager
async def worker_state(
    servers: Servers, db: Database, queue: str, *, clock: Callable[[], datetime] | None = None, **settings: Any
) -> AsyncIterator[dict[str, Any]]:
    """A job's ctx: {"state": WorkerState} over the test servers, `clock` for the crons."""
    s = Settings(database_url=servers.database_url, redis_url=servers.redis_url, arq_queue=queue, **settings)
    redis = await create_pool(
        RedisSettings.from_dsn(servers.redis_url),
        job_serializer=json_serializer,
        job_deserializer=json_deserializer,
        default_queue_name=queue,
    )
    http = httpx.AsyncClient()
    state = WorkerState(
        settings=s,
        db=db,
        redis=redis,
        http=http,
        queue_name=queue,
        limits=Limits.from_settings(s),
        crm=CrmOptions.from_settings(s),
        maintenance=MaintenanceOptions.from_settings(s),
    )
    if clock is not None:
        state.clock = clock
    try:
        yield {"state": state, "job_try": 1, "job_id": "in-process"}
    finally:
        await http.aclose()
        await redis.aclose()
