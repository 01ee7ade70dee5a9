"""ix_messages_search keeps a small GIN pending list (gin_pending_list_limit = 256 kB)

Revision ID: ac43885c0bbd
Revises: 1fd9a71b989d
Create Date: 2026-11-30 22:30:00.000000

Every keyword-search probe scans the whole pending list, and with Postgres' 4 MB default that list
refills under live appends between merges: the probe's cost follows its size, and the append that
crosses the limit pays the whole merge. A 256 kB limit bounds both (bench/gin_pending_bench.py;
docs/decisions.md, "The GIN pending list"). The index's own storage parameter overrides the
`gin_pending_list_limit` setting of any session, the bulk importer's included.

ALTER INDEX ... SET takes a SHARE UPDATE EXCLUSIVE lock on the index: appends and searches go on
while it runs; the list already pending is merged by the next insert past the new limit. On Citus
the coordinator propagates it to every shard's index (tests/search/test_gin_pending_list.py).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "ac43885c0bbd"
down_revision: str | None = "1fd9a71b989d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER INDEX ix_messages_search SET (fastupdate = on, gin_pending_list_limit = 256)")


def downgrade() -> None:
    op.execute("ALTER INDEX ix_messages_search RESET (fastupdate, gin_pending_list_limit)")
