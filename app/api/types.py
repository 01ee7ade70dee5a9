"""GraphQL object types, enums and inputs (the contract in ../shared/contract.graphql).

Resolvers return the service layer's records (app.models) directly: Strawberry reads
their attributes, so no per-row copy is made. Fields that need more (arguments,
batched loads) have resolvers that call app/services through the request context.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import strawberry
from strawberry.types import Info

from app import models
from app.api.batching import batched
from app.api.context import RequestContext
from app.api.scalars import JSON
from app.services import crm
from app.services import limits as check

# The service layer's enums are the GraphQL enums (registered here, in place): no per-row mapping.
strawberry.enum(models.Role, name="MessageRole", description="Who wrote a message.")
strawberry.enum(
    models.Status, name="ConversationStatus", description="ACTIVE takes messages; CLOSED and ARCHIVED do not."
)
strawberry.enum(models.ConversationOrder, name="ConversationOrder", description="Orders of a conversation list.")
MessageRole = models.Role
ConversationStatus = models.Status

Ctx = Info[RequestContext, None]


@strawberry.type(description="Relay page information.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More items after endCursor.")
    has_previous_page: bool = strawberry.field(description="More items before startCursor.")
    start_cursor: str | None = strawberry.field(description="Cursor of the first edge.")
    end_cursor: str | None = strawberry.field(description="Cursor of the last edge.")


def page_info(page: models.Page[Any]) -> PageInfo:
    return PageInfo(
        has_next_page=page.has_next_page,
        has_previous_page=page.has_previous_page,
        start_cursor=page.start_cursor,
        end_cursor=page.end_cursor,
    )


@strawberry.type(description="A document a RAG answer cited.")
class Source:
    document_id: str = strawberry.field(description="The cited document.")
    chunk_id: str | None = strawberry.field(description="The cited chunk of the document.")
    title: str | None = strawberry.field(description="Document title.")
    uri: str | None = strawberry.field(description="Where the document lives.")
    score: float | None = strawberry.field(description="Retrieval score.")
    snippet: str | None = strawberry.field(description="The cited text.")


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


@strawberry.type(description="How an agent produced a message.")
class Execution:
    run_id: str | None = strawberry.field(description="The agent run.")
    model: str | None = strawberry.field(description="The model that answered.")
    latency_ms: int | None = strawberry.field(description="How long it took.")
    prompt_tokens: int | None = strawberry.field(description="Prompt tokens the model reported.")
    completion_tokens: int | None = strawberry.field(description="Completion tokens the model reported.")
    status: str | None = strawberry.field(description="Outcome, e.g. ok or error.")
    error: str | None = strawberry.field(description="Error text when the run failed.")


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
    total_count: int = strawberry.field(description="All messages the query matches, across pages.")

    @classmethod
    def from_page(cls, page: models.Page[models.Message]) -> MessageConnection:
        cursor_of = page.cursor_of
        edges = [cast(MessageEdge, models.Edge(m, cursor_of)) for m in page.items]
        return cls(edges=edges, page_info=page_info(page), total_count=page.total_count)


@strawberry.type(description="A versioned key of conversation state.")
class StateEntry:
    key: str = strawberry.field(description="The key.")
    value: JSON = strawberry.field(description="Its JSON value.")
    version: int = strawberry.field(
        description="1 when first created, +1 on every write and delete: never goes back, even across deletes."
    )
    updated_at: datetime = strawberry.field(description="Last write.")


strawberry.enum(crm.CrmSyncStatus, name="CrmSyncStatus", description="Delivery state of a conversation's CRM sync.")
CrmSyncStatus = crm.CrmSyncStatus


@strawberry.type(description="The conversation's last CRM delivery.")
class CrmSync:
    status: CrmSyncStatus = strawberry.field(description="Pending, delivered or failed for good.")
    attempts: int = strawberry.field(description="Deliveries tried.")
    last_error: str | None = strawberry.field(description="Why the last attempt failed.")
    delivered_at: datetime | None = strawberry.field(description="When the CRM accepted it.")
    updated_at: datetime = strawberry.field(description="Last change.")


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


@strawberry.type(description="A conversation between a user and an agent.")
class Conversation:
    id: strawberry.ID = strawberry.field(description="Unique conversation id.")
    session_id: str = strawberry.field(description="The client's session id, unique per tenant.")
    user_id: str | None = strawberry.field(description="The user.")
    agent_id: str | None = strawberry.field(description="The agent.")
    channel: str | None = strawberry.field(description="Where it happens, e.g. web or whatsapp.")
    title: str | None = strawberry.field(description="A title for people.")
    status: ConversationStatus = strawberry.field(description="Active, closed or archived.")
    tags: list[str] = strawberry.field(description="Labels for filtering.")
    metadata: JSON = strawberry.field(description="Free-form JSON object.")
    created_at: datetime = strawberry.field(description="Creation time.")
    updated_at: datetime = strawberry.field(description="Last change of any kind.")
    last_message_at: datetime | None = strawberry.field(description="Time of the newest message.")
    closed_at: datetime | None = strawberry.field(description="When it was closed.")
    close_reason: str | None = strawberry.field(description="Why it was closed.")
    message_count: int = strawberry.field(description="Messages stored.")
    token_count: int = strawberry.field(description="Sum of the messages' tokenCounts.")
    last_seq: int = strawberry.field(description="Seq of the newest message (0: none).")

    @strawberry.field(description="Same paging as Query.history.")
    async def messages(
        self,
        info: Ctx,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        after_seq: int | None = None,
        since: datetime | None = None,
    ) -> MessageConnection:
        page = await info.context.loaders.history_page(
            cast(models.Conversation, self),
            first=first,
            after=after,
            last=last,
            before=before,
            after_seq=after_seq,
            since=since,
        )
        return MessageConnection.from_page(page)

    @strawberry.field(description="One state key, or null.")
    async def state(self, info: Ctx, key: str) -> StateEntry | None:
        check.text(key, "key", info.context.resources.limits.max_state_key_length, required=True)
        entries = await info.context.loaders.states.load(cast(models.Conversation, self).id)
        return next((cast(StateEntry, e) for e in entries if e.key == key), None)

    @strawberry.field(description="All state keys, sorted by key.")
    async def states(self, info: Ctx) -> list[StateEntry]:
        return cast(list[StateEntry], await info.context.loaders.states.load(cast(models.Conversation, self).id))

    @strawberry.field(description="A token-budgeted window of this conversation.")
    async def context_window(
        self,
        info: Ctx,
        max_tokens: int,
        model: str | None = None,
        reserve_tokens: int | None = 0,
        include_system: bool | None = True,
        include_summary: bool | None = True,
    ) -> ContextWindow:
        return await info.context.context_window(
            cast(models.Conversation, self),
            max_tokens=max_tokens,
            model=model,
            reserve_tokens=reserve_tokens,
            include_system=include_system,
            include_summary=include_summary,
        )

    @strawberry.field(description="The last CRM delivery of this conversation, if any.")
    async def crm_sync(self, info: Ctx) -> CrmSync | None:
        return await info.context.crm_sync(cast(models.Conversation, self))

    @strawberry.field(description="Customer profile from the tenant's CRM, when configured.")
    async def customer(self, info: Ctx) -> JSON | None:
        profile: JSON | None = await info.context.customer(cast(models.Conversation, self))
        return profile


@strawberry.type(description="A conversation in a connection.")
class ConversationEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this edge.")
    node: Conversation = strawberry.field(description="The conversation.")


@strawberry.type(description="A page of conversations.")
class ConversationConnection:
    edges: list[ConversationEdge] = strawberry.field(description="The page.")
    page_info: PageInfo = strawberry.field(description="Paging information.")
    total_count: int = strawberry.field(description="All conversations the filter matches, across pages.")

    @classmethod
    def from_page(cls, page: models.Page[models.Conversation]) -> ConversationConnection:
        cursor_of = page.cursor_of
        edges = [cast(ConversationEdge, models.Edge(c, cursor_of)) for c in page.items]
        return cls(edges=edges, page_info=page_info(page), total_count=page.total_count)


@strawberry.type(description="Messages of one role.")
class RoleCount:
    role: MessageRole = strawberry.field(description="The role.")
    count: int = strawberry.field(description="Messages written in the range.")


@strawberry.type(description="Conversations of one status.")
class StatusCount:
    status: ConversationStatus = strawberry.field(description="The status.")
    count: int = strawberry.field(description="Conversations created in the range.")


@strawberry.type(description="One agent's numbers in the range.")
class AgentStats:
    agent_id: str = strawberry.field(description="The agent.")
    conversations: int = strawberry.field(description="Conversations created in the range.")
    messages: int = strawberry.field(description="Messages written in the range.")
    tokens: int = strawberry.field(description="Tokens of those messages.")
    avg_messages_per_conversation: float = strawberry.field(
        description="Average message count of its conversations created in the range."
    )


@strawberry.type(description="One UTC day.")
class DailyStats:
    day: str = strawberry.field(description="YYYY-MM-DD, UTC.")
    conversations: int = strawberry.field(description="Conversations created that day.")
    messages: int = strawberry.field(description="Messages written that day.")
    tokens: int = strawberry.field(description="Tokens of those messages.")


@strawberry.type(description="A tenant's numbers over [from, to).")
class TenantStats:
    from_: datetime | None = strawberry.field(name="from", description="Start of the range (inclusive).")
    to: datetime | None = strawberry.field(description="End of the range (exclusive).")
    conversations: int = strawberry.field(description="Conversations created in the range.")
    conversations_by_status: list[StatusCount] = strawberry.field(description="Those conversations by status.")
    active_conversations: int = strawberry.field(description="Those conversations still active.")
    messages: int = strawberry.field(description="Messages written in the range.")
    messages_by_role: list[RoleCount] = strawberry.field(description="Those messages by role.")
    tokens: int = strawberry.field(description="Tokens of those messages.")
    avg_messages_per_conversation: float = strawberry.field(
        description="Average message count of the conversations created in the range."
    )
    avg_duration_seconds: float | None = strawberry.field(
        description="Average closedAt - createdAt of those conversations that are closed."
    )
    agents: list[AgentStats] = strawberry.field(description="Per agent, sorted by agentId.")
    daily: list[DailyStats] = strawberry.field(description="Per UTC day with any activity, oldest first.")


@strawberry.input(description="Conversation filters; all given ones must hold.")
class ConversationFilter:
    user_id: str | None = strawberry.field(default=None, description="The user.")
    agent_id: str | None = strawberry.field(default=None, description="The agent.")
    status: ConversationStatus | None = strawberry.field(default=None, description="The status.")
    tags: list[str] | None = strawberry.field(default=None, description="The conversation has all of these tags.")
    created_from: datetime | None = strawberry.field(default=None, description="createdAt >= createdFrom")
    created_to: datetime | None = strawberry.field(default=None, description="createdAt < createdTo")
    metadata: JSON | None = strawberry.field(
        default=None, description="JSON containment: the conversation's metadata contains this object."
    )

    def to_model(self) -> models.ConversationFilter:
        return models.ConversationFilter(
            user_id=self.user_id,
            agent_id=self.agent_id,
            status=self.status,
            tags=self.tags,
            created_from=self.created_from,
            created_to=self.created_to,
            metadata=cast(dict[str, Any] | None, self.metadata),
        )


@strawberry.input(description="A new conversation.")
class CreateConversationInput:
    session_id: str | None = strawberry.field(default=None, description="Generated when absent; unique per tenant.")
    user_id: str | None = strawberry.field(default=None, description="The user.")
    agent_id: str | None = strawberry.field(default=None, description="The agent.")
    channel: str | None = strawberry.field(default=None, description="Where it happens.")
    title: str | None = strawberry.field(default=None, description="A title for people.")
    tags: list[str] | None = strawberry.field(default=None, description="Labels for filtering.")
    metadata: JSON | None = strawberry.field(default=None, description="Free-form JSON object.")


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


@strawberry.type(description="The appended (or, on a retry, the original) message.")
class AddMessagePayload:
    message: Message = strawberry.field(description="The message.")
    conversation: Conversation = strawberry.field(description="The conversation after the append.")
    created: bool = strawberry.field(description="False when clientMessageId matched an earlier message.")


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


@strawberry.type(description="The batch, in input order (originals for retried clientMessageIds).")
class AddMessagesPayload:
    messages: list[Message] = strawberry.field(description="The messages.")
    conversation: Conversation = strawberry.field(description="The conversation after the batch.")
    created_count: int = strawberry.field(description="How many were new.")


@strawberry.input(description="Write a state key.")
class SetStateInput:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation.")
    key: str = strawberry.field(description="The key.")
    value: JSON = strawberry.field(description="Any JSON value.")
    expected_version: int | None = strawberry.field(
        default=None, description="The version the entry must have now (0: must not exist), or CONFLICT."
    )


@strawberry.input(description="Change a conversation; absent fields stay as they are.")
class UpdateConversationInput:
    id: strawberry.ID = strawberry.field(description="The conversation.")
    title: str | None = strawberry.field(default=strawberry.UNSET, description="New title (null clears it).")
    tags: list[str] | None = strawberry.field(default=None, description="Replaces the tags.")
    metadata: JSON | None = strawberry.field(
        default=None, description="Merged into the existing metadata (top-level keys)."
    )
    status: ConversationStatus | None = strawberry.field(default=None, description="New status.")
