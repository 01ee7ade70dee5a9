"""stats_daily insert triggers skip a transaction that computes its rollups itself (the batched import)

Revision ID: a0728077a12e
Revises: 9e4b1c7a2f60
Create Date: 2026-11-30 15:00:00.000000

The batched import (app/services/bulk_import) writes a batch of conversations in one transaction.
Fired at its conversations INSERT, the rollup trigger would lock the batch's stats_daily rows from
the first statement to the commit, and every concurrent batch of the same tenant touching those
days would queue behind it (measured: half the backends' samples in Lock:transactionid). A
transaction that sets `conversation_service.rollups = 'deferred'` (SET LOCAL) skips the two insert
triggers and upserts the same facts set-based as its last statement before COMMIT
(db/repositories/bulk_import.rollup_batch), so the rows are locked only for the commit. The WHEN
clause keeps the function bodies of 3b7d9e1f6a24 unchanged; every other trigger still fires.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a0728077a12e"
down_revision: str | None = "9e4b1c7a2f60"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GUARD = "WHEN (current_setting('conversation_service.rollups', true) IS DISTINCT FROM 'deferred') "
_TRIGGERS = [
    ("messages", "stats_daily_messages_ins", "REFERENCING NEW TABLE AS new_rows"),
    ("conversations", "stats_daily_conversations_ins", "REFERENCING NEW TABLE AS new_rows"),
]


def _create(table: str, name: str, referencing: str, guard: str) -> str:
    return (
        f"CREATE TRIGGER {name} AFTER INSERT ON {table} {referencing} FOR EACH STATEMENT {guard}"
        f"EXECUTE FUNCTION {name}()"
    )


def upgrade() -> None:
    for table, name, referencing in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {table}")
        op.execute(_create(table, name, referencing, _GUARD))


def downgrade() -> None:
    for table, name, referencing in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {table}")
        op.execute(_create(table, name, referencing, ""))
