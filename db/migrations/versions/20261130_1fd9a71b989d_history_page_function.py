"""history_page(): the history page ("last 50") as one function call, routed whole on Citus

Revision ID: 1fd9a71b989d
Revises: 5c2e8a7d4f13
Create Date: 2026-11-30 16:10:00.000000

Only Citus calls it (plain Postgres keeps the one-statement page of db/repositories/messages.py).
That statement (a CTE finding the conversation, joined to its messages) is a router query for Citus:
planned on the coordinator on every call, deparsed, shipped, parsed and planned again by the worker.
A function distributed by its tenant argument is delegated whole (the coordinator only routes the
call), and on the worker its two statements are single-table "fast path" queries, which Citus runs
on a local shard without the deparse/parse round (docs/scaling.md has the measured CPU per read).
Same result as the statement: no row when the conversation is missing; otherwise the page's
messages in seq order, each beside the conversation's last_seq, or one row with only last_seq when
the page is empty. The bounds are those of app.services.messages.PageRequest.bounds.

It returns the columns it was written with: a Message field added later (records' generated extra
columns) needs the function replaced in its migration too, as append_message does.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "1fd9a71b989d"
down_revision: str | None = "5c2e8a7d4f13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION history_page(
    p_tenant_id text, p_conversation_id uuid, p_session_id text, p_forward boolean, p_lower integer,
    p_upper_cap integer, p_size integer
) RETURNS TABLE (
    last_seq integer, tenant_id text, conversation_id uuid, seq integer, id uuid, client_message_id text,
    role text, content text, name text, tool_call_id text, tool_calls jsonb, token_count integer, metadata jsonb,
    execution jsonb, created_at timestamptz
) LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_column
DECLARE
    v_id uuid;
    v_last integer;
    v_cap integer;
    v_lo integer;
    v_hi integer;
BEGIN
    IF p_conversation_id IS NOT NULL THEN
        SELECT id, last_seq INTO v_id, v_last FROM conversations WHERE tenant_id = p_tenant_id AND id = p_conversation_id;
    ELSE
        SELECT id, last_seq INTO v_id, v_last FROM conversations WHERE tenant_id = p_tenant_id AND session_id = p_session_id;
    END IF;
    IF v_id IS NULL THEN
        RETURN;
    END IF;
    v_cap := LEAST(v_last + 1, COALESCE(p_upper_cap, v_last + 1));
    IF p_forward THEN
        v_lo := p_lower + 1;
        v_hi := LEAST(v_cap - 1, p_lower + p_size);
    ELSE
        v_lo := GREATEST(p_lower + 1, v_cap - p_size);
        v_hi := v_cap - 1;
    END IF;
    RETURN QUERY SELECT v_last, m.tenant_id, m.conversation_id, m.seq, m.id, m.client_message_id, m.role, m.content,
        m.name, m.tool_call_id, m.tool_calls, m.token_count, m.metadata, m.execution, m.created_at
    FROM messages m WHERE m.tenant_id = p_tenant_id AND m.conversation_id = v_id AND m.seq BETWEEN v_lo AND v_hi
    ORDER BY m.seq;
    IF NOT FOUND THEN
        last_seq := v_last;
        RETURN NEXT;
    END IF;
END
$fn$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION history_page(text, uuid, text, boolean, integer, integer, integer)")
