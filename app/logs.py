"""Structured JSON logs: one object per line, with request id, tenant and operation when known."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_FIELDS = (
    "request_id",
    "tenant",
    "operation",
    "duration_ms",
    "status",
    "codes",
    "path",
    "action_type",
    "action_id",
    "correlation_id",
)

#: Fields every record logged in this context carries: a worker sets the action's type, id and
#: correlation_id while it runs one, so whatever logs inside it (services, the database) can be
#: joined to the request that enqueued it.
LOG_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("log_context", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = LOG_CONTEXT.get()
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is None and context is not None:
                value = context.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log duplicates ours (we log each GraphQL request with more context).
    logging.getLogger("uvicorn.access").disabled = True
