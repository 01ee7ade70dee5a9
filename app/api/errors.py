"""GraphQL errors as clients see them: a stable `extensions.code`, internals masked.

Shaped once, in Schema.process_errors, so HTTP responses and WebSocket messages (which
Strawberry formats itself) say the same thing."""

from __future__ import annotations

import logging

from graphql import GraphQLError

from app import metrics
from app.errors import DomainError, ErrorCode

log = logging.getLogger("conversation_service.api")


def code_of(error: GraphQLError) -> ErrorCode:
    original = error.original_error
    if isinstance(original, DomainError):
        return original.code
    if original is None or error.path is None:
        # Syntax, validation, limits and variable coercion: the request itself is wrong.
        return ErrorCode.BAD_USER_INPUT
    return ErrorCode.INTERNAL


def shape(error: GraphQLError, request_id: str) -> None:
    """Give the error its code (and details); mask anything unexpected, logging it with the
    request id the client gets back."""
    if error.extensions and "code" in error.extensions:
        return  # already shaped (errors can pass through twice)
    code = code_of(error)
    original = error.original_error
    extensions: dict[str, object] = {"code": code.value}
    if isinstance(original, DomainError):
        error.message = original.message
        extensions.update({k: v for k, v in original.details.items() if v is not None})
    elif code is ErrorCode.INTERNAL:
        log.error(
            "internal error in %s",
            ".".join(map(str, error.path or [])),
            exc_info=original,
            extra={"request_id": request_id},
        )
        error.message = "Internal error"
        extensions["requestId"] = request_id
    error.extensions = extensions
    metrics.ERRORS.labels(code.value).inc()
