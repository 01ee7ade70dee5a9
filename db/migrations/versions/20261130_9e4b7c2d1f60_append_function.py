"""append_message(): the single-message append as one function call, routed whole on Citus

Revision ID: 9e4b7c2d1f60
Revises: afe98dca5168
Create Date: 2026-11-30 15:00:00.000000

Why a function: the append was ONE statement with data-modifying CTEs (bump the conversation, insert
the message and its sources). Citus cannot route that whole: it router-plans UPDATE/DELETE CTEs but
never INSERT CTEs, so it split each append into subplans, intermediate results and a two-phase commit
(~6 % of single Postgres, docs/scaling.md). A top-level INSERT … SELECT with the UPDATE as its CTE is
router-planned but its CTE is not rewritten to the shard ("cannot execute a distributed query from a
query on a shard"). A function distributed by its tenant argument and co-located with
`conversations` is what Citus delegates whole: `SELECT append_message(…)` is one task on the worker
holding the tenant's shard group, and its statements run there locally (db/distribute.py). On plain
Postgres it is still one statement and one round trip; PL/pgSQL caches the plans of its statements.

Same semantics as the statement it replaces: nothing is written (NULL) when the conversation is
missing, not active, the idempotency key was seen, or expectedSeq is stale (the caller diagnoses
which); created_at is never earlier than the previous message's, so it follows seq order.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "9e4b7c2d1f60"
down_revision: str | None = "afe98dca5168"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION append_message(
    p_tenant_id text, p_conversation_id uuid, p_session_id text, p_client_message_id text, p_id uuid,
    p_role text, p_content text, p_name text, p_token_count integer, p_tool_call_id text, p_tool_calls jsonb,
    p_metadata jsonb, p_execution jsonb, p_expected_seq integer, p_sources jsonb
) RETURNS TABLE (
    -- the message, then the conversation header after the bump: the columns of the statement it replaces
    tenant_id text, conversation_id uuid, seq integer, id uuid, client_message_id text, role text, content text,
    name text, tool_call_id text, tool_calls jsonb, token_count integer, metadata jsonb, execution jsonb,
    created_at timestamptz, session_id text, user_id text, agent_id text, channel text, title text, status text,
    tags text[], conversation_metadata jsonb, conversation_created_at timestamptz, updated_at timestamptz,
    last_message_at timestamptz, last_activity_at timestamptz, closed_at timestamptz, close_reason text,
    message_count integer, conversation_token_count bigint, last_seq integer
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    target uuid := p_conversation_id;
    c conversations;
    m messages;
    s record;
BEGIN
    IF target IS NULL THEN
        SELECT id INTO target FROM conversations WHERE tenant_id = p_tenant_id AND session_id = p_session_id;
        IF target IS NULL THEN
            RETURN;
        END IF;
    END IF;
    IF p_client_message_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM messages
        WHERE tenant_id = p_tenant_id AND conversation_id = target AND client_message_id = p_client_message_id
    ) THEN
        RETURN;
    END IF;
    UPDATE conversations
    SET last_seq = last_seq + 1,
        message_count = message_count + 1,
        token_count = token_count + p_token_count,
        last_message_at = GREATEST(statement_timestamp(), last_message_at),
        last_activity_at = GREATEST(statement_timestamp(), last_message_at),
        updated_at = statement_timestamp()
    WHERE tenant_id = p_tenant_id AND id = target AND status = 'active'
      AND (p_expected_seq IS NULL OR last_seq + 1 = p_expected_seq)
    RETURNING * INTO c;
    IF c.id IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO messages (tenant_id, conversation_id, seq, id, client_message_id, role, content, name,
                          tool_call_id, tool_calls, token_count, metadata, execution, created_at)
    VALUES (p_tenant_id, target, c.last_seq, COALESCE(p_id, gen_random_uuid()), p_client_message_id, p_role,
            p_content, p_name, p_tool_call_id, p_tool_calls, p_token_count, p_metadata, p_execution, c.last_message_at)
    RETURNING * INTO m;
    -- One VALUES insert per source, not INSERT … SELECT FROM jsonb_to_recordset(): when the call is not
    -- delegated (inside a transaction block) Citus would run that through the coordinator (COPY, 2PC).
    FOR s IN SELECT * FROM ROWS FROM (jsonb_to_recordset(p_sources) AS (document_id text, chunk_id text,
             title text, uri text, score float8, snippet text)) WITH ORDINALITY
             AS x(document_id, chunk_id, title, uri, score, snippet, position)
    LOOP
        INSERT INTO message_sources (tenant_id, conversation_id, seq, position, document_id, chunk_id, title,
                                     uri, score, snippet)
        VALUES (p_tenant_id, target, c.last_seq, s.position - 1, s.document_id, s.chunk_id, s.title, s.uri,
                s.score, s.snippet);
    END LOOP;
    RETURN QUERY SELECT
        m.tenant_id, m.conversation_id, m.seq, m.id, m.client_message_id, m.role, m.content, m.name,
        m.tool_call_id, m.tool_calls, m.token_count, m.metadata, m.execution, m.created_at,
        c.session_id, c.user_id, c.agent_id, c.channel, c.title, c.status, c.tags, c.metadata, c.created_at,
        c.updated_at, c.last_message_at, c.last_activity_at, c.closed_at, c.close_reason, c.message_count,
        c.token_count, c.last_seq;
END
$fn$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION append_message(text, uuid, text, text, uuid, text, text, text, integer, text, jsonb, jsonb, jsonb, integer, jsonb)"
    )
