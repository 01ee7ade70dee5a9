"""The long-lived clients a process holds, created in the lifespan and handed down typed."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from app import liveness
from app.cache.client import HotCache
from app.cache.options import CacheOptions
from app.events import EventHub
from app.models import DomainEvent
from app.services import conversations
from app.services.crm import USER_AGENT, CrmOptions
from app.services.limits import Limits
from app.settings import Settings
from db.repositories import cluster
from db.session import Database, create_pool, has_citus

log = logging.getLogger("conversation_service")


@dataclass(slots=True)
class Resources:
    settings: Settings
    db: Database
    redis: Redis
    limits: Limits
    hub: EventHub
    #: The Redis hot cache (None when CACHE_ENABLED is false); reads pass it to app/services.
    cache: HotCache | None = None
    #: Outgoing HTTP (CRM webhooks and customer lookups).
    http: httpx.AsyncClient | None = None
    crm: CrmOptions = field(default_factory=CrmOptions)

    @classmethod
    async def open(cls, settings: Settings, database_url: str, redis_url: str) -> Resources:
        pool = await create_pool(
            database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            connect_timeout_s=settings.db_connect_timeout_s,
            acquire_timeout_s=settings.db_acquire_timeout_s,
        )
        redis = Redis.from_url(
            redis_url,
            socket_timeout=settings.readiness_timeout_s,
            socket_connect_timeout=settings.readiness_timeout_s,
            health_check_interval=30,
        )
        db = Database(pool)
        await _warn_async_commit(db)
        hub = EventHub(redis_url, queue_size=settings.subscriber_queue_size)
        cache = (
            HotCache(redis_url, CacheOptions.from_settings(settings), cluster_nodes=settings.redis_cluster_nodes)
            if settings.cache_enabled
            else None
        )
        resources = cls(
            settings=settings,
            db=db,
            redis=redis,
            limits=Limits.from_settings(settings),
            hub=hub,
            cache=cache,
            http=httpx.AsyncClient(headers={"User-Agent": USER_AGENT}),
            crm=CrmOptions.from_settings(settings),
        )
        if cache is not None:
            cache.attach(db)  # first: what subscribers read after an event is already cached
            await cache.start()
        hub.enrich = resources.add_headers
        db.listen(resources.publish_events)
        await hub.start()
        return resources

    async def publish_events(self, events: list[DomainEvent]) -> None:
        """After commit: to the live fan-out, in the background (app/events.py)."""
        self.hub.enqueue(events)

    async def add_headers(self, events: list[DomainEvent]) -> None:
        """State changes are emitted without the conversation header; subscribers filter on it."""
        missing: dict[str, set[uuid.UUID]] = {}
        for event in events:
            if event.conversation is None:
                missing.setdefault(event.tenant_id, set()).add(event.conversation_id)
        for tenant_id, ids in missing.items():
            async with self.db.read() as conn:
                headers = await conversations.get_many(conn, tenant_id, list(ids))
            for event in events:
                if event.conversation is None and event.tenant_id == tenant_id:
                    event.conversation = headers.get(event.conversation_id)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        await self.hub.close()
        if self.http is not None:
            await self.http.aclose()
        await self.redis.aclose()
        await self.db.close()

    async def readiness(self) -> dict[str, Any]:
        """Postgres and Redis actually asked, each with a timeout; Redis down is degraded, not down."""
        timeout = self.settings.readiness_timeout_s
        postgres, redis = await asyncio.gather(
            _probe(self._ping_postgres(), timeout), _probe(self._ping_redis(), timeout)
        )
        checks = {"postgres": postgres, "redis": redis}
        if self.settings.worker_stale_s > 0:
            # Jobs, CRM deliveries and crons stop with the worker while the API still serves.
            checks["worker"] = await self._worker() if redis["ok"] else {"ok": False, "error": "Redis is down"}
        healthy = all(c["ok"] for c in checks.values())
        status = "ok" if healthy else "degraded" if postgres["ok"] else "down"
        return {"status": status, "checks": checks}

    async def _worker(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.settings.readiness_timeout_s):
                return await liveness.check(self.redis, self.settings.arq_queue, self.settings.worker_stale_s)
        except Exception as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}

    async def _ping_postgres(self) -> None:
        async with self.db.read() as conn:
            await conn.fetchval("SELECT 1")

    async def _ping_redis(self) -> None:
        await self.redis.ping()


async def _warn_async_commit(db: Database) -> None:
    """Say loudly, once per process, when a Citus node commits asynchronously.

    Not a refusal: synchronous_commit=off is a legitimate durability trade on one Postgres; on
    Citus it also makes the default (logical) shard move drop writes acknowledged just before its
    switch, which no client would expect (docs/scaling.md, "Moves need synchronous_commit").
    """
    # Asked of this database, not the process-wide flag: a test process meets plain Postgres too.
    try:
        async with db.read() as conn:
            nodes = await cluster.nodes_with_async_commit(conn) if await has_citus(conn) else []
    except asyncpg.PostgresError as exc:  # a check, not a dependency: never what stops a start
        log.warning("could not check the Citus nodes' synchronous_commit: %s", exc)
        return
    if nodes:
        log.warning(
            "synchronous_commit=off on Citus node(s) %s: a shard move with logical replication (Citus' "
            "default transfer mode) can lose writes acknowledged just before it switches; set it on, or "
            "move with shard_transfer_mode => 'block_writes' (docs/scaling.md)",
            ", ".join(nodes),
        )


async def _probe(check: Any, limit_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check, limit_s)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {limit_s:g} s"}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latencyMs": round((time.perf_counter() - started) * 1000, 2)}
