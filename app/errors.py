"""Domain errors with the stable codes clients see in `extensions.code`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    CONVERSATION_CLOSED = "CONVERSATION_CLOSED"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL = "INTERNAL"


class DomainError(Exception):
    """An expected failure: the operation wrote nothing and the client can act on the code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadUserInput(DomainError):
    code = ErrorCode.BAD_USER_INPUT


class PayloadTooLarge(DomainError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class Unauthenticated(DomainError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(DomainError):
    code = ErrorCode.FORBIDDEN


class NotFound(DomainError):
    code = ErrorCode.NOT_FOUND


class Conflict(DomainError):
    code = ErrorCode.CONFLICT


class ConversationClosed(DomainError):
    code = ErrorCode.CONVERSATION_CLOSED


class IdempotencyKeyReused(DomainError):
    """The same clientMessageId / action_id was sent again with a different payload: replaying
    the first answer would hide the client's mistake (Stripe answers the same way)."""

    code = ErrorCode.IDEMPOTENCY_KEY_REUSED


class ServiceUnavailable(DomainError):
    """Postgres (or Redis, where an operation cannot do without it) is unreachable, so nothing
    ran: the client may retry later. Distinct from INTERNAL, which is a bug."""

    code = ErrorCode.SERVICE_UNAVAILABLE


class RetryTransaction(Exception):
    """Raised inside a unit of work when a concurrent writer won a race the
    statement could not see (e.g. the same clientMessageId inserted at the same
    moment). The transaction is rolled back and run again from the start, where
    the winner's row is visible."""
