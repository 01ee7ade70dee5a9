"""HotCache's state and its Redis connection: the boot id (run_id) every connection learns, the
breaker that sends everything to Postgres while Redis fails, EVALSHA, the sessionId memory."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from app import metrics
from app.cache.keys import SESSION_LRU_SIZE, TOMBSTONE_TTL_S
from app.cache.options import CacheOptions
from app.cache.scripts import SCRIPTS, _load_scripts, _Script
from app.decoded_messages import DecodedMessages

log = logging.getLogger("conversation_service.cache")


def _run_id(info: Any) -> bytes:
    text = info if isinstance(info, bytes) else str(info).encode()
    for line in text.splitlines():
        if line.startswith(b"run_id:"):
            return line[7:].strip()
    raise ValueError("INFO server has no run_id")


#: The boot id argument that tells a script to use the answering node's own run_id (Cluster).
CLUSTER_BOOT = b"*"


def _cluster_client(seeds: str, options: CacheOptions) -> Any:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    nodes = []
    for seed in seeds.split(","):
        host, _, port = seed.strip().rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port)))
    return RedisCluster(
        startup_nodes=nodes,
        socket_timeout=options.timeout_s,
        socket_connect_timeout=options.timeout_s,
        # A failover is followed within the breaker's budget: MOVED / a dead node refresh the slots.
        cluster_error_retry_attempts=3,
    )


class HotCacheBase:
    """What every part of HotCache (app/cache/client.py) shares."""

    def __init__(self, redis_url: str, options: CacheOptions | None = None, *, cluster_nodes: str = "") -> None:
        self.options = options or CacheOptions()
        self._boot: bytes | None = None
        if cluster_nodes:
            # REDIS_CLUSTER_NODES (docs/scaling.md): the hot store on a Redis Cluster. Its scripts
            # already touch one slot each (hash tags); the client is typed as Redis because the
            # commands used here exist on both clients.
            self.redis = _cluster_client(cluster_nodes, self.options)
            # The client cannot know which node will answer a script (a failover moves a slot to
            # a replica under a call in flight, and the client follows MOVED with the same
            # arguments), so it sends CLUSTER_BOOT and each node fences with its own run_id, read
            # inside the script (lua/common.lua): entries a promoted replica got from the old
            # master carry the old master's run_id and read as misses there. Scripts are loaded
            # on NOSCRIPT (_eval, _run_calls): the cluster client has no per-connection hook.
            self._boot = CLUSTER_BOOT
        else:
            self.redis = Redis.from_url(
                redis_url,
                socket_timeout=self.options.timeout_s,
                socket_connect_timeout=self.options.timeout_s,
                redis_connect_func=self._on_connect,
            )
        self._down_until = 0.0
        self._last_warning = 0.0
        #: (tenant, conversation) → mark number: writes of this process that Redis may not have.
        self._dirty: dict[tuple[str, uuid.UUID], int] = {}
        self._marks = 0
        self._recovery: asyncio.Task[None] | None = None
        self._closed = False
        self.sessions: OrderedDict[tuple[str, str], uuid.UUID] = OrderedDict()
        self.decoded = DecodedMessages(self.options.decoded_bytes)
        self._ttl_ms = int(self.options.ttl_s * 1000)
        self._grace_ms = int(self.options.closed_grace_s * 1000)
        self._tomb_ms = int(TOMBSTONE_TTL_S * 1000)

    async def _on_connect(self, conn: Any) -> None:
        """Every new connection learns the server's boot id (and loads the scripts): an entry
        written under another boot id is from before a restart and reads as a miss."""
        await conn.on_connect()
        try:
            await conn.send_command("INFO", "server")
            boot = _run_id(await conn.read_response())
        except (ResponseError, ValueError):  # INFO renamed away: restarts are not detected
            boot = b"unknown"
        for script in SCRIPTS:
            await conn.send_command("SCRIPT", "LOAD", script.source)
            await conn.read_response()
        if self._boot is not None and boot != self._boot:
            log.warning(
                "Redis restarted (run_id %s → %s): entries from before read as misses",
                self._boot.decode(errors="replace"),
                boot.decode(errors="replace"),
            )
        self._boot = boot

    async def _ready(self) -> bool:
        if self._closed or time.monotonic() < self._down_until:
            return False
        if self._boot is None:
            try:
                await self.redis.ping()
            except Exception as exc:
                self._failed(exc)
                return False
        return self._boot is not None

    def _failed(self, exc: BaseException) -> None:
        """Redis failed us: count it, and skip Redis for CACHE_RETRY_S (a breaker: a Redis that
        times out must not add its timeout to every request)."""
        metrics.CACHE_ERRORS.inc()
        now = time.monotonic()
        self._down_until = now + self.options.retry_s
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("hot cache: Redis failed (%s: %s); serving from Postgres", type(exc).__name__, exc)

    def _read_failed(self, exc: BaseException, kind: str) -> None:
        if isinstance(exc, RedisError | OSError):
            self._failed(exc)
        else:  # a bug here must not fail the read: Postgres answers it
            metrics.CACHE_ERRORS.inc()
            log.exception("hot cache: %s read failed; serving from Postgres", kind)

    def _remember(self, name: tuple[str, str], conversation_id: uuid.UUID) -> uuid.UUID:
        self.sessions[name] = conversation_id
        if len(self.sessions) > SESSION_LRU_SIZE:
            self.sessions.popitem(last=False)
        return conversation_id

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await _load_scripts(self.redis)
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
