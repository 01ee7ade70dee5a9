"""HotCache's fills: on a miss, read the entry from Postgres and write it only if nothing changed
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
from app.cache.snapshot import Snapshot, _Ticket
from app.models import Conversation, Message, Role, Status
from app.services import context
from app.services.context import PostgresWindowSource
from db.repositories import context as context_repo
from db.repositories import conversations as conversation_repo
from db.repositories import messages as message_repo
from db.repositories import state as state_repo
from db.session import Connection


class FillMixin(HotCacheBase):
    """HotCache's fills (a part of HotCache, app/cache/client.py)."""

    # fills ---------------------------------------------------------------------------------------

    async def _fill(
        self, conn: Connection, tenant_id: str, cid: uuid.UUID, ticket: _Ticket, boot: bytes | None
    ) -> Snapshot | None:
        """Read the entry from Postgres and write it if nothing changed since `ticket`. Returns
        what was read (valid Postgres data whether or not it was written); None: no such
        conversation."""
        conversation = await conversation_repo.get(conn, tenant_id, id=cid)
        if conversation is None:
            return None
        self._remember((tenant_id, conversation.session_id), cid)
        last_seq = conversation.last_seq
        newest = await context_repo.newest(
            conn, tenant_id, cid, after_seq=0, before_seq=last_seq + 1, limit=self.options.recent_messages
        )
        newest.reverse()
        if newest:
            loaded = await message_repo.sources_for(conn, tenant_id, [(cid, m.seq) for m in newest])
            for m in newest:
                m.sources = loaded[(cid, m.seq)]
        entries = await state_repo.list_(conn, tenant_id, cid)
        head = last_seq - len(newest) + 1
        first_system = await self._first_system(conn, tenant_id, conversation, newest, head)
        by_key = {e.key: e for e in entries}
        snapshot = Snapshot(
            conversation=conversation,
            first_system=first_system,
            system_prompt=by_key.get(context_repo.SYSTEM_PROMPT_KEY),
            summary=by_key.get(context_repo.SUMMARY_KEY),
            messages=newest,
            head=head,
        )
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

    @staticmethod
    async def _first_system(
        conn: Connection, tenant_id: str, conversation: Conversation, newest: list[Message], head: int
    ) -> Message | None:
        """The first SYSTEM message up to last_seq, from what is in hand when possible (the context
        service remembers where it is, or how far there is none)."""
        known = context.system_seqs.get((tenant_id, conversation.id))
        if head == 1 or (known is not None and known[0] == "found" and known[1] >= head):
            for m in newest:
                if m.role is Role.SYSTEM:
                    return m
            if head == 1:
                return None
        if known is not None and known[0] == "none" and known[1] >= conversation.last_seq:
            return None
        source = PostgresWindowSource(conn, tenant_id, conversation.id)
        prelude = await context._prelude(source, tenant_id, conversation)
        return prelude.first_system
