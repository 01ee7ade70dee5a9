"""Parse and validate each distinct document once per schema.

Strawberry's ValidationCache keys on the rule classes too, and its limiter extensions build
new rule classes for every request, so with the limits on it never hits: validation was 40 %
of a request. Here the limits' rules are built once per schema, the cache is keyed by the
document text, and the token limit still applies to every parse. The query cost limit
(app/api/cost.py) is checked right after validation, so it holds on every path.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, parse
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule, specified_rules
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension
from strawberry.schema.schema import validate_document

from app.api.cost import CostPlan, QueryTooCostly
from app.api.cost import plan as plan_cost

#: Parsed documents hold about 60 bytes of AST per character of text (measured on graphql/).
AST_BYTES_PER_CHAR = 64
_ENTRY_OVERHEAD = 1024


@dataclass(slots=True)
class _Entry:
    document: DocumentNode
    size: int
    errors: list[GraphQLError] | None = None
    costs: dict[str | None, CostPlan | None] = field(default_factory=dict)


class DocumentCache:
    """LRU of parsed and validated documents (and their cost plans), bounded by an estimate of
    the bytes they hold. Documents longer than `max_cached_chars` (the trusted ones are under
    2 KiB) are parsed and validated every time and never kept: a client sending big unique
    documents spends its own CPU, never our memory."""

    def __init__(
        self,
        *,
        max_depth: int,
        max_aliases: int,
        max_tokens: int,
        introspection: bool,
        max_bytes: int = 8 * 1024 * 1024,
        max_cached_chars: int = 16 * 1024,
        max_page_size: int = 100,
        max_cost: int | None = None,
    ) -> None:
        self.max_tokens = max_tokens
        #: MAX_QUERY_COST; None: no cost limit.
        self.max_cost = max_cost
        self.max_bytes = max_bytes
        self.max_cached_chars = max_cached_chars
        self.max_page_size = max_page_size
        self.bytes = 0
        # Build the limiters once only to take their rule classes; they never run as extensions.
        rules: list[type[ASTValidationRule]] = [
            *QueryDepthLimiter(max_depth=max_depth).validation_rules,
            *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
        ]
        if not introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules: tuple[type[ASTValidationRule], ...] = (*specified_rules, *rules)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, query: str) -> DocumentNode:
        entry = self._entries.get(query)
        if entry is not None:
            self._entries.move_to_end(query)
            return entry.document
        document = parse(query, max_tokens=self.max_tokens)
        if len(query) <= self.max_cached_chars:
            self._remember(query, _Entry(document, AST_BYTES_PER_CHAR * len(query) + _ENTRY_OVERHEAD))
        return document

    def validate(self, schema: Any, query: str, document: DocumentNode) -> list[GraphQLError]:
        """The spec's rules plus our limits: one rule set for every caller, so the cache (keyed
        by text) can never hold an answer computed with fewer rules."""
        entry = self._entry(query, document)
        if entry is not None and entry.errors is not None:
            return entry.errors
        errors = validate_document(schema, document, self.rules)
        if entry is not None:
            entry.errors = errors
        return errors

    def cost(
        self,
        schema: Any,
        query: str,
        document: DocumentNode,
        operation_name: str | None,
        variables: dict[str, Any] | None,
    ) -> int | None:
        """The cost of a validated document's operation with these variables (app/api/cost.py);
        None when no single operation is selected."""
        entry = self._entry(query, document)
        if entry is not None and operation_name in entry.costs:
            found = entry.costs[operation_name]
        else:
            found = plan_cost(schema, document, operation_name, max_page_size=self.max_page_size)
            # A document has few operations, but a client could name many that do not exist.
            if entry is not None and len(entry.costs) < 16:
                entry.costs[operation_name] = found
        return None if found is None else found.cost(variables)

    def refuse_costly(
        self,
        schema: Any,
        query: str,
        document: DocumentNode,
        operation_name: str | None,
        variables: dict[str, Any] | None,
        spent: int = 0,
    ) -> GraphQLError | None:
        """The error refusing this operation when it (plus `spent`, a batch's other items)
        costs more than MAX_QUERY_COST; None when it may run."""
        if self.max_cost is None:
            return None
        cost = self.cost(schema, query, document, operation_name, variables)
        if cost is None or cost + spent <= self.max_cost:
            return None
        return cost_error(cost + spent, self.max_cost)

    def _entry(self, query: str, document: DocumentNode) -> _Entry | None:
        """The cached entry of this very parse (a text evicted and parsed again is another one)."""
        entry = self._entries.get(query)
        return entry if entry is not None and entry.document is document else None

    def _remember(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.size


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
            schema = context.schema._schema
            errors = self.cache.validate(schema, context.query, context.graphql_document)
            if not errors and _unnamed_choice(context):
                errors = [GraphQLError(SEVERAL_OPERATIONS)]
            elif not errors:
                # Here, not in the resolvers: WebSocket operations pass this way too.
                refused = self.cache.refuse_costly(
                    schema, context.query, context.graphql_document, context.operation_name, context.variables
                )
                errors = [refused] if refused is not None else errors
            context.pre_execution_errors = errors
        yield


def cost_error(cost: int, max_cost: int) -> GraphQLError:
    refused = QueryTooCostly(cost, max_cost)
    return GraphQLError(refused.message, original_error=refused)


SEVERAL_OPERATIONS = "the document holds several operations: name the one to run in operationName"


def _unnamed_choice(context: Any) -> bool:
    """Several operations and no operationName: the spec requires an error, where Strawberry
    would run the first one."""
    if getattr(context, "_provided_operation_name", None) is not None or context.graphql_document is None:
        return False
    definitions = context.graphql_document.definitions
    return sum(isinstance(d, OperationDefinitionNode) for d in definitions) > 1
