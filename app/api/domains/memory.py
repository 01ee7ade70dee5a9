"""Memory (issue 14, ../shared/contract-memory.graphql): `Conversation.summaryInfo` and
`summarizeConversation`. Thin: the rules are in app/services/summaries.py."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import strawberry

from app import models
from app.api import write_only
from app.api.domains.common import Ctx
from app.api.domains.enums import SummaryStatus
from app.services import conversations, summaries
from app.services.tenants import Scope

#: What a caller without the `read` scope may select (docs/decisions.md, "Write-only keys").
SUMMARY_RECEIPT = write_only.fields("status", "upToSeq", "updatedAt")


@strawberry.type(
    description="The conversation's running summary: plain text anyone can read, and the messages it covers."
)
class ConversationSummary:
    status: SummaryStatus = strawberry.field(description="Where the summary stands.")
    text: str | None = strawberry.field(description="The summary (the `summary` state key's text).")
    up_to_seq: int | None = strawberry.field(
        description="The summary stands for messages 1..upToSeq; later ones are not in it yet."
    )
    token_count: int | None = strawberry.field(
        description="Tokens of the summary as a SYSTEM message in the default model's encoding."
    )
    model: str | None = strawberry.field(description="The model that wrote it.")
    updated_at: datetime | None = strawberry.field(description="Last change of the summary or its status.")
    error: str | None = strawberry.field(
        description="Why the last attempt failed (status FAILED); the previous summary, if any, stays readable."
    )


async def summary_info(info: Ctx, conversation: models.Conversation) -> ConversationSummary:
    tenant = info.context.tenant()
    async with info.context.resources.db.read() as conn:
        record = await summaries.info(conn, tenant, conversation.id)
    return cast(ConversationSummary, record)


@strawberry.type
class MemoryMutation:
    @strawberry.mutation(
        description="Summarize now (enqueues; the summary becomes READY when the summarizer answers). "
        "Needs a summarizer configured."
    )
    async def summarize_conversation(self, info: Ctx, conversation_id: strawberry.ID) -> ConversationSummary:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, SUMMARY_RECEIPT)
        resources = info.context.resources
        options = summaries.SummarizerOptions.from_settings(resources.settings)
        cid = conversations.parse_uuid(conversation_id, "conversationId")
        record = await resources.db.run(lambda uow: summaries.request(uow, tenant, cid, options))
        return cast(ConversationSummary, record)
