"""GraphQL errors as clients see them: a stable `extensions.code`, internals masked."""

from __future__ import annotations

import logging
from typing import Any

from graphql import GraphQLError

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


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    code = code_of(error)
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path is not None:
        formatted["path"] = list(error.path)
    extensions: dict[str, Any] = {"code": code.value}
    original = error.original_error
    if isinstance(original, DomainError):
        formatted["message"] = original.message
        extensions.update({k: v for k, v in original.details.items() if v is not None})
    elif code is ErrorCode.INTERNAL:
        log.error(
            "internal error in %s",
            ".".join(map(str, error.path or [])),
            exc_info=original,
            extra={"request_id": request_id},
        )
        formatted["message"] = "Internal error"
        extensions["requestId"] = request_id
    formatted["extensions"] = extensions
    return formatted
