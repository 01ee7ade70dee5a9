"""The hot cache's tunables (CACHE_* settings)."""

from __future__ import annotations

from dataclasses import dataclass

from app.settings import Settings


@dataclass(frozen=True, slots=True)
class CacheOptions:
    recent_messages: int = 200
    ttl_s: float = 1800.0
    closed_grace_s: float = 300.0
    timeout_s: float = 0.5
    retry_s: float = 1.0
    #: Decoded messages kept in process (app/decoded_messages.py), in approximate bytes.
    decoded_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheOptions:
        return cls(
            recent_messages=settings.cache_recent_messages,
            ttl_s=settings.cache_ttl_s,
            closed_grace_s=settings.cache_closed_grace_s,
            timeout_s=settings.cache_timeout_s,
            retry_s=settings.cache_retry_s,
            decoded_bytes=settings.decoded_cache_bytes,
        )
