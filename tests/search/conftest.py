"""Fixtures from tests/api (the session's API, callers per tenant) and tests/jobs (worker processes)."""

from tests.api.conftest import api, app, http, other_api
from tests.jobs.conftest import log_dir, queue, worker

__all__ = ["api", "app", "http", "log_dir", "other_api", "queue", "worker"]
