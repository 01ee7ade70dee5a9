"""state tombstones: a deleted key keeps its row (and version) so versions never go back

Revision ID: 7c3e5a91d4b2
Revises: 5c2e7a91d3f4
Create Date: 2026-11-30 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c3e5a91d4b2"
down_revision: str | None = "5c2e7a91d3f4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: Postgres adds the column without rewriting the table.
    op.add_column(
        "conversation_state",
        sa.Column("deleted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )


def downgrade() -> None:
    op.execute("DELETE FROM conversation_state WHERE deleted")
    op.drop_column("conversation_state", "deleted")
