"""Conversations: the Conversation type (the hub other domains hang fields on), its connection,
filter and inputs; the conversation/conversations queries and the create/update/close mutations.

Resolvers return the service layer's records (app.models) directly: Strawberry reads their
attributes, so no per-row copy is made. Fields that need more (arguments, batched loads) have
resolvers that call app/services through the request context.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import strawberry

from app import models
from app.api import write_only
from app.api.domains.common import Ctx, PageInfo, page_info
from app.api.domains.context import ContextWindow
from app.api.domains.crm import CrmSync
from app.api.domains.enums import ConversationOrder, ConversationStatus
from app.api.domains.memory import ConversationSummary, summary_info
from app.api.domains.message_types import MessageConnection
from app.api.domains.state import StateEntry
from app.api.scalars import JSON
from app.api.selection import COUNT_FIELDS, selects
from app.errors import Forbidden
from app.services import conversations, messages
from app.services import limits as check
from app.services.tenants import Scope


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
        args = messages.HistoryArgs(
            first=first, after=after, last=last, before=before, after_seq=after_seq, since=since
        )
        page = await info.context.loaders.history_page(cast(models.Conversation, self), args)
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
        window = await info.context.context_window(
            cast(models.Conversation, self),
            max_tokens=max_tokens,
            model=model,
            reserve_tokens=reserve_tokens,
            include_system=include_system,
            include_summary=include_summary,
        )
        return cast(ContextWindow, window)

    @strawberry.field(description="The last CRM delivery of this conversation, if any.")
    async def crm_sync(self, info: Ctx) -> CrmSync | None:
        return cast(CrmSync | None, await info.context.crm_sync(cast(models.Conversation, self)))

    @strawberry.field(description="Customer profile from the tenant's CRM, when configured.")
    async def customer(self, info: Ctx) -> JSON | None:
        profile: JSON | None = await info.context.customer(cast(models.Conversation, self))
        return profile

    @strawberry.field(description="The running summary: status, text, the messages it covers, the last error.")
    async def summary_info(self, info: Ctx) -> ConversationSummary:
        return await summary_info(info, cast(models.Conversation, self))


@strawberry.type(description="A conversation in a connection.")
class ConversationEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this edge.")
    node: Conversation = strawberry.field(description="The conversation.")


@strawberry.type(description="A page of conversations.")
class ConversationConnection:
    edges: list[ConversationEdge] = strawberry.field(description="The page.")
    page_info: PageInfo = strawberry.field(description="Paging information.")
    total_count: int = strawberry.field(
        description="All conversations the filter matches, across pages: exact up to LIST_COUNT_CAP, and the "
        "cap itself beyond (see totalCountCapped)."
    )
    total_count_capped: bool = strawberry.field(
        default=False,
        description="True when counting stopped at the cap: totalCount is then a lower bound (at least that "
        "many). Added by issue 11.",
    )

    @classmethod
    def from_page(cls, page: models.Page[models.Conversation]) -> ConversationConnection:
        cursor_of = page.cursor_of
        edges = [cast(ConversationEdge, models.Edge(c, cursor_of)) for c in page.items]
        return cls(
            edges=edges,
            page_info=page_info(page),
            total_count=page.total_count,
            total_count_capped=page.total_count_capped,
        )


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
            status=models.Status(self.status) if self.status is not None else None,
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


@strawberry.input(description="Change a conversation; absent fields stay as they are.")
class UpdateConversationInput:
    id: strawberry.ID = strawberry.field(description="The conversation.")
    title: str | None = strawberry.field(default=strawberry.UNSET, description="New title (null clears it).")
    tags: list[str] | None = strawberry.field(default=None, description="Replaces the tags.")
    metadata: JSON | None = strawberry.field(
        default=None, description="Merged into the existing metadata (top-level keys)."
    )
    status: ConversationStatus | None = strawberry.field(default=None, description="New status.")


@strawberry.type
class ConversationsQuery:
    @strawberry.field(description="Null when it does not exist for this tenant.")
    async def conversation(
        self, info: Ctx, id: strawberry.ID | None = None, session_id: str | None = None
    ) -> Conversation | None:
        tenant = info.context.tenant()
        target = conversations.ref(id, session_id, info.context.resources.limits)
        async with info.context.resources.db.read() as conn:
            found = await conversations.find(conn, tenant, target, cache=info.context.resources.cache)
        return cast(Conversation | None, found)

    @strawberry.field(description="Conversations of this tenant, filtered, newest activity first by default.")
    async def conversations(
        self,
        info: Ctx,
        filter: ConversationFilter | None = None,
        first: int | None = 20,
        after: str | None = None,
        order_by: ConversationOrder | None = ConversationOrder.LAST_ACTIVITY_DESC,
    ) -> ConversationConnection:
        tenant = info.context.tenant()
        async with info.context.resources.db.read() as conn:
            page = await conversations.list_(
                conn,
                tenant,
                filter.to_model() if filter else None,
                first=first,
                after=after,
                order=models.ConversationOrder(order_by or ConversationOrder.LAST_ACTIVITY_DESC),
                limits=info.context.resources.limits,
                with_count=selects(info, COUNT_FIELDS),
            )
        return ConversationConnection.from_page(page)


@strawberry.type
class ConversationsMutation:
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


# Apart from ConversationsMutation only so that the root keeps the published field order
# (createConversation, the appends and state writes, then updateConversation and closeSession).
@strawberry.type
class ConversationChangesMutation:
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
                status=models.Status(input.status) if input.status is not None else None,
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
