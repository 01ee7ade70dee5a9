"""Conversations: create, find, list, update, close. Sessions are passed in; nothing here commits."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from app.errors import BadUserInput, Conflict, NotFound
from app.models import (
    Conversation,
    ConversationFilter,
    ConversationOrder,
    ConversationRef,
    DomainEvent,
    EventType,
    Page,
    Status,
)
from app.services import crm, cursors
from app.services import limits as check
from app.services.limits import DEFAULT_LIMITS, Limits
from db.repositories import conversations as repo
from db.session import Connection, UnitOfWork

if TYPE_CHECKING:
    from app.cache.client import HotCache

DEFAULT_PAGE_SIZE = 20


def ref(
    conversation_id: uuid.UUID | str | None, session_id: str | None, limits: Limits = DEFAULT_LIMITS
) -> ConversationRef:
    """Exactly one of conversationId and sessionId, validated."""
    if (conversation_id is None) == (session_id is None):
        raise BadUserInput("give exactly one of conversationId and sessionId", field="conversationId")
    if conversation_id is not None:
        return ConversationRef(id=parse_uuid(conversation_id, "conversationId"))
    return ConversationRef(session_id=check.text(session_id, "sessionId", limits.max_id_length, required=True))


def parse_uuid(value: uuid.UUID | str, field: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise BadUserInput(f"{field} is not a valid UUID", field=field) from None


async def find(
    conn: Connection, tenant_id: str, target: ConversationRef, *, cache: HotCache | None = None
) -> Conversation | None:
    """The conversation, or None. With a `cache` (reads only, never inside a write): its
    cached header when hot, else Postgres."""
    if cache is not None:
        cached = await cache.conversation(tenant_id, target)
        if cached is not None:
            return cached
    return await repo.get(conn, tenant_id, id=target.id, session_id=target.session_id)


async def get(
    conn: Connection, tenant_id: str, target: ConversationRef, *, cache: HotCache | None = None
) -> Conversation:
    found = await find(conn, tenant_id, target, cache=cache)
    if found is None:
        raise NotFound("conversation not found", conversationId=str(target.id) if target.id else None)
    return found


async def get_many(conn: Connection, tenant_id: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, Conversation]:
    return {c.id: c for c in await repo.get_many(conn, tenant_id, ids)}


async def create(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    agent_id: str | None = None,
    channel: str | None = None,
    title: str | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Conversation:
    """Create a conversation; a taken sessionId is CONFLICT."""
    check.tenant_id(tenant_id)
    session_id = check.text(session_id, "sessionId", limits.max_id_length)
    if session_id == "":
        raise BadUserInput("sessionId must not be empty", field="sessionId")
    created = await repo.insert(
        uow.conn,
        tenant_id,
        session_id=session_id or str(uuid.uuid4()),
        user_id=check.text(user_id, "userId", limits.max_id_length),
        agent_id=check.text(agent_id, "agentId", limits.max_id_length),
        channel=check.text(channel, "channel", limits.max_id_length),
        title=check.text(title, "title", limits.max_title_length),
        tags=check.tags(tags, limits) or [],
        metadata=check.metadata(metadata, limits),
    )
    if created is None:
        raise Conflict("sessionId is already taken by another conversation", field="sessionId")
    uow.emit(DomainEvent(EventType.CREATED, tenant_id, created.id, created.created_at, conversation=created))
    return created


async def list_(
    conn: Connection,
    tenant_id: str,
    filter: ConversationFilter | None = None,
    *,
    first: int | None = DEFAULT_PAGE_SIZE,
    after: str | None = None,
    order: ConversationOrder = ConversationOrder.LAST_ACTIVITY_DESC,
    limits: Limits = DEFAULT_LIMITS,
    with_count: bool = True,
) -> Page[Conversation]:
    """A keyset page in the requested order. The total of the filter is counted only `with_count`
    (the edge passes whether totalCount was selected), exactly up to limits.list_count_cap."""
    f = validate_filter(filter or ConversationFilter(), limits)
    size = check.page_size(first if first is not None else DEFAULT_PAGE_SIZE, limits, "first")
    assert size is not None
    key = cursors.parse_conversation_cursor(after) if after else None
    rows = await repo.list_page(conn, tenant_id, f, order, size + 1, key) if size else []
    total = await repo.count(conn, tenant_id, f, limits.list_count_cap) if with_count else 0
    capped = total > limits.list_count_cap
    items = rows[:size]
    column = "last_activity_at" if order is ConversationOrder.LAST_ACTIVITY_DESC else "created_at"
    return Page(
        items=items,
        cursor_of=lambda c: cursors.conversation_cursor(getattr(c, column), c.id),
        has_next_page=len(rows) > size,
        has_previous_page=key is not None,
        total_count=min(total, limits.list_count_cap),
        total_count_capped=capped,
    )


def validate_filter(f: ConversationFilter, limits: Limits) -> ConversationFilter:
    check.text(f.user_id, "filter.userId", limits.max_id_length)
    check.text(f.agent_id, "filter.agentId", limits.max_id_length)
    f.tags = check.tags(f.tags, limits)
    if f.metadata is not None:
        f.metadata = check.metadata(f.metadata, limits, "filter.metadata")
    if f.created_from and f.created_to and f.created_from > f.created_to:
        raise BadUserInput("filter.createdFrom is after filter.createdTo", field="filter.createdFrom")
    return f


_UNSET: Any = object()


async def update(
    uow: UnitOfWork,
    tenant_id: str,
    id: uuid.UUID,
    *,
    title: str | None = _UNSET,
    tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    status: Status | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Conversation:
    """Patch a conversation: title replaced (null clears it), tags replaced, metadata merged by top-level key."""
    set_title = title is not _UNSET
    updated = await repo.update(
        uow.conn,
        tenant_id,
        id,
        title=check.text(title, "title", limits.max_title_length) if set_title else None,
        set_title=set_title,
        tags=check.tags(tags, limits),
        metadata_patch=check.metadata(metadata, limits) if metadata is not None else None,
        status=status.value if status is not None else None,
    )
    if updated is None:
        raise NotFound("conversation not found")
    closing = status is not None and status is not Status.ACTIVE and updated.closed_at == updated.updated_at
    kind = EventType.CLOSED if closing else EventType.UPDATED
    uow.emit(DomainEvent(kind, tenant_id, updated.id, updated.updated_at, conversation=updated))
    return updated


async def close(
    uow: UnitOfWork,
    tenant_id: str,
    target: ConversationRef,
    reason: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Conversation, bool]:
    """Close; idempotent. Returns (conversation, whether this call closed it).

    The CRM delivery (when the tenant has a webhook) is written in the same transaction and
    enqueued after commit (app/services/crm.py)."""
    reason = check.text(reason, "reason", limits.max_title_length)
    await uow.begin()
    conversation = await get(uow.conn, tenant_id, target)
    if conversation.status is not Status.ACTIVE:
        return conversation, False
    closed = await repo.close(uow.conn, tenant_id, conversation.id, reason)
    if closed is None:  # closed concurrently between our read and our update
        return await get(uow.conn, tenant_id, target), False
    assert closed.closed_at is not None
    uow.emit(DomainEvent(EventType.CLOSED, tenant_id, closed.id, closed.closed_at, conversation=closed))
    await crm.record_close(uow, closed)
    return closed, True
