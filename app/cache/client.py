"""HotCache, the client the process holds: its reads (app/cache/reads.py, fills in fill.py), its
writes (writes.py) over the shared state and connection (base.py), and its lifecycle here."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from app.cache.reads import ReadMixin
from app.cache.scripts import evict
from app.cache.writes import WriteMixin
from app.models import DomainEvent


class _Committing(Protocol):
    """What the cache listens to (db.session.Database), named here so storage stays apart."""

    def listen(self, listener: Callable[[list[DomainEvent]], Awaitable[None]]) -> None: ...


class HotCache(ReadMixin, WriteMixin):
    """One per process. `attach(db)` makes it hear every committed unit of work; the read seams in
    app/services take it as `cache=`, hand it their Postgres reads for fills (app/services/
    hot_fill.py) and fall back to Postgres whenever it answers None."""

    # lifecycle --------------------------------------------------------------------------------

    def attach(self, db: _Committing) -> None:
        """Hear every committed unit of work of `db` (register before any other listener that
        tells clients about the change, so what they read next is already here)."""
        db.listen(self.on_events)

    async def start(self) -> None:
        """Connect (not required: a cache that starts with Redis down connects later)."""
        await self._ready()

    async def close(self) -> None:
        self._closed = True
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recovery
        if self._dirty:
            # Last chance: a stopping process that leaves dirty entries relies on their TTLs.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._invalidate_dirty(), self.options.timeout_s)
        await self.redis.aclose()

    @property
    def dirty(self) -> set[tuple[str, uuid.UUID]]:
        return set(self._dirty)

    async def evict(self, tenant_id: str, conversation_id: uuid.UUID) -> None:
        """Drop one conversation's entry (fencing in-flight fills). Raises RedisError when Redis
        cannot be reached (the entry then expires by its TTL)."""
        await evict(self.redis, [(tenant_id, conversation_id)])
