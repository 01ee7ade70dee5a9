"""action log: the payload hash an action_id is bound to; answers optional

Revision ID: 5c2e7a91d3f4
Revises: 22fcdd0be089
Create Date: 2026-11-30 10:00:00

The same action_id sent again with another payload is IDEMPOTENCY_KEY_REUSED, not the first
answer (issue 9). save_message answers from its message, so its log row holds no answer.
Rows from before this revision have no hash and replay as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c2e7a91d3f4"
down_revision: str | None = "22fcdd0be089"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("action_log", sa.Column("payload_hash", sa.Text(), nullable=True))
    op.alter_column("action_log", "response", nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM action_log WHERE response IS NULL")
    op.alter_column("action_log", "response", nullable=False)
    op.drop_column("action_log", "payload_hash")
