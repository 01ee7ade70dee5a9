"""Messages: the append payloads, Query.history and the addMessage / addMessages mutations. The
Message object type and the message inputs are in message_types.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import strawberry

from app import models
from app.api import write_only
from app.api.domains.common import Ctx
from app.api.domains.conversations import Conversation
from app.api.domains.message_types import (
    AddMessageInput,
    AddMessagesInput,
    Message,
    MessageConnection,
    MessageInput,
)
from app.services import conversations, messages
from app.services.limits import Limits
from app.services.tenants import Scope


@strawberry.type(description="The appended (or, on a retry, the original) message.")
class AddMessagePayload:
    message: Message = strawberry.field(description="The message.")
    conversation: Conversation = strawberry.field(description="The conversation after the append.")
    created: bool = strawberry.field(description="False when clientMessageId matched an earlier message.")


@strawberry.type(description="The batch, in input order (originals for retried clientMessageIds).")
class AddMessagesPayload:
    messages: list[Message] = strawberry.field(description="The messages.")
    conversation: Conversation = strawberry.field(description="The conversation after the batch.")
    created_count: int = strawberry.field(description="How many were new.")


def _new_message(limits: Limits, m: AddMessageInput | MessageInput) -> models.NewMessage:
    """The input → the service's NewMessage. Fields beyond those converted here (a new optional
    Message field declared on the inputs in message_types.py) are copied by name."""
    return messages.new_message(
        role=models.Role(m.role),
        content=m.content,
        name=m.name,
        tool_call_id=m.tool_call_id,
        tool_calls=m.tool_calls,
        metadata=cast(Any, m.metadata),  # checked to be an object by the service
        sources=[s.to_model() for s in m.sources] if m.sources else None,
        execution=m.execution.to_dict() if m.execution is not None else None,
        client_message_id=m.client_message_id,
        limits=limits,
        **messages.extra_of(m),
    )


@strawberry.type
class MessagesQuery:
    @strawberry.field(
        description="Edges in seq order. first/after page forward from the oldest (or from afterSeq, or from the "
        "first message created at or after since); last/before backward from the newest; neither: last 50."
    )
    async def history(
        self,
        info: Ctx,
        conversation_id: strawberry.ID | None = None,
        session_id: str | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        after_seq: int | None = None,
        since: datetime | None = None,
    ) -> MessageConnection:
        tenant = info.context.tenant()
        limits = info.context.resources.limits
        target = conversations.ref(conversation_id, session_id, limits)
        async with info.context.resources.db.read() as conn:
            page = await messages.history_by_ref(
                conn,
                tenant,
                target,
                messages.HistoryArgs(
                    first=first, after=after, last=last, before=before, after_seq=after_seq, since=since
                ),
                limits=limits,
                cache=info.context.resources.cache,
            )
        return MessageConnection.from_page(page)


@strawberry.type
class MessagesMutation:
    @strawberry.mutation(description="Append one message (idempotent with clientMessageId).")
    async def add_message(self, info: Ctx, input: AddMessageInput) -> AddMessagePayload:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, write_only.ADD_MESSAGE)
        limits = info.context.resources.limits
        target = conversations.ref(input.conversation_id, input.session_id, limits)
        msg = _new_message(limits, input)
        defaults = models.ConversationDefaults(user_id=input.user_id, agent_id=input.agent_id, channel=input.channel)
        result = await info.context.resources.db.run(
            lambda uow: messages.append(
                uow, tenant, target, msg, expected_seq=input.expected_seq, defaults=defaults, limits=limits
            )
        )
        return AddMessagePayload(
            message=cast(Message, result.message),
            conversation=cast(Conversation, result.conversation),
            created=result.created,
        )

    @strawberry.mutation(description="Append 1 to 100 messages atomically, in order.")
    async def add_messages(self, info: Ctx, input: AddMessagesInput) -> AddMessagesPayload:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, write_only.ADD_MESSAGES)
        limits = info.context.resources.limits
        target = conversations.ref(input.conversation_id, input.session_id, limits)
        batch = [_new_message(limits, m) for m in input.messages]
        defaults = models.ConversationDefaults(user_id=input.user_id, agent_id=input.agent_id, channel=input.channel)
        result = await info.context.resources.db.run(
            lambda uow: messages.append_batch(uow, tenant, target, batch, defaults=defaults, limits=limits)
        )
        return AddMessagesPayload(
            messages=cast(list[Message], result.messages),
            conversation=cast(Conversation, result.conversation),
            created_count=result.created_count,
        )
