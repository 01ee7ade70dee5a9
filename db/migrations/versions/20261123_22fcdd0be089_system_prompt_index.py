"""system prompt index

Revision ID: 22fcdd0be089
Revises: 2095a2d88233
Create Date: 2026-11-23 15:30:08.939109
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "22fcdd0be089"
down_revision: str | None = "2095a2d88233"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_system",
        "messages",
        ["tenant_id", "conversation_id", "seq"],
        unique=False,
        postgresql_where=sa.text("role = 'system'"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_system", table_name="messages", postgresql_where=sa.text("role = 'system'"))
