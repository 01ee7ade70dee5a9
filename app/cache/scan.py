"""Walking the hot store for maintenance: which conversations have entries, and dropping them.
The key layout is the hot store's alone (app/cache/keys.py); services get (tenant, id) pairs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cache.keys import CONVERSATION_KEY_MATCH, conversation_of_key
from app.cache.scripts import evict

#: What the hot store raises when Redis cannot be reached (callers fall back or retry later).
StoreUnavailable = RedisError
#: The connection the process holds to the hot store (services pass it on without using it).
StoreConnection = Redis

__all__ = ["StoreConnection", "StoreUnavailable", "cached_conversations", "evict_entries"]


async def cached_conversations(redis: Redis) -> AsyncIterator[tuple[str, uuid.UUID]]:
    """(tenant_id, conversation_id) of every entry's key, possibly repeated (SCAN)."""
    async for key in redis.scan_iter(match=CONVERSATION_KEY_MATCH, count=1000):
        owner = conversation_of_key(key)
        if owner is not None:
            yield owner


async def evict_entries(redis: Redis, owners: Iterable[tuple[str, uuid.UUID]]) -> int:
    """Drop these conversations' entries (fencing in-flight fills); returns how many."""
    return await evict(redis, owners)
