"""The Strawberry schema: the root Query and Mutation composed from the domains' mixins, and the build."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.config import StrawberryConfig

from app.api.documents_cache import DocumentCache, PreparedDocuments
from app.api.domains.admin import AdminMutation, AdminQuery
from app.api.domains.context import ContextQuery
from app.api.domains.conversations import ConversationChangesMutation, ConversationsMutation, ConversationsQuery
from app.api.domains.crm import CrmMutation
from app.api.domains.deletion import DeletionMutation
from app.api.domains.memory import MemoryMutation
from app.api.domains.messages import MessagesMutation, MessagesQuery
from app.api.domains.state import StateMutation
from app.api.domains.stats_search import StatsSearchQuery
from app.api.engine import adapter
from app.api.engine.plans import EngineExecutionContext
from app.api.errors import shape
from app.api.http import OperationRecorder
from app.api.scalars import SCALARS
from app.api.subscriptions import Subscription
from app.settings import Settings


# The roots are the domains' mixins (app/api/domains/), in the order of the published fields: a
# new query or mutation goes in its domain's module, and a new domain adds its mixin here.
@strawberry.type(description="Reads: conversations, transcripts, context windows, stats and search.")
class Query(AdminQuery, ConversationsQuery, MessagesQuery, ContextQuery, StatsSearchQuery):
    pass


@strawberry.type(description="Writes; each field is one transaction, run in order.")
class Mutation(
    MemoryMutation,
    AdminMutation,
    DeletionMutation,
    ConversationsMutation,
    MessagesMutation,
    StateMutation,
    ConversationChangesMutation,
    CrmMutation,
):
    pass


class Schema(strawberry.Schema):
    #: The parse/validate cache its requests share (app/api/documents_cache.py).
    document_cache: DocumentCache | None = None

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Codes for client errors, masks (and logs) for internal ones: app/api/errors.py."""
        context = getattr(execution_context, "context", None)
        request_id = getattr(context, "request_id", "") or ""
        for error in errors:
            shape(error, request_id)


def build_schema(settings: Settings | None = None) -> Schema:
    settings = settings or Settings(_env_file=None)
    cache = DocumentCache(
        max_depth=settings.max_query_depth,
        max_aliases=settings.max_query_aliases,
        max_tokens=settings.max_query_tokens,
        introspection=not settings.is_production,
        max_bytes=settings.document_cache_bytes,
        max_cached_chars=settings.max_cached_document_bytes,
        max_page_size=settings.max_page_size,
        max_cost=settings.max_query_cost,
    )
    # Factories: Strawberry builds fresh extensions per request; the cache is shared.
    extensions: list[Callable[[], SchemaExtension]] = [lambda: PreparedDocuments(cache), OperationRecorder]
    built = Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=EngineExecutionContext,
        config=StrawberryConfig(
            scalar_map=SCALARS,
            disable_field_suggestions=settings.is_production,
            batching_config={"max_operations": settings.max_batch_operations},
        ),
    )
    built.document_cache = cache
    adapter.set_enabled(built, settings.graphql_engine)
    return built


#: For `strawberry export-schema app.api.schema:schema` and the drift test.
schema = build_schema()
