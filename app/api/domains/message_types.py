"""The Message object type, its connection and the message inputs: below conversations.py, whose
Conversation.messages returns them. The payloads and resolvers are in messages.py; a new Message
field is added here twice (the type and the inputs) and nowhere else in the API layer."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import strawberry

from app import models
from app.api.batching import batched
from app.api.domains.common import Ctx, PageInfo, page_info
from app.api.domains.enums import MessageRole
from app.api.scalars import JSON


@strawberry.type(description="A document a RAG answer cited.")
class Source:
    document_id: str = strawberry.field(description="The cited document.")
    chunk_id: str | None = strawberry.field(description="The cited chunk of the document.")
    title: str | None = strawberry.field(description="Document title.")
    uri: str | None = strawberry.field(description="Where the document lives.")
    score: float | None = strawberry.field(description="Retrieval score.")
    snippet: str | None = strawberry.field(description="The cited text.")


@strawberry.type(description="How an agent produced a message.")
class Execution:
    run_id: str | None = strawberry.field(description="The agent run.")
    model: str | None = strawberry.field(description="The model that answered.")
    latency_ms: int | None = strawberry.field(description="How long it took.")
    prompt_tokens: int | None = strawberry.field(description="Prompt tokens the model reported.")
    completion_tokens: int | None = strawberry.field(description="Completion tokens the model reported.")
    status: str | None = strawberry.field(description="Outcome, e.g. ok or error.")
    error: str | None = strawberry.field(description="Error text when the run failed.")


_EXECUTION_KEYS = ("run_id", "model", "latency_ms", "prompt_tokens", "completion_tokens", "status", "error")


async def _sources_of(messages: list[Any], info: Ctx) -> list[list[Source]]:
    """Message.sources for a whole level: one DataLoader load_many for those not carried."""
    records = cast(list[models.Message], messages)
    keys = [(r.conversation_id, r.seq) for r in records if r.sources is None]
    loaded = iter(await info.context.loaders.sources.load_many(keys) if keys else [])
    return [cast(list[Source], r.sources if r.sources is not None else next(loaded)) for r in records]


@strawberry.type(description="One message of a conversation.")
class Message:
    id: strawberry.ID = strawberry.field(description="Unique message id.")
    conversation_id: strawberry.ID = strawberry.field(description="The conversation it belongs to.")
    seq: int = strawberry.field(description="1, 2, 3, … per conversation, without gaps.")
    role: MessageRole = strawberry.field(description="Who wrote it.")
    content: str = strawberry.field(description="The text (may be empty for an assistant tool call).")
    name: str | None = strawberry.field(description="Author name (OpenAI `name`).")
    tool_call_id: str | None = strawberry.field(description="For TOOL messages: the id of the call this answers.")
    tool_calls: JSON | None = strawberry.field(
        description='For ASSISTANT messages: OpenAI chat-completions `tool_calls`, [{id, type: "function", '
        "function: {name, arguments}}]."
    )
    client_message_id: str | None = strawberry.field(description="The idempotency key it was written with.")
    token_count: int = strawberry.field(
        description="Tokens in the default model's encoding, chat framing (+3) included."
    )
    metadata: JSON = strawberry.field(description="Free-form JSON object.")
    created_at: datetime = strawberry.field(description="When it was stored; never earlier than the previous seq.")

    @strawberry.field(description="RAG sources cited by this message.")
    @batched(_sources_of)
    async def sources(self, info: Ctx) -> list[Source]:
        record = cast(models.Message, self)
        if record.sources is not None:
            return cast(list[Source], record.sources)
        return cast(list[Source], await info.context.loaders.sources.load((record.conversation_id, record.seq)))

    @strawberry.field(description="How an agent produced it.")
    def execution(self) -> Execution | None:
        value = cast(models.Message, self).execution
        if not value:
            return None
        return Execution(**{k: value.get(k) for k in _EXECUTION_KEYS})


@strawberry.type(description="A message in a connection.")
class MessageEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this edge.")
    node: Message = strawberry.field(description="The message.")


@strawberry.type(description="A page of messages.")
class MessageConnection:
    edges: list[MessageEdge] = strawberry.field(description="The page, in seq order (search: newest first).")
    page_info: PageInfo = strawberry.field(description="Paging information.")
    total_count: int = strawberry.field(
        description="All messages the query matches, across pages: exact up to the search count cap "
        "(SEARCH_COUNT_CAP), and the cap itself beyond (see totalCountCapped)."
    )
    total_count_capped: bool = strawberry.field(
        default=False,
        description="True when counting stopped at the cap: totalCount is then a lower bound (at least that "
        "many). Added by issue 11.",
    )

    @classmethod
    def from_page(cls, page: models.Page[models.Message]) -> MessageConnection:
        cursor_of = page.cursor_of
        edges = [cast(MessageEdge, models.Edge(m, cursor_of)) for m in page.items]
        return cls(
            edges=edges,
            page_info=page_info(page),
            total_count=page.total_count,
            total_count_capped=page.total_count_capped,
        )


@strawberry.input(description="A document a RAG answer cited.")
class SourceInput:
    document_id: str = strawberry.field(description="The cited document.")
    chunk_id: str | None = strawberry.field(default=None, description="The cited chunk.")
    title: str | None = strawberry.field(default=None, description="Document title.")
    uri: str | None = strawberry.field(default=None, description="Where the document lives.")
    score: float | None = strawberry.field(default=None, description="Retrieval score.")
    snippet: str | None = strawberry.field(default=None, description="The cited text.")

    def to_model(self) -> models.Source:
        return models.Source(self.document_id, self.chunk_id, self.title, self.uri, self.score, self.snippet)


@strawberry.input(description="How an agent produced a message.")
class ExecutionInput:
    run_id: str | None = strawberry.field(default=None, description="The agent run.")
    model: str | None = strawberry.field(default=None, description="The model that answered.")
    latency_ms: int | None = strawberry.field(default=None, description="How long it took.")
    prompt_tokens: int | None = strawberry.field(default=None, description="Prompt tokens reported.")
    completion_tokens: int | None = strawberry.field(default=None, description="Completion tokens reported.")
    status: str | None = strawberry.field(default=None, description="Outcome, e.g. ok or error.")
    error: str | None = strawberry.field(default=None, description="Error text when the run failed.")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None and v is not strawberry.UNSET}


@strawberry.input(description="One message to append.")
class AddMessageInput:
    conversation_id: strawberry.ID | None = strawberry.field(
        default=None, description="Exactly one of conversationId and sessionId."
    )
    session_id: str | None = strawberry.field(
        default=None, description="An unknown sessionId creates the conversation (with agentId, userId, channel)."
    )
    agent_id: str | None = strawberry.field(default=None, description="For a conversation created by sessionId.")
    user_id: str | None = strawberry.field(default=None, description="For a conversation created by sessionId.")
    channel: str | None = strawberry.field(default=None, description="For a conversation created by sessionId.")
    role: MessageRole = strawberry.field(description="Who wrote it.")
    content: str = strawberry.field(description="May be empty for an ASSISTANT message that only carries toolCalls.")
    name: str | None = strawberry.field(default=None, description="Author name.")
    tool_call_id: str | None = strawberry.field(default=None, description="For TOOL messages: the call answered.")
    tool_calls: JSON | None = strawberry.field(default=None, description="For ASSISTANT messages: tool calls.")
    metadata: JSON | None = strawberry.field(default=None, description="Free-form JSON object.")
    sources: list[SourceInput] | None = strawberry.field(default=None, description="RAG sources cited.")
    execution: ExecutionInput | None = strawberry.field(default=None, description="How an agent produced it.")
    client_message_id: str | None = strawberry.field(
        default=None,
        description="Idempotency key, unique per conversation: a retry returns the original message with "
        "created = false.",
    )
    expected_seq: int | None = strawberry.field(
        default=None, description="The seq the new message must get (the conversation's lastSeq + 1), or CONFLICT."
    )


@strawberry.input(description="One message of a batch.")
class MessageInput:
    role: MessageRole = strawberry.field(description="Who wrote it.")
    content: str = strawberry.field(description="The text.")
    name: str | None = strawberry.field(default=None, description="Author name.")
    tool_call_id: str | None = strawberry.field(default=None, description="For TOOL messages: the call answered.")
    tool_calls: JSON | None = strawberry.field(default=None, description="For ASSISTANT messages: tool calls.")
    metadata: JSON | None = strawberry.field(default=None, description="Free-form JSON object.")
    sources: list[SourceInput] | None = strawberry.field(default=None, description="RAG sources cited.")
    execution: ExecutionInput | None = strawberry.field(default=None, description="How an agent produced it.")
    client_message_id: str | None = strawberry.field(default=None, description="Idempotency key.")


@strawberry.input(description="Messages appended atomically, in order.")
class AddMessagesInput:
    conversation_id: strawberry.ID | None = strawberry.field(
        default=None, description="Exactly one of conversationId and sessionId."
    )
    session_id: str | None = strawberry.field(default=None, description="An unknown sessionId creates it.")
    agent_id: str | None = strawberry.field(default=None, description="For a conversation created by sessionId.")
    user_id: str | None = strawberry.field(default=None, description="For a conversation created by sessionId.")
    channel: str | None = strawberry.field(default=None, description="For a conversation created by sessionId.")
    messages: list[MessageInput] = strawberry.field(description="1 to 100 messages, appended atomically in this order.")
