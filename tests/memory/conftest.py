"""Fixtures shared with tests/jobs (worker processes, queues, tenants that exist) and tests/api
(the session's API, which has no summarizer configured)."""

from tests.api.conftest import app, http
from tests.jobs.conftest import log_dir, other_tenant, queue, tenant

__all__ = ["app", "http", "log_dir", "other_tenant", "queue", "tenant"]
