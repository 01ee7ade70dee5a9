"""The CRM customer-profile cache: one JSON value per (tenant, user) with a TTL. Only the hot
store talks to Redis; app/services/crm.py decides what to cache and for how long."""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cache.keys import profile_key

log = logging.getLogger("conversation_service.cache")


class Missing:
    """No cached answer (a cached answer may itself be None: the CRM knows no such customer)."""


MISSING = Missing()


async def cached_profile(redis: Redis, tenant_id: str, user_id: str) -> dict[str, Any] | Missing | None:
    """The cached profile (None: the CRM said 404), or MISSING (not cached, or Redis down: slower,
    never wrong)."""
    try:
        cached = await redis.get(profile_key(tenant_id, user_id))
    except RedisError as exc:
        log.warning("customer profile cache unavailable: %s", exc)
        return MISSING
    if cached is None:
        return MISSING
    profile: dict[str, Any] | None = json.loads(cached).get("profile")
    return profile


async def remember_profile(
    redis: Redis, tenant_id: str, user_id: str, profile: dict[str, Any] | None, ttl_s: int
) -> None:
    """Cache the CRM's answer for ttl_s (a failure only costs the next lookup)."""
    try:
        await redis.set(
            profile_key(tenant_id, user_id), json.dumps({"profile": profile}, separators=(",", ":")), ex=ttl_s
        )
    except RedisError as exc:
        log.warning("customer profile cache unavailable: %s", exc)


async def forget_profile(redis: Redis, tenant_id: str, user_id: str) -> None:
    """Drop the cached profile (erasure); a failure is harmless: it expires within its TTL."""
    try:
        await redis.delete(profile_key(tenant_id, user_id))
    except RedisError as exc:
        log.warning("customer profile cache unavailable: %s", exc)
