"""Re-indexing a tenant's messages with its text-search configuration (`tenant reindex-search`).

A change of `searchLanguage` applies at once to queries and to messages written from then on;
stored messages keep the configuration they were indexed with (a query then finds them only where
their words and the query's stems coincide) until this runs. It walks the tenant's messages in
primary-key order, a batch per transaction, and sets each one's configuration to the tenant's of
that moment: a language changed again meanwhile is picked up by the later batches, and a run that
stopped is finished by running it again (messages already right are passed, not rewritten).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.services import limits as check
from db.repositories import text_search as repo
from db.session import Database, UnitOfWork


@dataclass(frozen=True, slots=True)
class ReindexStep:
    passed: int
    changed: int
    after: tuple[uuid.UUID, int] | None  # None: the tenant's last message was passed


async def total(db: Database, tenant_id: str) -> tuple[str, int]:
    """The tenant's configuration and how many messages it has (for the progress bar)."""
    check.tenant_id(tenant_id)
    async with db.read() as conn:
        return await repo.tenant_config(conn, tenant_id), await repo.tenant_message_count(conn, tenant_id)


async def reindex_step(uow: UnitOfWork, tenant_id: str, after: tuple[uuid.UUID, int] | None, limit: int) -> ReindexStep:
    check.tenant_id(tenant_id)
    conn = await uow.begin()
    passed, changed, last = await repo.reindex_batch(conn, tenant_id, after, limit)
    return ReindexStep(passed, changed, last)
