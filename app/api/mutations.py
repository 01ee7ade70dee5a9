"""Mutation root: each field runs one unit of work (one transaction) through app/services."""

from __future__ import annotations

from typing import Any, cast

import strawberry

from app import models
from app.api import write_only
from app.api.admin import AdminMutation
from app.api.deletion import DeletionMutation
from app.api.memory import MemoryMutation
from app.api.types import (
    AddMessageInput,
    AddMessagePayload,
    AddMessagesInput,
    AddMessagesPayload,
    Conversation,
    CreateConversationInput,
    CrmSync,
    Ctx,
    ExecutionInput,
    Message,
    SetStateInput,
    SourceInput,
    StateEntry,
    UpdateConversationInput,
)
from app.errors import Forbidden
from app.services import conversations, crm, messages, state
from app.services.limits import Limits
from app.services.tenants import Scope


def _new_message(
    limits: Limits,
    *,
    role: models.Role,
    content: str,
    name: str | None,
    tool_call_id: str | None,
    tool_calls: Any,
    metadata: Any,
    sources: list[SourceInput] | None,
    execution: ExecutionInput | None,
    client_message_id: str | None,
) -> models.NewMessage:
    return messages.new_message(
        role=role,
        content=content,
        name=name,
        tool_call_id=tool_call_id,
        tool_calls=tool_calls,
        metadata=metadata,
        sources=[s.to_model() for s in sources] if sources else None,
        execution=execution.to_dict() if execution is not None else None,
        client_message_id=client_message_id,
        limits=limits,
    )


@strawberry.type(description="Writes; each field is one transaction, run in order.")
class Mutation(MemoryMutation, AdminMutation, DeletionMutation):
    @strawberry.mutation(description="Start a conversation; a taken sessionId is CONFLICT.")
    async def create_conversation(self, info: Ctx, input: CreateConversationInput) -> Conversation:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, write_only.CREATED_CONVERSATION)
        limits = info.context.resources.limits
        created = await info.context.resources.db.run(
            lambda uow: conversations.create(
                uow,
                tenant,
                session_id=input.session_id,
                user_id=input.user_id,
                agent_id=input.agent_id,
                channel=input.channel,
                title=input.title,
                tags=input.tags,
                metadata=cast(dict[str, Any] | None, input.metadata),
                limits=limits,
            )
        )
        return cast(Conversation, created)

    @strawberry.mutation(description="Append one message (idempotent with clientMessageId).")
    async def add_message(self, info: Ctx, input: AddMessageInput) -> AddMessagePayload:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, write_only.ADD_MESSAGE)
        limits = info.context.resources.limits
        target = conversations.ref(input.conversation_id, input.session_id, limits)
        msg = _new_message(
            limits,
            role=input.role,
            content=input.content,
            name=input.name,
            tool_call_id=input.tool_call_id,
            tool_calls=input.tool_calls,
            metadata=input.metadata,
            sources=input.sources,
            execution=input.execution,
            client_message_id=input.client_message_id,
        )
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
        batch = [
            _new_message(
                limits,
                role=m.role,
                content=m.content,
                name=m.name,
                tool_call_id=m.tool_call_id,
                tool_calls=m.tool_calls,
                metadata=m.metadata,
                sources=m.sources,
                execution=m.execution,
                client_message_id=m.client_message_id,
            )
            for m in input.messages
        ]
        defaults = models.ConversationDefaults(user_id=input.user_id, agent_id=input.agent_id, channel=input.channel)
        result = await info.context.resources.db.run(
            lambda uow: messages.append_batch(uow, tenant, target, batch, defaults=defaults, limits=limits)
        )
        return AddMessagesPayload(
            messages=cast(list[Message], result.messages),
            conversation=cast(Conversation, result.conversation),
            created_count=result.created_count,
        )

    @strawberry.mutation(description="Write a state key (1 when first created, +1 per write; versions never go back).")
    async def set_state(self, info: Ctx, input: SetStateInput) -> StateEntry:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, write_only.SET_STATE)
        limits = info.context.resources.limits
        conversation_id = conversations.parse_uuid(input.conversation_id, "conversationId")
        entry = await info.context.resources.db.run(
            lambda uow: state.set_(
                uow,
                tenant,
                conversation_id,
                input.key,
                input.value,
                expected_version=input.expected_version,
                limits=limits,
            )
        )
        return cast(StateEntry, entry)

    @strawberry.mutation(description="Delete a state key; false when it did not exist.")
    async def delete_state(self, info: Ctx, conversation_id: strawberry.ID, key: str) -> bool:
        tenant = info.context.tenant(Scope.WRITE)
        limits = info.context.resources.limits
        cid = conversations.parse_uuid(conversation_id, "conversationId")
        return await info.context.resources.db.run(lambda uow: state.delete(uow, tenant, cid, key, limits))

    @strawberry.mutation(description="Change title, tags, metadata (merged) or status.")
    async def update_conversation(self, info: Ctx, input: UpdateConversationInput) -> Conversation:
        tenant = info.context.tenant(Scope.WRITE)
        # Only what this input sets: metadata is merged with stored keys, so it always needs read.
        write_only.require_selection(
            info,
            write_only.CONVERSATION_RECEIPT
            | write_only.fields(
                *(["title"] if input.title is not strawberry.UNSET else []),
                *(["tags"] if input.tags is not None else []),
            ),
        )
        limits = info.context.resources.limits
        cid = conversations.parse_uuid(input.id, "id")
        kwargs: dict[str, Any] = {}
        if input.title is not strawberry.UNSET:
            kwargs["title"] = input.title
        updated = await info.context.resources.db.run(
            lambda uow: conversations.update(
                uow,
                tenant,
                cid,
                tags=input.tags,
                metadata=cast(dict[str, Any] | None, input.metadata),
                status=input.status,
                limits=limits,
                **kwargs,
            )
        )
        return cast(Conversation, updated)

    @strawberry.mutation(description="Idempotent: closing a closed conversation returns it unchanged.")
    async def close_session(
        self,
        info: Ctx,
        conversation_id: strawberry.ID | None = None,
        session_id: str | None = None,
        reason: str | None = None,
    ) -> Conversation:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(
            info, write_only.CONVERSATION_RECEIPT | write_only.fields(*(["closeReason"] if reason else []))
        )
        limits = info.context.resources.limits
        target = conversations.ref(conversation_id, session_id, limits)
        shows_reason = not write_only.can_read(info) and "closeReason" in write_only.selected(info)

        async def close(uow: Any) -> models.Conversation:
            closed, _ = await conversations.close(uow, tenant, target, reason, limits)
            if shows_reason and closed.close_reason != reason:
                # Closed earlier for another reason: that reason is not this caller's to read.
                raise Forbidden("the conversation was already closed; reading its closeReason needs read")
            return closed

        return cast(Conversation, await info.context.resources.db.run(close))

    @strawberry.mutation(description="Queue a CRM delivery of this conversation now.")
    async def sync_crm(self, info: Ctx, conversation_id: strawberry.ID) -> CrmSync:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, write_only.CRM_SYNC)
        resources = info.context.resources
        cid = conversations.parse_uuid(conversation_id, "conversationId")
        record = await resources.db.run(lambda uow: crm.request_sync(uow, tenant, cid, resources.crm))
        return cast(CrmSync, record)
