"""Subscription root: live messages exactly once, in order, across reconnects and processes.

messageAdded: subscribe to the conversation's channel first (confirmed by Redis), then replay
from storage everything after `afterSeq`, then go live. Every message is delivered only when
it is the next seq; a jump is filled from storage first, a duplicate is dropped, and a hub
reconnect (RESYNC) re-reads storage up to the current lastSeq. So the seam between replay and
live, a lost pub/sub message and a Redis restart all end the same way: seq N+1 after seq N.
A lost event that no later one reveals (a conversation's last message) is found by the idle check:
a stream that hears nothing for SUBSCRIPTION_IDLE_CHECK_S reads the conversation's lastSeq (one
single-row read) and catches up. It bounds how late any loss is delivered, whatever its cause.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from datetime import datetime
from enum import StrEnum
from typing import cast

import strawberry

from app import metrics, models
from app.api.domains.common import Ctx
from app.api.domains.conversations import Conversation
from app.api.domains.message_types import Message
from app.errors import DomainError, ErrorCode, NotFound
from app.events import IDLE, RESYNC, EventHub, SubscriberOverflow, conversation_channel, tenant_channel
from app.models import ConversationRef, DomainEvent, EventType
from app.services import conversations, messages

REPLAY_CHUNK = 100


class SlowSubscriber(DomainError):
    code = ErrorCode.BAD_USER_INPUT


@strawberry.enum(description="What happened to a conversation.")
class ConversationEventType(StrEnum):
    CREATED = "created"
    MESSAGE_ADDED = "message_added"
    STATE_CHANGED = "state_changed"
    CLOSED = "closed"


@strawberry.type(description="Something that happened to a conversation of this tenant.")
class ConversationEvent:
    type: ConversationEventType = strawberry.field(description="What happened.")
    conversation: Conversation = strawberry.field(description="The conversation after the change.")
    message: Message | None = strawberry.field(description="The new message (MESSAGE_ADDED).")
    state_key: str | None = strawberry.field(description="The state key written or deleted (STATE_CHANGED).")
    at: datetime = strawberry.field(description="When it happened.")


async def _storage(info: Ctx, tenant: str, conversation_id: uuid.UUID, lo: int, hi: int) -> list[models.Message]:
    """Messages lo..hi with their sources (a subscription context has no per-request loaders)."""
    async with info.context.resources.db.read() as conn:
        key = (conversation_id, lo, hi)
        found = (await messages.ranges(conn, tenant, [key]))[key]
        return await messages.with_sources(conn, tenant, found)


async def _wait_for_session(hub: EventHub, info: Ctx, tenant: str, session_id: str) -> models.Conversation:
    """A sessionId that does not exist yet: wait on the tenant channel until it does."""
    async with hub.subscribe(tenant_channel(tenant)) as sub:
        while True:
            async with info.context.resources.db.read() as conn:
                found = await conversations.find(conn, tenant, ConversationRef(session_id=session_id))
            if found is not None:
                return found
            while True:
                item = await sub.get(info.context.resources.settings.subscription_idle_check_s)
                if item is RESYNC or item is IDLE:
                    break  # look in storage again
                event = cast(DomainEvent, item)
                if event.type is EventType.DELETED:
                    continue
                if event.conversation is not None and event.conversation.session_id == session_id:
                    return event.conversation


@strawberry.type(description="Live streams over WebSocket (graphql-transport-ws, or legacy graphql-ws).")
class Subscription:
    @strawberry.subscription(
        description="afterSeq given: every message with seq > afterSeq, then live ones, each once, in order. "
        "Omitted: live only."
    )
    async def message_added(
        self,
        info: Ctx,
        conversation_id: strawberry.ID | None = None,
        session_id: str | None = None,
        after_seq: int | None = None,
    ) -> AsyncGenerator[Message, None]:
        tenant = info.context.tenant()
        resources = info.context.resources
        target = conversations.ref(conversation_id, session_id, resources.limits)
        if after_seq is not None and after_seq < 0:
            raise DomainError("afterSeq must not be negative")
        hub = resources.hub
        async with resources.db.read() as conn:
            conversation = await conversations.find(conn, tenant, target)
        if conversation is None:
            if target.session_id is None:
                raise NotFound("conversation not found", conversationId=str(target.id))
            conversation = await _wait_for_session(hub, info, tenant, target.session_id)
        cid = conversation.id
        async with hub.subscribe(conversation_channel(tenant, cid)) as sub:
            async with resources.db.read() as conn:
                current = await conversations.get(conn, tenant, ConversationRef(id=cid))
            last = current.last_seq if after_seq is None else after_seq
            closed = current.status is not models.Status.ACTIVE

            async def catch_up(to: int) -> AsyncGenerator[models.Message, None]:
                nonlocal last
                while last < to:
                    hi = min(to, last + REPLAY_CHUNK)
                    metrics.BACKFILLS.inc()
                    for message in await _storage(info, tenant, cid, last + 1, hi):
                        if message.seq == last + 1:
                            last = message.seq
                            yield message
                    if last < hi:
                        return  # not in storage yet (should not happen): wait for live

            async for message in catch_up(current.last_seq):
                metrics.EVENTS_DELIVERED.labels("messageAdded").inc()
                yield cast(Message, message)
            idle_after = resources.settings.subscription_idle_check_s
            while not closed:
                try:
                    item = await sub.get(idle_after)
                except SubscriberOverflow:
                    raise SlowSubscriber(
                        f"subscriber too slow; resubscribe with afterSeq: {last}", afterSeq=last
                    ) from None
                if item is RESYNC or item is IDLE:
                    async with resources.db.read() as conn:
                        found = await conversations.find(conn, tenant, ConversationRef(id=cid))
                    if found is None:
                        return  # deleted while the hub was away: the stream is over
                    current = found
                    if item is IDLE:
                        metrics.IDLE_CHECKS.labels("behind" if current.last_seq > last else "current").inc()
                    async for message in catch_up(current.last_seq):
                        metrics.EVENTS_DELIVERED.labels("messageAdded").inc()
                        yield cast(Message, message)
                    closed = current.status is not models.Status.ACTIVE
                    continue
                event = cast(DomainEvent, item)
                if event.type is EventType.DELETED:
                    return  # nothing more will ever be added: complete (app/services/deletion.py)
                if event.type is EventType.CLOSED:
                    async for message in catch_up(event.conversation.last_seq if event.conversation else last):
                        yield cast(Message, message)
                    closed = True
                    continue
                if event.type is not EventType.MESSAGE_ADDED or event.message is None:
                    continue
                seq = event.message.seq
                if seq <= last:
                    continue  # already delivered (replay overlap or a duplicate)
                if seq > last + 1:
                    async for message in catch_up(seq - 1):
                        yield cast(Message, message)
                if seq == last + 1:
                    last = seq
                    metrics.EVENTS_DELIVERED.labels("messageAdded").inc()
                    yield cast(Message, event.message)

    @strawberry.subscription(description="Events of this tenant's conversations, optionally of one agent or user.")
    async def conversation_events(
        self, info: Ctx, agent_id: str | None = None, user_id: str | None = None
    ) -> AsyncGenerator[ConversationEvent, None]:
        tenant = info.context.tenant()
        async with info.context.resources.hub.subscribe(tenant_channel(tenant)) as sub:
            while True:
                try:
                    item = await sub.get()
                except SubscriberOverflow:
                    raise SlowSubscriber("subscriber too slow; resubscribe") from None
                if item is RESYNC:
                    continue  # live events only: nothing to replay
                event = cast(DomainEvent, item)
                header = event.conversation
                # DELETED is not a ConversationEventType (the contract's enum): not streamed here.
                if event.type in (EventType.UPDATED, EventType.DELETED) or header is None:
                    continue
                if (agent_id is not None and header.agent_id != agent_id) or (
                    user_id is not None and header.user_id != user_id
                ):
                    continue
                metrics.EVENTS_DELIVERED.labels("conversationEvents").inc()
                yield ConversationEvent(
                    type=ConversationEventType(event.type.value),
                    conversation=cast(Conversation, header),
                    message=cast(Message | None, event.message),
                    state_key=event.state_key,
                    at=event.at,
                )
