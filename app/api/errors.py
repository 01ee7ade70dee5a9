"""GraphQL errors as clients see them: a stable `extensions.code`, internals masked.

Shaped once, in Schema.process_errors, so HTTP responses and WebSocket messages (which
Strawberry formats itself) say the same thing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
import redis.exceptions
from graphql import GraphQLError

from app import metrics
from app.errors import DomainError, ErrorCode
from db.session import is_unreachable

log = logging.getLogger("conversation_service.api")

#: Postgres refusing text the client sent (a NUL character, an encoding it cannot hold): the
#: request is wrong, whichever argument slipped past the services' own checks.
_UNSTORABLE_TEXT = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
)

#: Redis unreachable where an operation cannot do without it (the cache itself degrades quietly).
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

_UNAVAILABLE_MESSAGE = "Service unavailable: a backing server cannot be reached; retry later"
_UNSTORABLE_MESSAGE = "an argument holds text Postgres cannot store (a NUL character?)"


def code_of(error: GraphQLError) -> ErrorCode:
    original = error.original_error
    if isinstance(original, DomainError):
        return original.code
    if original is not None and (is_unreachable(original) or isinstance(original, _REDIS_DOWN)):
        return ErrorCode.SERVICE_UNAVAILABLE
    if isinstance(original, _UNSTORABLE_TEXT):
        return ErrorCode.BAD_USER_INPUT
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
    elif code is ErrorCode.SERVICE_UNAVAILABLE:
        log.warning(
            "service unavailable in %s: %r",
            ".".join(map(str, error.path or [])),
            original,
            extra={"request_id": request_id},
        )
        error.message = _UNAVAILABLE_MESSAGE
        extensions["requestId"] = request_id
    elif isinstance(original, _UNSTORABLE_TEXT):
        error.message = _UNSTORABLE_MESSAGE
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


def http_status(response: Mapping[str, Any]) -> int:
    """503 when nothing ran because a backing server is unreachable (every error is
    SERVICE_UNAVAILABLE and no field has data), so clients and proxies know to retry;
    otherwise 200, the errors being in the body."""
    errors = response.get("errors")
    if not errors:
        return 200
    for error in errors:
        extensions = error.get("extensions") if isinstance(error, Mapping) else None
        if not isinstance(extensions, Mapping) or extensions.get("code") != ErrorCode.SERVICE_UNAVAILABLE.value:
            return 200
    data = response.get("data")
    if data is None or (isinstance(data, Mapping) and all(value is None for value in data.values())):
        return 503
    return 200
