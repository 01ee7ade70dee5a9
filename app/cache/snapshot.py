"""Snapshots: what one read brought back (and the ticket a miss hands to its fill)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol

from app.models import Conversation, Message, StateEntry


@dataclass(slots=True)
class Snapshot:
    """A consistent view of one entry (from one Redis call, or from the Postgres reads of a fill)."""

    conversation: Conversation
    #: The first SYSTEM message among seqs 1..last_seq (None: there is none).
    first_system: Message | None
    system_prompt: StateEntry | None
    summary: StateEntry | None
    #: The newest cached messages in hand, oldest first; they end at conversation.last_seq.
    messages: list[Message]
    #: The oldest seq the Redis list holds (messages older than `messages` may still be there).
    head: int
    #: Every state entry of the conversation (a fill writes them all; reads leave it empty).
    entries: list[StateEntry] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.conversation.last_seq

    @property
    def in_hand(self) -> int:
        """The oldest seq in `messages` (last_seq + 1 when there are none)."""
        return self.last_seq - len(self.messages) + 1


class _Ticket:
    __slots__ = ("ms", "v")

    def __init__(self, v: int, ms: int) -> None:
        self.v = v
        self.ms = ms


class EntrySource(Protocol):
    """Where a miss reads the truth from. The hot store never reads Postgres itself: the services
    hand it one of these (app/services/hot_fill.py) and decide when the cache is used at all."""

    async def conversation_id(self, tenant_id: str, session_id: str) -> uuid.UUID | None:
        """The conversation a sessionId names, or None."""
        ...

    async def entry(self, tenant_id: str, conversation_id: uuid.UUID, recent: int) -> Snapshot | None:
        """The entry to cache: header, its newest `recent` messages (with sources), every state
        entry and the first SYSTEM message; None when there is no such conversation."""
        ...
