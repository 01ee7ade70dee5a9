"""HotCache's fills: on a miss, read the entry from the caller's EntrySource and write it only if nothing changed
since the miss's ticket (its version `v`) and within FILL_DEADLINE_S."""

from __future__ import annotations

import uuid
from typing import Any

from app import metrics
from app.cache import keys as key_layout
from app.cache.base import HotCacheBase
from app.cache.codec import encode_conversation, encode_message, encode_state
from app.cache.keys import FILL_DEADLINE_S, conversation_keys, session_key
from app.cache.scripts import FILL
from app.cache.snapshot import EntrySource, Snapshot, _Ticket
from app.models import Status


class FillMixin(HotCacheBase):
    """HotCache's fills (a part of HotCache, app/cache/client.py)."""

    # fills ---------------------------------------------------------------------------------------

    async def _fill(
        self, source: EntrySource, tenant_id: str, cid: uuid.UUID, ticket: _Ticket, boot: bytes | None
    ) -> Snapshot | None:
        """Read the entry from `source` (Postgres, through the services) and write it if nothing
        changed since `ticket`. Returns what was read (valid data whether or not it was written);
        None: no such conversation."""
        snapshot = await source.entry(tenant_id, cid, self.options.recent_messages)
        if snapshot is None:
            return None
        conversation, entries, newest = snapshot.conversation, snapshot.entries, snapshot.messages
        self._remember((tenant_id, conversation.session_id), cid)
        last_seq = conversation.last_seq
        first_system = snapshot.first_system
        active = conversation.status is Status.ACTIVE
        args: list[Any] = [
            boot,
            ticket.v,
            ticket.ms,
            int(FILL_DEADLINE_S * 1000),
            encode_conversation(conversation),
            last_seq,
            encode_message(first_system) if first_system is not None else b"",
            conversation.session_id,
            1 if active else 0,
            self._ttl_ms if active else self._grace_ms,
            len(entries) * 2,
        ]
        for e in entries:
            args += [e.key, encode_state(e)]
        blobs = [encode_message(m) for m in newest]
        kept, size = 0, 0
        for blob in reversed(blobs):  # the newest that fit MAX_ENTRY_BYTES (at least one)
            if kept and size + len(blob) > key_layout.MAX_ENTRY_BYTES:
                break
            kept, size = kept + 1, size + len(blob)
        args += blobs[len(blobs) - kept :]
        snapshot.head = last_seq - kept + 1
        try:
            written = await self._eval(FILL, conversation_keys(tenant_id, cid), args)
            if written == 1:
                metrics.CACHE_FILLS.inc()
                await self.redis.set(session_key(tenant_id, conversation.session_id), str(cid), px=self._ttl_ms)
        except Exception as exc:  # the data read is still right: serve it
            self._read_failed(exc, "fill")
        return snapshot
