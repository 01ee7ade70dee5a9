"""HotCache's reads: headers, history pages, message ranges, state and context windows, each one
round trip when hot; a miss answers None (ask Postgres) or fills the entry (app/cache/fill.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

from app import metrics
from app.cache.codec import UnknownFormat, decode_conversation, decode_messages, decode_state
from app.cache.fill import FillMixin
from app.cache.keys import LOADED, conversation_keys, session_key
from app.cache.scripts import READ_HEADER, READ_PAGE, READ_RANGE, READ_STATE, READ_WINDOW, _run_calls
from app.cache.snapshot import EntrySource, Snapshot, _Ticket
from app.models import Conversation, ConversationRef, Message, StateEntry


class ReadMixin(FillMixin):
    """HotCache's reads (a part of HotCache, app/cache/client.py)."""

    _mark_dirty: Any  # WriteMixin's (app/cache/writes.py)

    def _unknown_format(self, tenant_id: str, cid: uuid.UUID, kind: str) -> None:
        """An entry another version of the service wrote (a rolling deploy): a miss, never a
        guess. The entry goes (the dirty-repair path invalidates it) so the next read refills it
        in this version's format instead of missing until its TTL."""
        metrics.CACHE_UNKNOWN_FORMAT.inc()
        metrics.CACHE_MISSES.labels(kind).inc()
        self._mark_dirty([(tenant_id, cid)])

    # reads ---------------------------------------------------------------------------------------

    async def _resolve(self, source: EntrySource | None, tenant_id: str, target: ConversationRef) -> uuid.UUID | None:
        """The conversation id of `target`: given, remembered, from Redis, or (with a connection)
        from the source. None when it cannot be known cheaply or does not exist."""
        if target.id is not None:
            return target.id
        assert target.session_id is not None
        name = (tenant_id, target.session_id)
        known = self.sessions.get(name)
        if known is not None:
            self.sessions.move_to_end(name)
            return known
        raw = await self.redis.get(session_key(*name))
        if raw is not None:
            with contextlib.suppress(ValueError):
                return self._remember(name, uuid.UUID(raw.decode()))
        if source is None:
            return None
        found = await source.conversation_id(tenant_id, target.session_id)
        return None if found is None else self._remember(name, found)

    async def _forget_session(self, tenant_id: str, target: ConversationRef) -> None:
        """A sessionId that led to no (or another) conversation: forget where it led, here and in
        Redis (a conversation purged and its sessionId taken again while Redis was down)."""
        if target.session_id is None:
            return
        self.sessions.pop((tenant_id, target.session_id), None)
        with contextlib.suppress(Exception):
            await self.redis.delete(session_key(tenant_id, target.session_id))

    async def conversation(self, tenant_id: str, target: ConversationRef) -> Conversation | None:
        """The cached header of `target`, or None (not cached: ask Postgres)."""
        if not await self._ready():
            metrics.CACHE_MISSES.labels("header").inc()
            return None
        boot = self._boot
        try:
            cid = await self._resolve(None, tenant_id, target)
            if cid is None or (tenant_id, cid) in self._dirty:
                metrics.CACHE_MISSES.labels("header").inc()
                return None
            reply = await self._eval(READ_HEADER, conversation_keys(tenant_id, cid), (boot, target.session_id or ""))
            if reply[0] == 3:
                await self._forget_session(tenant_id, target)
            if reply[0] != 1 or self._boot != boot:
                metrics.CACHE_MISSES.labels("header").inc()
                return None
            conversation = decode_conversation(reply[1])
        except UnknownFormat:
            assert cid is not None  # decoding comes after the id is known
            self._unknown_format(tenant_id, cid, "header")
            return None
        except Exception as exc:
            self._read_failed(exc, "header")
            return None
        metrics.CACHE_HITS.labels("header").inc()
        return conversation

    async def page(
        self, source: EntrySource, tenant_id: str, target: ConversationRef, request: Any
    ) -> tuple[int, list[Message]] | None:
        """A history page as (last_seq, messages lo..hi), like db.repositories.messages.page_by_ref:
        one round trip when hot; a miss fills the entry from Postgres and answers from the fill
        when the page is recent. None: ask Postgres. `request` is a messages.PageRequest."""
        if not await self._ready():
            metrics.CACHE_MISSES.labels("history").inc()
            return None
        boot = self._boot
        try:
            cid = await self._resolve(source, tenant_id, target)
            if cid is None or (tenant_id, cid) in self._dirty:
                metrics.CACHE_MISSES.labels("history").inc()
                return None
            reply = await self._eval(
                READ_PAGE,
                conversation_keys(tenant_id, cid),
                (
                    boot,
                    target.session_id or "",
                    1 if request.forward else 0,
                    request.lower,
                    -1 if request.upper_cap is None else max(request.upper_cap, 0),  # (-1 means none)
                    request.size,
                ),
            )
            if self._boot != boot:
                metrics.CACHE_MISSES.labels("history").inc()
                return None
            status = reply[0]
            if status == 1:
                last_seq = int(reply[1])
                lo, _ = request.bounds(last_seq)
                try:
                    found = self._decode(tenant_id, cid, lo, reply[2])
                except UnknownFormat:
                    self._unknown_format(tenant_id, cid, "history")
                    return None
                metrics.CACHE_HITS.labels("history").inc()
                return last_seq, found
            metrics.CACHE_MISSES.labels("history").inc()
            if status != 0:  # 2: older than the cached suffix; 3: a stale sessionId mapping
                if status == 3:
                    await self._forget_session(tenant_id, target)
                return None
            snapshot = await self._fill(source, tenant_id, cid, _Ticket(int(reply[1]), int(reply[2])), boot)
        except Exception as exc:
            self._read_failed(exc, "history")
            return None
        if snapshot is None:
            await self._forget_session(tenant_id, target)
            return None
        if target.session_id is not None and snapshot.conversation.session_id != target.session_id:
            await self._forget_session(tenant_id, target)
            return None
        lo, hi = request.bounds(snapshot.last_seq)
        if hi < lo:
            return snapshot.last_seq, []
        if lo < snapshot.in_hand:
            return None
        start = lo - snapshot.in_hand
        return snapshot.last_seq, snapshot.messages[start : start + hi - lo + 1]

    async def ranges(
        self, tenant_id: str, wanted: Sequence[tuple[uuid.UUID, int, int]]
    ) -> dict[tuple[uuid.UUID, int, int], list[Message]]:
        """The (conversation, lo, hi) seq ranges the cache holds (messages are immutable, so any
        cached message in range is right); the others are left out."""
        found: dict[tuple[uuid.UUID, int, int], list[Message]] = {}
        if not wanted:
            return found
        if not await self._ready():
            metrics.CACHE_MISSES.labels("range").inc(len(wanted))
            return found
        boot = self._boot
        try:
            results = await _run_calls(
                self.redis, [(READ_RANGE, conversation_keys(tenant_id, cid), (boot, lo, hi)) for cid, lo, hi in wanted]
            )
            if self._boot != boot:
                results = [None] * len(wanted)
            for key, result in zip(wanted, results, strict=True):
                if isinstance(result, list):
                    try:
                        found[key] = self._decode(tenant_id, key[0], key[1], result)
                    except UnknownFormat:
                        self._unknown_format(tenant_id, key[0], "range")
        except Exception as exc:
            self._read_failed(exc, "range")
            found.clear()
        metrics.CACHE_HITS.labels("range").inc(len(found))
        metrics.CACHE_MISSES.labels("range").inc(len(wanted) - len(found))
        return found

    async def states(self, tenant_id: str, conversation_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[StateEntry]]:
        """All state entries (sorted by key) of the conversations the cache holds; others left out."""
        found: dict[uuid.UUID, list[StateEntry]] = {}
        if not conversation_ids:
            return found
        if not await self._ready():
            metrics.CACHE_MISSES.labels("state").inc(len(conversation_ids))
            return found
        boot = self._boot
        wanted = [cid for cid in conversation_ids if (tenant_id, cid) not in self._dirty]
        try:
            results = await _run_calls(
                self.redis, [(READ_STATE, conversation_keys(tenant_id, cid), (boot,)) for cid in wanted]
            )
            if self._boot != boot:
                results = [None] * len(wanted)
            for cid, result in zip(wanted, results, strict=True):
                if isinstance(result, list):
                    try:
                        entries = self._decode_states(cid, result)
                    except UnknownFormat:
                        self._unknown_format(tenant_id, cid, "state")
                        continue
                    if entries is not None:
                        found[cid] = entries
        except Exception as exc:
            self._read_failed(exc, "state")
            found.clear()
        metrics.CACHE_HITS.labels("state").inc(len(found))
        metrics.CACHE_MISSES.labels("state").inc(len(conversation_ids) - len(found))
        return found

    async def state_entries(self, tenant_id: str, conversation_id: uuid.UUID) -> list[StateEntry] | None:
        """One conversation's state entries sorted by key, or None (not cached)."""
        return (await self.states(tenant_id, [conversation_id])).get(conversation_id)

    @staticmethod
    def _decode_states(conversation_id: uuid.UUID, flat: list[bytes]) -> list[StateEntry] | None:
        pairs = dict(zip(flat[::2], flat[1::2], strict=True))
        if pairs.pop(LOADED, None) is None:
            return None
        # Sorted by code point: Postgres' ORDER BY key under the C collation (docs/decisions.md).
        return [decode_state(conversation_id, k, pairs[k]) for k in sorted(pairs, key=lambda k: k.decode())]

    async def window(self, source: EntrySource, tenant_id: str, cid: uuid.UUID, prefetch: int) -> Snapshot | None:
        """The window's prelude and newest messages in one round trip, or a fill; None: Postgres."""
        if not await self._ready() or (tenant_id, cid) in self._dirty:
            metrics.CACHE_MISSES.labels("window").inc()
            return None
        boot = self._boot
        try:
            reply = await self._eval(READ_WINDOW, conversation_keys(tenant_id, cid), (boot, "", prefetch))
            if self._boot != boot:
                metrics.CACHE_MISSES.labels("window").inc()
                return None
            if reply[0] == 1:
                _, header, last_seq, n, first_system, system_prompt, summary, items = reply
                metrics.CACHE_HITS.labels("window").inc()
                conversation = decode_conversation(header)
                if conversation.last_seq != int(last_seq):  # cannot happen: one script wrote both
                    return None
                return Snapshot(
                    conversation=conversation,
                    first_system=decode_messages(tenant_id, cid, [first_system])[0] if first_system else None,
                    system_prompt=decode_state(cid, b"system_prompt", system_prompt) if system_prompt else None,
                    summary=decode_state(cid, b"summary", summary) if summary else None,
                    messages=self._decode(tenant_id, cid, int(last_seq) - len(items) + 1, items),
                    head=int(last_seq) - int(n) + 1,
                )
            metrics.CACHE_MISSES.labels("window").inc()
            return await self._fill(source, tenant_id, cid, _Ticket(int(reply[1]), int(reply[2])), boot)
        except UnknownFormat:
            self._unknown_format(tenant_id, cid, "window")
            return None
        except Exception as exc:
            self._read_failed(exc, "window")
            return None

    def _decode(self, tenant_id: str, cid: uuid.UUID, first_seq: int, items: Sequence[bytes]) -> list[Message]:
        """Messages first_seq, first_seq+1, … from their cached bytes. Messages never change, so a
        message decoded before from the very same bytes is reused (decoding is most of a hot
        read's CPU). The objects are shared: readers must not mutate them (none does)."""
        memo = self.decoded
        out: list[Message | None] = []
        todo: list[int] = []
        for i, raw in enumerate(items):
            known = memo.get((tenant_id, cid, first_seq + i), raw)
            out.append(known)
            if known is None:
                todo.append(i)
        if todo:
            decoded = decode_messages(tenant_id, cid, [items[i] for i in todo])
            for i, m in zip(todo, decoded, strict=True):
                if m.seq != first_seq + i:
                    raise ValueError(f"cached message {m.seq} where {first_seq + i} belongs")
                out[i] = m
                memo.put((tenant_id, cid, m.seq), items[i], m)
        return out  # type: ignore[return-value]

    async def range_of(self, tenant_id: str, cid: uuid.UUID, lo: int, hi: int) -> list[Message] | None:
        return (await self.ranges(tenant_id, [(cid, lo, hi)])).get((cid, lo, hi))
