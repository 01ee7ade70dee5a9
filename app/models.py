"""Plain records the service layer returns; edges turn them into GraphQL types or JSON."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Status(StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"
    ARCHIVED = "archived"


class ConversationOrder(StrEnum):
    LAST_ACTIVITY_DESC = "last_activity_desc"
    CREATED_AT_DESC = "created_at_desc"
    CREATED_AT_ASC = "created_at_asc"


@dataclass(slots=True)
class Source:
    document_id: str
    chunk_id: str | None = None
    title: str | None = None
    uri: str | None = None
    score: float | None = None
    snippet: str | None = None


@dataclass(slots=True)
class Conversation:
    tenant_id: str
    id: uuid.UUID
    session_id: str
    user_id: str | None
    agent_id: str | None
    channel: str | None
    title: str | None
    status: Status
    tags: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    last_message_at: datetime | None
    last_activity_at: datetime
    closed_at: datetime | None
    close_reason: str | None
    message_count: int
    token_count: int
    last_seq: int


# weakref_slot: a subscription's shared result lives as long as its message (app/api/shared_events.py).
@dataclass(slots=True, weakref_slot=True)
class Message:
    tenant_id: str
    conversation_id: uuid.UUID
    seq: int
    id: uuid.UUID
    client_message_id: str | None
    role: Role
    content: str
    name: str | None
    tool_call_id: str | None
    tool_calls: Any
    token_count: int
    metadata: dict[str, Any]
    execution: dict[str, Any] | None
    created_at: datetime
    #: None until loaded: history pages load sources only when asked for them.
    sources: list[Source] | None = None


@dataclass(slots=True)
class StateEntry:
    conversation_id: uuid.UUID
    key: str
    value: Any
    version: int
    updated_at: datetime


@dataclass(slots=True)
class NewMessage:
    """A validated message about to be appended."""

    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    execution: dict[str, Any] | None = None
    client_message_id: str | None = None
    token_count: int = 0


@dataclass(slots=True)
class ConversationRef:
    """Exactly one of id and session_id."""

    id: uuid.UUID | None = None
    session_id: str | None = None


@dataclass(slots=True)
class ConversationDefaults:
    """What a conversation created implicitly (by a new sessionId) starts with."""

    user_id: str | None = None
    agent_id: str | None = None
    channel: str | None = None


@dataclass(slots=True)
class AppendResult:
    message: Message
    conversation: Conversation
    created: bool


@dataclass(slots=True)
class BatchAppendResult:
    messages: list[Message]
    conversation: Conversation
    created_count: int


@dataclass(slots=True)
class Page(Generic[T]):
    """A keyset page. Cursors are made on demand (`cursor_of`): most clients never ask for them."""

    items: list[T]
    cursor_of: Callable[[T], str]
    has_next_page: bool
    has_previous_page: bool
    total_count: int
    # True when counting stopped at the cap: total_count is then a lower bound.
    total_count_capped: bool = False

    @property
    def cursors(self) -> list[str]:
        return [self.cursor_of(item) for item in self.items]

    @property
    def start_cursor(self) -> str | None:
        return self.cursor_of(self.items[0]) if self.items else None

    @property
    def end_cursor(self) -> str | None:
        return self.cursor_of(self.items[-1]) if self.items else None


class Edge(Generic[T]):
    """A connection edge whose cursor is computed only when a client selects it."""

    __slots__ = ("cursor_of", "node")

    def __init__(self, node: T, cursor_of: Callable[[T], str]) -> None:
        self.node = node
        self.cursor_of = cursor_of

    @property
    def cursor(self) -> str:
        return self.cursor_of(self.node)


@dataclass(slots=True)
class ConversationFilter:
    user_id: str | None = None
    agent_id: str | None = None
    status: Status | None = None
    tags: list[str] | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    metadata: dict[str, Any] | None = None


class EventType(StrEnum):
    CREATED = "created"
    MESSAGE_ADDED = "message_added"
    STATE_CHANGED = "state_changed"
    CLOSED = "closed"
    #: Title, tags, metadata or a status change other than closing: for caches, not subscribers.
    UPDATED = "updated"
    #: The conversation and everything in it were deleted (app/services/deletion.py): caches drop
    #: their copies, messageAdded subscriptions complete. `conversation` is the header it had.
    DELETED = "deleted"


@dataclass(slots=True)
class DomainEvent:
    """What a committed unit of work changed. Services emit them into the unit of work; after
    the commit, listeners (the hot cache, the live fan-out) receive them in order."""

    type: EventType
    tenant_id: str
    conversation_id: uuid.UUID
    at: datetime
    #: The conversation header after the change, when the service had it at hand.
    conversation: Conversation | None = None
    message: Message | None = None
    state_key: str | None = None
    #: A state write: the entry after it (None when the key was deleted).
    state: StateEntry | None = None
