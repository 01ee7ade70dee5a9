"""CachedWindowSource: a context.WindowSource served from the hot cache, Postgres for the rest."""

from __future__ import annotations

from app.cache.client import HotCache
from app.cache.snapshot import EntrySource, Snapshot
from app.models import Conversation, Message
from app.services.context import PostgresWindowSource, Prelude
from db.session import Connection


class CachedWindowSource:
    """A context.WindowSource from the hot cache: the prelude (state keys, first SYSTEM message) and
    the newest messages come from one Redis call made on first use; messages older than the cached
    suffix, or newer than it (a cache behind the header the window was asked for), from Postgres."""

    __slots__ = ("_loaded", "cache", "conn", "conversation", "entries", "pg", "prefetch", "snapshot", "tenant_id")

    def __init__(
        self,
        cache: HotCache,
        entries: EntrySource,
        conn: Connection,
        tenant_id: str,
        conversation: Conversation,
        prefetch: int,
    ) -> None:
        self.cache = cache
        self.entries = entries
        self.conn = conn
        self.tenant_id = tenant_id
        self.conversation = conversation
        self.prefetch = prefetch
        self.pg = PostgresWindowSource(conn, tenant_id, conversation.id)
        self.snapshot: Snapshot | None = None
        self._loaded = False

    async def _snapshot(self) -> Snapshot | None:
        if not self._loaded:
            self._loaded = True
            self.snapshot = await self.cache.window(self.entries, self.tenant_id, self.conversation.id, self.prefetch)
        return self.snapshot

    async def prelude(self, *, from_seq: int, up_to_seq: int) -> Prelude:
        snap = await self._snapshot()
        if snap is None or up_to_seq > snap.last_seq:
            return await self.pg.prelude(from_seq=from_seq, up_to_seq=up_to_seq)
        first = snap.first_system
        if first is not None and first.seq < from_seq:
            # The service remembers a prompt after the first one: disagree → ask the truth.
            return await self.pg.prelude(from_seq=from_seq, up_to_seq=up_to_seq)
        if first is not None and first.seq > up_to_seq:
            first = None
        return Prelude(system_prompt=snap.system_prompt, summary=snap.summary, first_system=first)

    async def newest(self, before_seq: int, limit: int, *, after_seq: int = 0) -> list[Message]:
        if limit < 1 or before_seq - after_seq <= 1:
            return []
        snap = await self._snapshot()
        hi = before_seq - 1
        if snap is None or hi > snap.last_seq:
            return await self.pg.newest(before_seq, limit, after_seq=after_seq)
        lo = max(after_seq + 1, hi - limit + 1)
        out: list[Message] = []
        top = hi
        if top >= snap.in_hand:
            bottom = max(lo, snap.in_hand)
            base = snap.in_hand
            out.extend(snap.messages[i - base] for i in range(top, bottom - 1, -1))
            top = bottom - 1
        if top >= lo and top >= snap.head:
            bottom = max(lo, snap.head)
            cached = await self.cache.range_of(self.tenant_id, self.conversation.id, bottom, top)
            if cached is not None:
                out.extend(reversed(cached))
                top = bottom - 1
        if top >= lo:
            out.extend(await self.pg.newest(top + 1, top - lo + 1, after_seq=after_seq))
        return out
