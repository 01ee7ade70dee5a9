"""Snapshots: what one read brought back (and the ticket a miss hands to its fill)."""

from __future__ import annotations

from dataclasses import dataclass

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
