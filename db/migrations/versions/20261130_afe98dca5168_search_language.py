"""messages.search_config: the text-search configuration each message is indexed with (per tenant)

Revision ID: afe98dca5168
Revises: a0728077a12e
Create Date: 2026-11-30 15:10:00.000000

A tenant chooses a language (tenant setting `search_language`, app/services/tenant_settings.py); a
message is indexed with its tenant's configuration as of its insert. The GIN index is an expression
index over `to_tsvector(search_config, content)`, one index for every configuration: a stored
tsvector would compute the same thing once per insert and add the vector's bytes to every row, while
this adds 4 bytes (a regconfig oid). Existing rows get 'simple' (what they were indexed with) as a
fast default, which is then dropped so that an INSERT that does not name the column reaches the
BEFORE trigger, which looks up the tenant's setting: every write path gets the tenant's language by
construction, and the hot paths name the column themselves (one lookup per statement) and never call
the trigger. docs/decisions.md, "Text-search configuration per tenant".
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "afe98dca5168"
down_revision: str | None = "a0728077a12e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION messages_search_config() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.search_config := coalesce(
        (SELECT (settings->>'search_language')::regconfig FROM tenants WHERE tenant_id = NEW.tenant_id),
        'simple'::regconfig);
    RETURN NEW;
END $$
"""


def upgrade() -> None:
    op.add_column(
        "messages",
        sa.Column("search_config", pg.REGCONFIG(), nullable=False, server_default=sa.text("'simple'::regconfig")),
    )
    op.alter_column("messages", "search_config", server_default=None)
    op.execute(_FUNCTION)
    op.execute(
        "CREATE TRIGGER messages_search_config BEFORE INSERT ON messages FOR EACH ROW "
        "WHEN (NEW.search_config IS NULL) EXECUTE FUNCTION messages_search_config()"
    )
    op.execute("DROP INDEX ix_messages_search")
    op.execute("CREATE INDEX ix_messages_search ON messages USING gin (tenant_id, to_tsvector(search_config, content))")


def downgrade() -> None:
    op.execute("DROP INDEX ix_messages_search")
    op.execute(
        "CREATE INDEX ix_messages_search ON messages USING gin (tenant_id, to_tsvector('simple'::regconfig, content))"
    )
    op.execute("DROP TRIGGER messages_search_config ON messages")
    op.execute("DROP FUNCTION messages_search_config()")
    op.drop_column("messages", "search_config")
