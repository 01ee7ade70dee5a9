"""stats_daily: daily rollups (tenant x day x agent x role/status), kept by statement triggers

Revision ID: 3b7d9e1f6a24
Revises: 8a1f3c6e2b90
Create Date: 2026-11-30 14:00:00.000000

Why triggers: every write path (append, batch append, close, archive, import, deletion, retention, and
paths written later by others) keeps the rollups in its own transaction without having to remember to.
They are statement-level with transition tables, so a batch costs one grouped upsert, not one per row.
Rows are spread over 16 shards by conversation so concurrent appends of one tenant do not queue on
one rollup row; reads sum the shards. See docs/decisions.md ("Stats from daily rollups").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3b7d9e1f6a24"
down_revision: str | None = "8a1f3c6e2b90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Message facts: role = the message's role, status = '' (day = the message's UTC day).
# Conversation facts: role = '', status = the conversation's status (day = its creation's UTC day).
_APPLY = """
CREATE FUNCTION stats_daily_apply(deltas jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO stats_daily AS s (tenant_id, day, agent_id, role, status, shard, conversations,
                                  conversation_messages, closed, duration_seconds, messages, tokens)
    SELECT d.tenant_id, d.day, d.agent_id, d.role, d.status, d.shard, sum(d.conversations),
           sum(d.conversation_messages), sum(d.closed), sum(d.duration_seconds), sum(d.messages), sum(d.tokens)
    FROM jsonb_to_recordset(deltas) AS d(tenant_id text, day date, agent_id text, role text, status text,
         shard int, conversations bigint, conversation_messages bigint, closed bigint,
         duration_seconds float8, messages bigint, tokens bigint)
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (tenant_id, day, agent_id, role, status, shard) DO UPDATE SET
        conversations = s.conversations + excluded.conversations,
        conversation_messages = s.conversation_messages + excluded.conversation_messages,
        closed = s.closed + excluded.closed,
        duration_seconds = s.duration_seconds + excluded.duration_seconds,
        messages = s.messages + excluded.messages,
        tokens = s.tokens + excluded.tokens
$$;
"""

# One function per table and event; each folds the transition rows into signed deltas.
_MESSAGE_ROWS = """
    SELECT r.tenant_id, (r.created_at AT TIME ZONE 'UTC')::date AS day, coalesce(c.agent_id, '') AS agent_id,
           r.role, '' AS status, abs(hashtext(r.conversation_id::text)) % 16 AS shard,
           0 AS conversations, 0 AS conversation_messages, 0 AS closed, 0.0 AS duration_seconds,
           {sign} AS messages, {sign} * r.token_count AS tokens
    FROM {rows} r JOIN conversations c ON c.tenant_id = r.tenant_id AND c.id = r.conversation_id
"""
_CONVERSATION_ROWS = """
    SELECT r.tenant_id, (r.created_at AT TIME ZONE 'UTC')::date AS day, coalesce(r.agent_id, '') AS agent_id,
           '' AS role, r.status, abs(hashtext(r.id::text)) % 16 AS shard,
           {sign} AS conversations, {sign} * r.message_count AS conversation_messages,
           {sign} * (r.closed_at IS NOT NULL)::int AS closed,
           {sign} * coalesce(extract(epoch FROM r.closed_at - r.created_at)::float8, 0) AS duration_seconds,
           0 AS messages, 0 AS tokens
    FROM {rows} r
"""


def _grouped(body: str) -> str:
    """Deltas summed per rollup row; rows that net to nothing (an update that moved no fact) dropped."""
    return f"""
    SELECT coalesce(jsonb_agg(g), '[]'::jsonb) FROM (
        SELECT tenant_id, day, agent_id, role, status, shard, sum(conversations) AS conversations,
               sum(conversation_messages) AS conversation_messages, sum(closed) AS closed,
               sum(duration_seconds) AS duration_seconds, sum(messages) AS messages, sum(tokens) AS tokens
        FROM ({body}) d GROUP BY 1, 2, 3, 4, 5, 6
        HAVING sum(conversations) <> 0 OR sum(conversation_messages) <> 0 OR sum(closed) <> 0
            OR sum(duration_seconds) <> 0 OR sum(messages) <> 0 OR sum(tokens) <> 0
    ) g"""


def _trigger_function(name: str, body: str) -> str:
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_daily_apply(({_grouped(body)}));
    RETURN NULL;
END $$;
"""


# A conversation's messages are deleted by cascade after the conversation row is gone, when their agent
# can no longer be looked up: their facts are taken out before, per deleted conversation (the messages
# trigger then finds no conversation and adds nothing). The same move when a conversation's agent changes.
_CONVERSATION_MESSAGES = """
    SELECT m.tenant_id, (m.created_at AT TIME ZONE 'UTC')::date AS day, coalesce({agent}, '') AS agent_id,
           m.role, '' AS status, abs(hashtext(m.conversation_id::text)) % 16 AS shard,
           0 AS conversations, 0 AS conversation_messages, 0 AS closed, 0.0 AS duration_seconds,
           {sign} AS messages, {sign} * m.token_count AS tokens
    FROM messages m WHERE m.tenant_id = OLD.tenant_id AND m.conversation_id = OLD.id
"""
_ROW_FUNCTIONS = f"""
CREATE FUNCTION stats_daily_conversation_before_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_daily_apply(({_grouped(_CONVERSATION_MESSAGES.format(agent="OLD.agent_id", sign=-1))}));
    RETURN OLD;
END $$;
--split--
CREATE FUNCTION stats_daily_conversation_agent_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_daily_apply(({
    _grouped(
        _CONVERSATION_MESSAGES.format(agent="OLD.agent_id", sign=-1)
        + " UNION ALL "
        + _CONVERSATION_MESSAGES.format(agent="NEW.agent_id", sign=1)
    )
}));
    RETURN NEW;
END $$;
"""


def upgrade() -> None:
    op.create_table(
        "stats_daily",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("conversations", sa.BigInteger(), nullable=False),
        sa.Column("conversation_messages", sa.BigInteger(), nullable=False),
        sa.Column("closed", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "day", "agent_id", "role", "status", "shard"),
    )
    op.execute(_APPLY)
    ins_m = _MESSAGE_ROWS.format(sign=1, rows="new_rows")
    del_m = _MESSAGE_ROWS.format(sign=-1, rows="old_rows")
    ins_c = _CONVERSATION_ROWS.format(sign=1, rows="new_rows")
    del_c = _CONVERSATION_ROWS.format(sign=-1, rows="old_rows")
    op.execute(_trigger_function("stats_daily_messages_ins", ins_m))
    op.execute(_trigger_function("stats_daily_messages_del", del_m))
    op.execute(_trigger_function("stats_daily_messages_upd", f"{del_m} UNION ALL {ins_m}"))
    op.execute(_trigger_function("stats_daily_conversations_ins", ins_c))
    op.execute(_trigger_function("stats_daily_conversations_del", del_c))
    op.execute(_trigger_function("stats_daily_conversations_upd", f"{del_c} UNION ALL {ins_c}"))
    for table in ("messages", "conversations"):
        for event, ref in (("ins", "NEW TABLE AS new_rows"), ("del", "OLD TABLE AS old_rows")):
            verb = "INSERT" if event == "ins" else "DELETE"
            op.execute(
                f"CREATE TRIGGER stats_daily_{table}_{event} AFTER {verb} ON {table} "
                f"REFERENCING {ref} FOR EACH STATEMENT EXECUTE FUNCTION stats_daily_{table}_{event}()"
            )
        op.execute(
            f"CREATE TRIGGER stats_daily_{table}_upd AFTER UPDATE ON {table} "
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION stats_daily_{table}_upd()"
        )
    for function in _ROW_FUNCTIONS.split("--split--"):
        op.execute(function)
    op.execute(
        "CREATE TRIGGER stats_daily_conversation_before_delete BEFORE DELETE ON conversations "
        "FOR EACH ROW EXECUTE FUNCTION stats_daily_conversation_before_delete()"
    )
    op.execute(
        "CREATE TRIGGER stats_daily_conversation_agent_moved AFTER UPDATE OF agent_id ON conversations "
        "FOR EACH ROW WHEN (OLD.agent_id IS DISTINCT FROM NEW.agent_id) "
        "EXECUTE FUNCTION stats_daily_conversation_agent_moved()"
    )
    # Backfill from what is there (set-based, once, grouped before it is handed over).
    op.execute(f"SELECT stats_daily_apply(({_grouped(_CONVERSATION_ROWS.format(sign=1, rows='conversations'))}))")
    op.execute(f"SELECT stats_daily_apply(({_grouped(_MESSAGE_ROWS.format(sign=1, rows='messages'))}))")


def downgrade() -> None:
    op.execute("DROP TRIGGER stats_daily_conversation_before_delete ON conversations")
    op.execute("DROP TRIGGER stats_daily_conversation_agent_moved ON conversations")
    op.execute("DROP FUNCTION stats_daily_conversation_before_delete()")
    op.execute("DROP FUNCTION stats_daily_conversation_agent_moved()")
    for table in ("messages", "conversations"):
        for event in ("ins", "del", "upd"):
            op.execute(f"DROP TRIGGER stats_daily_{table}_{event} ON {table}")
            op.execute(f"DROP FUNCTION stats_daily_{table}_{event}()")
    op.execute("DROP FUNCTION stats_daily_apply(jsonb)")
    op.drop_table("stats_daily")
