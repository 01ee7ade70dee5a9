"""Which failures the worker retries with backoff: "a server is busy or unreachable" yes,
"this job is wrong" never (it would be retried forever with the same outcome)."""

from __future__ import annotations

import asyncpg

from app.errors import BadUserInput, IdempotencyKeyReused, NotFound, ServiceUnavailable
from jobs.context import is_transient


def test_a_busy_or_unreachable_backend_is_retried_and_a_wrong_job_is_not() -> None:
    assert is_transient(ServiceUnavailable("no database connection came free within 10 s"))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    assert is_transient(asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"))
    for wrong in (BadUserInput("bad"), NotFound("no such conversation"), IdempotencyKeyReused("other payload")):
        assert not is_transient(wrong)
    assert not is_transient(ValueError("a bug"))
