"""crm_outbox: a partial index of the deliveries not yet delivered (the worker's metrics sample)

Revision ID: 5c2e8a7d4f13
Revises: 5c1d7e9a3b42
Create Date: 2026-11-30 16:00:00.000000

The worker samples the outbox's backlog every WORKER_METRICS_INTERVAL_S. Counting by state over the
whole table scanned every delivered row kept for OUTBOX_RETENTION_DAYS (millions at scale) on every
sample of every worker; the sample now reads only unsettled rows (pending, retrying, given up), which
this index holds, and delivered deliveries are counted by the worker as it delivers them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c2e8a7d4f13"
down_revision: str | None = "5c1d7e9a3b42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_crm_outbox_unsettled",
        "crm_outbox",
        ["tenant_id", "created_at"],
        postgresql_where=sa.text("status <> 'delivered'"),
    )


def downgrade() -> None:
    op.drop_index("ix_crm_outbox_unsettled", table_name="crm_outbox")
