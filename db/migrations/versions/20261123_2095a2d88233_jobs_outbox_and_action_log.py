"""jobs: CRM outbox, action log, and the partial indexes the crons scan

Revision ID: 2095a2d88233
Revises: 4d04f8200497
Create Date: 2026-11-23 14:42:43.134015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "2095a2d88233"
down_revision: str | None = "4d04f8200497"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "action_log",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("action_id", sa.Text(), nullable=False),
        sa.Column("action_type", sa.Text(), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "action_id", name=op.f("pk_action_log")),
    )
    op.create_index(op.f("ix_action_log_tenant_id_created_at"), "action_log", ["tenant_id", "created_at"], unique=False)
    op.create_table(
        "crm_outbox",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("conversation_id", sa.UUID(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name=op.f("ck_crm_outbox_status")),
        sa.CheckConstraint("trigger IN ('closed', 'manual')", name=op.f("ck_crm_outbox_trigger")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            name=op.f("fk_crm_outbox_tenant_id_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_crm_outbox")),
    )
    op.create_index(
        "ix_crm_outbox_due",
        "crm_outbox",
        ["tenant_id", "next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        op.f("ix_crm_outbox_tenant_id_conversation_id_created_at"),
        "crm_outbox",
        ["tenant_id", "conversation_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_conversations_closed_at",
        "conversations",
        ["tenant_id", "closed_at"],
        unique=False,
        postgresql_where=sa.text("closed_at IS NOT NULL"),
    )
    op.create_index(
        "ix_conversations_idle",
        "conversations",
        ["tenant_id", "last_activity_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_idle", table_name="conversations", postgresql_where=sa.text("status = 'active'"))
    op.drop_index(
        "ix_conversations_closed_at", table_name="conversations", postgresql_where=sa.text("closed_at IS NOT NULL")
    )
    op.drop_index(op.f("ix_crm_outbox_tenant_id_conversation_id_created_at"), table_name="crm_outbox")
    op.drop_index("ix_crm_outbox_due", table_name="crm_outbox", postgresql_where=sa.text("status = 'pending'"))
    op.drop_table("crm_outbox")
    op.drop_index(op.f("ix_action_log_tenant_id_created_at"), table_name="action_log")
    op.drop_table("action_log")
