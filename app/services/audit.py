"""The audit log: every admin change and every deletion writes one entry, in the same transaction
as the change it records (a rolled-back change leaves no entry; a committed one always has one)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app import models
from app.services import cursors
from app.services import limits as check
from db.repositories import audit as repo
from db.session import Connection

#: Actors that are not API keys.
CLI = "cli"
TRUSTED = "trusted"
SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: uuid.UUID
    at: datetime
    actor: str
    action: str
    details: dict[str, Any] | None


def actor_of(key_id: str | None) -> str:
    """An API key's id, or 'trusted' for a gateway-authenticated caller without a key."""
    return key_id if key_id is not None else TRUSTED


async def record(
    conn: Connection, tenant_id: str, actor: str, action: str, details: dict[str, Any] | None = None
) -> AuditEntry:
    """Call inside the change's own transaction. `details`: names and counts, never content or secrets."""
    row = await repo.insert(conn, tenant_id, actor, action, details)
    return AuditEntry(**dict(row))


def _cursor(entry: AuditEntry) -> str:
    return cursors.audit_cursor(entry.at, entry.id)


async def page(
    conn: Connection, tenant_id: str, first: int | None, after: str | None, limits: check.Limits
) -> models.Page[AuditEntry]:
    size = check.page_size(first, limits, "first")
    limit = 20 if size is None else size
    position = cursors.parse_audit_cursor(after) if after else None
    rows = await repo.page(conn, tenant_id, limit + 1, position)
    entries = [AuditEntry(**dict(row)) for row in rows[:limit]]
    return models.Page(
        items=entries,
        cursor_of=_cursor,
        has_next_page=len(rows) > limit,
        has_previous_page=position is not None,
        total_count=len(entries),
    )
