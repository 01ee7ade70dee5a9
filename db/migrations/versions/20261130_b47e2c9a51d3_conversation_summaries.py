"""conversation summaries: the summarizer's bookkeeping (status, range, model, error, lease)

Revision ID: b47e2c9a51d3
Revises: b41c7e2d9a05
Create Date: 2026-11-30 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b47e2c9a51d3"
down_revision: str | None = "b41c7e2d9a05"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversation_summaries",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("up_to_seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("covered_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('none', 'pending', 'ready', 'failed')", name=op.f("ck_conversation_summaries_status")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            name=op.f("fk_conversation_summaries_tenant_id_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "conversation_id", name=op.f("pk_conversation_summaries")),
    )


def downgrade() -> None:
    op.drop_table("conversation_summaries")
