"""The GraphQL enums, declared here in the API layer; the kernel's and services' enums stay plain.

Each mirrors one inner enum member for member, with the same string values: records carrying the
inner enum serialize through the value lookup (no per-row mapping), and resolvers turn an input
value into the inner enum at the edge (`models.Role(input.role)`). tests/api/test_schema_contract.py
checks that every pair still has the same members.
"""

from __future__ import annotations

from enum import StrEnum

import strawberry

from app import models
from app.services import crm, search, summaries


@strawberry.enum(name="MessageRole", description="Who wrote a message.")
class MessageRole(StrEnum):
    SYSTEM = models.Role.SYSTEM.value
    USER = models.Role.USER.value
    ASSISTANT = models.Role.ASSISTANT.value
    TOOL = models.Role.TOOL.value


@strawberry.enum(name="ConversationStatus", description="ACTIVE takes messages; CLOSED and ARCHIVED do not.")
class ConversationStatus(StrEnum):
    ACTIVE = models.Status.ACTIVE.value
    CLOSED = models.Status.CLOSED.value
    ARCHIVED = models.Status.ARCHIVED.value


@strawberry.enum(name="ConversationOrder", description="Orders of a conversation list.")
class ConversationOrder(StrEnum):
    LAST_ACTIVITY_DESC = models.ConversationOrder.LAST_ACTIVITY_DESC.value
    CREATED_AT_DESC = models.ConversationOrder.CREATED_AT_DESC.value
    CREATED_AT_ASC = models.ConversationOrder.CREATED_AT_ASC.value


@strawberry.enum(name="CrmSyncStatus", description="Delivery state of a conversation's CRM sync.")
class CrmSyncStatus(StrEnum):
    PENDING = crm.CrmSyncStatus.PENDING.value
    DELIVERED = crm.CrmSyncStatus.DELIVERED.value
    FAILED = crm.CrmSyncStatus.FAILED.value


@strawberry.enum(
    name="SummaryStatus",
    description="NONE: no summary yet; PENDING: one is being written; READY: written; FAILED: the last attempt "
    "failed (the previous summary, if any, stays readable).",
)
class SummaryStatus(StrEnum):
    NONE = summaries.SummaryStatus.NONE.value
    PENDING = summaries.SummaryStatus.PENDING.value
    READY = summaries.SummaryStatus.READY.value
    FAILED = summaries.SummaryStatus.FAILED.value


@strawberry.enum(
    name="SearchMode",
    description="KEYWORD: full-text match ranked by ts_rank. SEMANTIC: nearest messages by embedding. HYBRID: "
    "both, fused by rank. SEMANTIC and HYBRID need an embedder.",
)
class SearchMode(StrEnum):
    KEYWORD = search.SearchMode.KEYWORD.value
    SEMANTIC = search.SearchMode.SEMANTIC.value
    HYBRID = search.SearchMode.HYBRID.value


#: (GraphQL enum, the inner enum it mirrors): the pairs the contract test compares.
MIRRORS: tuple[tuple[type[StrEnum], type[StrEnum]], ...] = (
    (MessageRole, models.Role),
    (ConversationStatus, models.Status),
    (ConversationOrder, models.ConversationOrder),
    (CrmSyncStatus, crm.CrmSyncStatus),
    (SummaryStatus, summaries.SummaryStatus),
    (SearchMode, search.SearchMode),
)
