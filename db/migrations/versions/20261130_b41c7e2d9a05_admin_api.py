"""admin API: key expiry and last use, tenant settings' update time, dead letters per tenant

Revision ID: b41c7e2d9a05
Revises: 8a1f3c6e2b90
Create Date: 2026-11-30 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "b41c7e2d9a05"
down_revision: str | None = "8a1f3c6e2b90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "tenants",
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("action_type", sa.Text(), nullable=True),
        sa.Column("action_id", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column("error", pg.JSONB(), nullable=True),
        sa.Column("envelope", pg.JSONB(), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.tenant_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
    )
    op.create_index("ix_dead_letters_tenant_failed", "dead_letters", ["tenant_id", "failed_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_tenant_failed", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_column("tenants", "updated_at")
    op.drop_column("api_keys", "last_used_at")
    op.drop_column("api_keys", "expires_at")
