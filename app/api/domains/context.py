"""Context windows: the token-budgeted window type and Query.contextWindow (the same window is a
Conversation field in conversations.py)."""

from __future__ import annotations

from typing import cast

import strawberry

from app import models
from app.api.domains.common import Ctx
from app.api.domains.message_types import Message
from app.api.scalars import JSON
from app.services import conversations


@strawberry.type(description="A token-budgeted window of a conversation, ready for the next LLM call.")
class ContextWindow:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation.")
    model: str = strawberry.field(description="The requested model, or the default model.")
    encoding: str = strawberry.field(description="The tiktoken encoding used, e.g. o200k_base.")
    max_tokens: int = strawberry.field(description="The requested maximum.")
    reserve_tokens: int = strawberry.field(description="Tokens kept free for the reply.")
    total_tokens: int = strawberry.field(description="Tokens of the window, summary and reply priming included.")
    messages: list[Message] = strawberry.field(description="Oldest first.")
    summary: str | None = strawberry.field(description="The summary that stands for older messages.")
    dropped_messages: int = strawberry.field(
        description="The conversation's messageCount minus the number of messages in the window."
    )
    truncated: bool = strawberry.field(description="Some messages did not fit.")
    first_seq: int | None = strawberry.field(description="Seq of the first message in the window.")
    last_seq: int | None = strawberry.field(description="Seq of the last message in the window.")
    openai_messages: JSON = strawberry.field(
        description="A list of chat messages {role, content, name?, tool_calls?, tool_call_id?} ready to send, "
        "summary included."
    )
    approximate: bool = strawberry.field(
        description="True when the model has no known tokenizer: counts use the nearest known encoding "
        "(`encoding`), and the window keeps a safety margin below maxTokens - reserveTokens. False: exact counts."
    )


async def _conversation(
    info: Ctx, conversation_id: strawberry.ID | None, session_id: str | None
) -> models.Conversation:
    tenant = info.context.tenant()
    target = conversations.ref(conversation_id, session_id, info.context.resources.limits)
    async with info.context.resources.db.read() as conn:
        return await conversations.get(conn, tenant, target, cache=info.context.resources.cache)


@strawberry.type
class ContextQuery:
    @strawberry.field(description="A token-budgeted window of a conversation, ready for the next LLM call.")
    async def context_window(
        self,
        info: Ctx,
        conversation_id: strawberry.ID | None = None,
        session_id: str | None = None,
        *,
        max_tokens: int,
        model: str | None = None,
        reserve_tokens: int | None = 0,
        include_system: bool | None = True,
        include_summary: bool | None = True,
    ) -> ContextWindow:
        conversation = await _conversation(info, conversation_id, session_id)
        window = await info.context.context_window(
            conversation,
            max_tokens=max_tokens,
            model=model,
            reserve_tokens=reserve_tokens,
            include_system=include_system,
            include_summary=include_summary,
        )
        return cast(ContextWindow, window)
