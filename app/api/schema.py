"""The Strawberry schema, built from the query and mutation roots."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from app.api.http import OperationRecorder
from app.api.mutations import Mutation
from app.api.queries import Query
from app.api.scalars import SCALARS
from app.settings import Settings
from graphql import GraphQLError


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Client errors are answers, not incidents; internal ones are logged where they are
        formatted (app/api/errors.py), with the request id."""


def build_schema(settings: Settings | None = None) -> Schema:
    settings = settings or Settings(_env_file=None)
    s = settings
    # Factories: Strawberry builds fresh extensions per request (the caches are module-level).
    extensions: list[Callable[[], SchemaExtension]] = [
        # Parsing and validating a document is most of GraphQL's cost; known documents pay it once.
        lambda: ParserCache(maxsize=1024),
        lambda: ValidationCache(maxsize=1024),
        lambda: QueryDepthLimiter(max_depth=s.max_query_depth),
        lambda: MaxAliasesLimiter(max_alias_count=s.max_query_aliases),
        lambda: MaxTokensLimiter(max_token_count=s.max_query_tokens),
        OperationRecorder,
    ]
    if settings.is_production:
        extensions.append(lambda: AddValidationRules([NoSchemaIntrospectionCustomRule]))
    return Schema(
        query=Query,
        mutation=Mutation,
        extensions=extensions,
        config=StrawberryConfig(
            scalar_map=SCALARS,
            disable_field_suggestions=settings.is_production,
            batching_config={"max_operations": settings.max_batch_operations},
        ),
    )


#: For `strawberry export-schema app.api.schema:schema` and the drift test.
schema = build_schema()
