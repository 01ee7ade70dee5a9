"""stats_daily: daily rollups (tenant x day x agent x role/status), kept by triggers

Revision ID: 3b7d9e1f6a24
Revises: b47e2c9a51d3
Create Date: 2026-11-30 14:00:00.000000

Why triggers: every write path (append, batch append, close, archive, import, deletion, retention, and
paths written later by others) keeps the rollups in its own transaction without having to remember to.
The append path pays one statement-level trigger on messages (transition table, one grouped upsert per
statement, so a batch costs one upsert); conversation changes that move facts (status, agent,
created_at, closed_at) fire a row trigger filtered by WHEN, which an append's counter bump never
matches. Rows are spread over 16 shards by conversation so concurrent appends of one tenant do not
queue on one rollup row; reads sum the shards. See docs/decisions.md ("Stats from daily rollups").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3b7d9e1f6a24"
down_revision: str | None = "b47e2c9a51d3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "conversations, conversation_messages, closed, duration_seconds, messages, tokens"

# Facts (day, agent_id, role, status, shard) -> the counters. Message facts: role = the message's role,
# status = '' (day = the message's UTC day). Conversation facts: role = '', status = the conversation's
# status (day = its creation's UTC day); conversation_messages there counts the conversation's messages
# and is kept by the messages triggers only.
_UPSERT = f"""
INSERT INTO stats_daily AS s (tenant_id, day, agent_id, role, status, shard, {_COLUMNS})
SELECT tenant_id, day, agent_id, role, status, shard, sum(conversations), sum(conversation_messages),
       sum(closed), sum(duration_seconds), sum(messages), sum(tokens)
FROM ({{body}}) d
GROUP BY 1, 2, 3, 4, 5, 6
HAVING sum(conversations) <> 0 OR sum(conversation_messages) <> 0 OR sum(closed) <> 0
    OR sum(duration_seconds) <> 0 OR sum(messages) <> 0 OR sum(tokens) <> 0
ORDER BY 1, 2, 3, 4, 5, 6
ON CONFLICT (tenant_id, day, agent_id, role, status, shard) DO UPDATE SET
    conversations = s.conversations + excluded.conversations,
    conversation_messages = s.conversation_messages + excluded.conversation_messages,
    closed = s.closed + excluded.closed,
    duration_seconds = s.duration_seconds + excluded.duration_seconds,
    messages = s.messages + excluded.messages,
    tokens = s.tokens + excluded.tokens
"""

# Each message adds a message fact and one to its conversation's conversation_messages.
_MESSAGE_FACTS = """
SELECT r.tenant_id, v.day, coalesce(c.agent_id, '') AS agent_id, v.role, v.status,
       abs(hashtext(r.conversation_id::text)) % 16 AS shard, 0 AS conversations,
       v.conversation_messages, 0 AS closed, 0.0::float8 AS duration_seconds, v.messages, v.tokens
FROM {rows} r
JOIN conversations c ON c.tenant_id = r.tenant_id AND c.id = r.conversation_id
CROSS JOIN LATERAL (VALUES
    ((r.created_at AT TIME ZONE 'UTC')::date, r.role, '', 0, {sign}, {sign} * r.token_count),
    ((c.created_at AT TIME ZONE 'UTC')::date, '', c.status, {sign}, 0, 0)
) AS v(day, role, status, conversation_messages, messages, tokens)
"""

_CONVERSATION_FACTS = """
SELECT r.tenant_id, (r.created_at AT TIME ZONE 'UTC')::date AS day, coalesce(r.agent_id, '') AS agent_id,
       '' AS role, r.status, abs(hashtext(r.id::text)) % 16 AS shard, {sign} AS conversations,
       {sign} * {messages} AS conversation_messages, {sign} * (r.closed_at IS NOT NULL)::int AS closed,
       {sign} * coalesce(extract(epoch FROM r.closed_at - r.created_at)::float8, 0) AS duration_seconds,
       0 AS messages, 0 AS tokens
FROM {rows} r
"""

# The message facts of one conversation (OLD), counted under `agent`.
_ONE_CONVERSATIONS_MESSAGES = """
SELECT m.tenant_id, (m.created_at AT TIME ZONE 'UTC')::date AS day, coalesce({agent}, '') AS agent_id,
       m.role, '' AS status, abs(hashtext(m.conversation_id::text)) % 16 AS shard, 0 AS conversations,
       0 AS conversation_messages, 0 AS closed, 0.0::float8 AS duration_seconds, {sign} AS messages,
       {sign} * m.token_count AS tokens
FROM messages m WHERE m.tenant_id = OLD.tenant_id AND m.conversation_id = OLD.id
"""
_COUNT_OF_OLD = "(SELECT count(*) FROM messages m WHERE m.tenant_id = OLD.tenant_id AND m.conversation_id = OLD.id)"


def _function(name: str, body: str, returns: str = "NULL") -> str:
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_UPSERT.format(body=body)};
    RETURN {returns};
END $$
"""


def _functions() -> list[str]:
    ins_m = _MESSAGE_FACTS.format(sign=1, rows="new_rows")
    del_m = _MESSAGE_FACTS.format(sign=-1, rows="old_rows")
    # conversation_messages belongs to the messages triggers: 0 here.
    ins_c = _CONVERSATION_FACTS.format(sign=1, rows="new_rows", messages=0)
    del_c = _CONVERSATION_FACTS.format(sign=-1, rows="old_rows", messages=0)
    old_row = "(SELECT OLD.*) "
    new_row = "(SELECT NEW.*) "
    moved = (
        _CONVERSATION_FACTS.format(sign=-1, rows=old_row, messages=_COUNT_OF_OLD)
        + " UNION ALL "
        + _CONVERSATION_FACTS.format(sign=1, rows=new_row, messages=_COUNT_OF_OLD)
        + " UNION ALL "
        + _ONE_CONVERSATIONS_MESSAGES.format(agent="OLD.agent_id", sign=-1)
        + " UNION ALL "
        + _ONE_CONVERSATIONS_MESSAGES.format(agent="NEW.agent_id", sign=1)
    )
    # Before a conversation goes, its messages' facts go (its messages are deleted by cascade after the
    # row is gone, when the messages trigger can no longer find the conversation and adds nothing).
    before_delete = (
        _ONE_CONVERSATIONS_MESSAGES.format(agent="OLD.agent_id", sign=-1)
        + " UNION ALL "
        + (
            _CONVERSATION_FACTS.format(sign=0, rows=old_row, messages=0).replace(
                "0 * 0 AS conversation_messages", f"-{_COUNT_OF_OLD} AS conversation_messages"
            )
        )
    )
    return [
        _function("stats_daily_messages_ins", ins_m),
        _function("stats_daily_messages_del", del_m),
        _function("stats_daily_messages_upd", f"{del_m} UNION ALL {ins_m}"),
        _function("stats_daily_conversations_ins", ins_c),
        _function("stats_daily_conversations_del", del_c),
        _function("stats_daily_conversation_moved", moved, "NEW"),
        _function("stats_daily_conversation_before_delete", before_delete, "OLD"),
    ]


_TRIGGERS = [
    "CREATE TRIGGER stats_daily_messages_ins AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION stats_daily_messages_ins()",
    "CREATE TRIGGER stats_daily_messages_del AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION stats_daily_messages_del()",
    "CREATE TRIGGER stats_daily_messages_upd AFTER UPDATE ON messages "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION stats_daily_messages_upd()",
    "CREATE TRIGGER stats_daily_conversations_ins AFTER INSERT ON conversations REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION stats_daily_conversations_ins()",
    "CREATE TRIGGER stats_daily_conversations_del AFTER DELETE ON conversations REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION stats_daily_conversations_del()",
    # An append's counter bump changes none of these columns: the trigger is not even called.
    "CREATE TRIGGER stats_daily_conversation_moved AFTER UPDATE ON conversations FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.agent_id IS DISTINCT FROM NEW.agent_id "
    "OR OLD.created_at IS DISTINCT FROM NEW.created_at OR OLD.closed_at IS DISTINCT FROM NEW.closed_at) "
    "EXECUTE FUNCTION stats_daily_conversation_moved()",
    "CREATE TRIGGER stats_daily_conversation_before_delete BEFORE DELETE ON conversations FOR EACH ROW "
    "EXECUTE FUNCTION stats_daily_conversation_before_delete()",
]


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
    for statement in _functions() + _TRIGGERS:
        op.execute(statement)
    # Backfill from what is there: set-based, once, before any write sees the triggers' table.
    op.execute(_UPSERT.format(body=_CONVERSATION_FACTS.format(sign=1, rows="conversations", messages=0)))
    op.execute(_UPSERT.format(body=_MESSAGE_FACTS.format(sign=1, rows="messages")))


def downgrade() -> None:
    for table, name in [
        ("messages", "stats_daily_messages_ins"),
        ("messages", "stats_daily_messages_del"),
        ("messages", "stats_daily_messages_upd"),
        ("conversations", "stats_daily_conversations_ins"),
        ("conversations", "stats_daily_conversations_del"),
        ("conversations", "stats_daily_conversation_moved"),
        ("conversations", "stats_daily_conversation_before_delete"),
    ]:
        op.execute(f"DROP TRIGGER {name} ON {table}")
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("stats_daily")
