"""The services' side of the hot store: every Postgres read a cache miss needs (its fill), and
the cached context-window source. The hot store (app/cache) only writes and answers what it
holds; these functions decide what the truth is and when the cache is asked at all."""

from __future__ import annotations

import math
import uuid

from app.cache.client import HotCache
from app.cache.snapshot import Snapshot
from app.models import Conversation, Message, Role
from app.services import context
from app.services.cached_window import CachedWindowSource
from app.services.context import PostgresWindowSource
from db.repositories import context as context_repo
from db.repositories import conversations as conversation_repo
from db.repositories import messages as message_repo
from db.repositories import state as state_repo
from db.session import Connection


class PostgresEntries:
    """The hot store's EntrySource over one connection: what a miss reads to fill an entry."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def conversation_id(self, tenant_id: str, session_id: str) -> uuid.UUID | None:
        header = await conversation_repo.get(self.conn, tenant_id, session_id=session_id)
        return None if header is None else header.id

    async def entry(self, tenant_id: str, conversation_id: uuid.UUID, recent: int) -> Snapshot | None:
        conn, cid = self.conn, conversation_id
        conversation = await conversation_repo.get(conn, tenant_id, id=cid)
        if conversation is None:
            return None
        last_seq = conversation.last_seq
        newest = await context_repo.newest(conn, tenant_id, cid, after_seq=0, before_seq=last_seq + 1, limit=recent)
        newest.reverse()
        if newest:
            loaded = await message_repo.sources_for(conn, tenant_id, [(cid, m.seq) for m in newest])
            for m in newest:
                m.sources = loaded[(cid, m.seq)]
        entries = await state_repo.list_(conn, tenant_id, cid)
        head = last_seq - len(newest) + 1
        first_system = await _first_system(conn, tenant_id, conversation, newest, head)
        by_key = {e.key: e for e in entries}
        return Snapshot(
            conversation=conversation,
            first_system=first_system,
            system_prompt=by_key.get(context_repo.SYSTEM_PROMPT_KEY),
            summary=by_key.get(context_repo.SUMMARY_KEY),
            messages=newest,
            head=head,
            entries=entries,
        )


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


def window_source(
    cache: HotCache,
    conn: Connection,
    tenant_id: str,
    conversation: Conversation,
    *,
    max_tokens: int,
    reserve_tokens: int = 0,
) -> CachedWindowSource:
    """A context.WindowSource over the hot store for `build_window(source=...)`: it prefetches
    about as many newest messages as the budget holds at the conversation's average size."""
    average = conversation.token_count / max(conversation.message_count, 1)
    budget = max(max_tokens - reserve_tokens, 0)
    wanted = math.ceil(budget / max(average, 1.0) * context.CHUNK_SLACK) + context.CHUNK_EXTRA
    prefetch = min(cache.options.recent_messages, max(context.MIN_CHUNK, wanted))
    return CachedWindowSource(cache, PostgresEntries(conn), conn, tenant_id, conversation, prefetch)
