"""Parse and validate each distinct document once per schema.

Strawberry's ValidationCache keys on the rule classes too, and its limiter extensions build
new rule classes for every request, so with the limits on it never hits: validation was 40 %
of a request. Here the limits' rules are built once per schema, the cache is keyed by the
document text, and the token limit still applies to every parse.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from graphql import DocumentNode, GraphQLError, parse
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule, specified_rules
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension
from strawberry.schema.schema import validate_document


class DocumentCache:
    """Bounded LRU of parsed and validated documents (unique texts cannot grow memory)."""

    def __init__(
        self, *, max_depth: int, max_aliases: int, max_tokens: int, introspection: bool, maxsize: int = 1024
    ) -> None:
        self.max_tokens = max_tokens
        self.maxsize = maxsize
        # Build the limiters once only to take their rule classes; they never run as extensions.
        rules: list[type[ASTValidationRule]] = [
            *QueryDepthLimiter(max_depth=max_depth).validation_rules,
            *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
        ]
        if not introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules: tuple[type[ASTValidationRule], ...] = (*specified_rules, *rules)
        self._parsed: OrderedDict[str, DocumentNode] = OrderedDict()
        self._errors: OrderedDict[str, list[GraphQLError]] = OrderedDict()

    def parse(self, query: str) -> DocumentNode:
        document = self._parsed.get(query)
        if document is None:
            document = parse(query, max_tokens=self.max_tokens)
            self._remember(self._parsed, query, document)
        else:
            self._parsed.move_to_end(query)
        return document

    def validate(self, schema: Any, query: str, document: DocumentNode) -> list[GraphQLError]:
        """The spec's rules plus our limits: one rule set for every caller, so the cache (keyed
        by text) can never hold an answer computed with fewer rules."""
        errors = self._errors.get(query)
        if errors is None:
            errors = validate_document(schema, document, self.rules)
            self._remember(self._errors, query, errors)
        else:
            self._errors.move_to_end(query)
        return errors

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        if len(cache) > self.maxsize:
            cache.popitem(last=False)


class PreparedDocuments(SchemaExtension):
    """Per-request extension over the schema's shared DocumentCache."""

    def __init__(self, cache: DocumentCache) -> None:
        super().__init__()
        self.cache = cache

    def on_operation(self) -> Iterator[None]:
        # Strawberry's own parse (used when ours fails, to report the error) obeys the limit too.
        self.execution_context.parse_options["max_tokens"] = self.cache.max_tokens
        yield

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is None and context.query:
            # On a syntax error Strawberry parses again and reports it the usual way.
            with contextlib.suppress(GraphQLError):
                context.graphql_document = self.cache.parse(context.query)
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and context.graphql_document is not None:
            context.pre_execution_errors = self.cache.validate(
                context.schema._schema, context.query, context.graphql_document
            )
        yield
