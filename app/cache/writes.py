"""HotCache's writes: the Database listener applying each committed event (or invalidating), and
the recovery of entries whose write failed (dirty in this process until Redis acknowledges)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence

from app import metrics
from app.cache import keys as key_layout
from app.cache.base import HotCacheBase
from app.cache.codec import _micros, encode_conversation, encode_message, encode_state
from app.cache.keys import conversation_keys, session_key
from app.cache.scripts import APPLY_APPEND, APPLY_CREATED, APPLY_STATE, INVALIDATE, Call, _run_calls
from app.models import DomainEvent, EventType, Role, Status

log = logging.getLogger("conversation_service.cache")


class WriteMixin(HotCacheBase):
    """HotCache's writes and dirty-entry recovery (a part of HotCache, app/cache/client.py)."""

    # writes: the Database listener ------------------------------------------------------------

    async def on_events(self, events: list[DomainEvent]) -> None:
        """After commit: apply each event in order (one pipeline), or invalidate."""
        if not events:
            return
        touched = list(dict.fromkeys((e.tenant_id, e.conversation_id) for e in events))
        # Before anything can fail: this process never holds a deleted conversation's content.
        forgotten = [key for e in events if e.type is EventType.DELETED for key in self._forget_deleted(e)]
        if not await self._ready():
            self._mark_dirty(touched)
            return
        assert self._boot is not None
        boot = self._boot
        calls: list[Call] = []
        owners: list[tuple[str, uuid.UUID]] = []
        sessions: list[tuple[str, str, uuid.UUID]] = []
        for event in events:
            owner = (event.tenant_id, event.conversation_id)
            keys = conversation_keys(*owner)
            try:
                call = None if owner in self._dirty else self._event_call(event, keys, boot)
            except Exception:  # a value orjson cannot encode, say: invalidate instead
                log.exception("hot cache: could not encode %s; invalidating", event.type)
                call = None
            calls.append(call or (INVALIDATE, keys, (boot, self._tomb_ms)))
            owners.append(owner)
            if event.type is EventType.CREATED and event.conversation is not None:
                sessions.append((event.tenant_id, event.conversation.session_id, event.conversation_id))
                self._remember((event.tenant_id, event.conversation.session_id), event.conversation_id)
        marks = {owner: self._dirty.get(owner) for owner in touched}
        try:
            results = await _run_calls(self.redis, calls)
            if sessions or forgotten:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for tenant_id, session_id, cid in sessions:
                        pipe.set(session_key(tenant_id, session_id), str(cid), px=self._ttl_ms)
                    if forgotten:
                        pipe.delete(*forgotten)
                    await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            self._mark_dirty(touched)
            return
        failed = []
        for owner, (script, _, _), result in zip(owners, calls, results, strict=True):
            if isinstance(result, Exception):
                log.warning("hot cache: %s failed for %s: %s", script.name, owner, result)
                failed.append(owner)
            elif script is INVALIDATE or result == 0:
                metrics.CACHE_INVALIDATIONS.inc()
        for owner in set(owners) - set(failed):
            # Invalidated (or applied on a clean entry) after the failure that marked it: clean.
            if owner in self._dirty and self._dirty[owner] == marks.get(owner):
                del self._dirty[owner]
        if failed:
            self._mark_dirty(failed)

    def _forget_deleted(self, event: DomainEvent) -> list[str]:
        """A deleted conversation: drop what this process holds of it (decoded messages, where
        its sessionId led); returns its sessionId key for Redis. The entry itself is invalidated
        like any other (a tombstone fences in-flight fills; dirty and retried if Redis fails)."""
        self.decoded.drop_conversation(event.tenant_id, event.conversation_id)
        if event.conversation is None:
            return []
        name = (event.tenant_id, event.conversation.session_id)
        if self.sessions.get(name) == event.conversation_id:
            del self.sessions[name]
        return [session_key(*name)]

    def _event_call(self, event: DomainEvent, keys: Sequence[str], boot: bytes) -> Call | None:
        """The script applying `event`, or None to invalidate."""
        if event.type is EventType.MESSAGE_ADDED and event.message is not None and event.conversation is not None:
            m = event.message
            return (
                APPLY_APPEND,
                keys,
                (
                    boot,
                    m.seq,
                    encode_message(m),
                    encode_conversation(event.conversation),
                    1 if m.role is Role.SYSTEM else 0,
                    self.options.recent_messages,
                    self._ttl_ms,
                    self._tomb_ms,
                    key_layout.MAX_ENTRY_BYTES,
                ),
            )
        if event.type is EventType.STATE_CHANGED and event.state is not None and event.state.version > 1:
            return (
                APPLY_STATE,
                keys,
                (
                    boot,
                    event.state.key,
                    encode_state(event.state),
                    event.state.version,
                    _micros(event.state.updated_at),
                    self._ttl_ms,
                    self._tomb_ms,
                ),
            )
        if (
            event.type is EventType.CREATED
            and event.conversation is not None
            and event.conversation.status is Status.ACTIVE
        ):
            c = event.conversation
            return (APPLY_CREATED, keys, (boot, encode_conversation(c), c.session_id, self._ttl_ms))
        return None  # closes, other header changes, new keys, deletes: order unprovable

    # dirty entries ------------------------------------------------------------------------------

    def _mark_dirty(self, owners: Iterable[tuple[str, uuid.UUID]]) -> None:
        for owner in owners:
            self._marks += 1
            self._dirty[owner] = self._marks
        if self._dirty and not self._closed and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.get_running_loop().create_task(self._recover(), name="hot-cache-recovery")

    async def _recover(self) -> None:
        """Invalidate this process's dirty entries as soon as Redis answers again."""
        while self._dirty and not self._closed:
            await asyncio.sleep(max(self._down_until - time.monotonic(), 0.0) + min(0.25, self.options.retry_s))
            if await self._ready():
                with contextlib.suppress(Exception):  # _invalidate_dirty counts and logs
                    await self._invalidate_dirty()

    async def _invalidate_dirty(self) -> None:
        batch = dict(self._dirty)
        boot = self._boot or b""
        calls: list[Call] = [(INVALIDATE, conversation_keys(*owner), (boot, self._tomb_ms)) for owner in batch]
        try:
            results = await _run_calls(self.redis, calls)
        except Exception as exc:
            self._failed(exc)
            raise
        for (owner, mark), result in zip(batch.items(), results, strict=True):
            if not isinstance(result, Exception) and self._dirty.get(owner) == mark:
                del self._dirty[owner]
                metrics.CACHE_INVALIDATIONS.inc()
        if self._dirty and batch.keys() & self._dirty.keys():
            log.warning("hot cache: %d entries still dirty", len(self._dirty))
