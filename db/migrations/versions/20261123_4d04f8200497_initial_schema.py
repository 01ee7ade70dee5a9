"""initial schema

Revision ID: 4d04f8200497
Revises:
Create Date: 2026-11-23 14:31:04.012684
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "4d04f8200497"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # btree_gin lets the full-text GIN index lead with tenant_id (trusted extension since PG 13).
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.create_table(
        "conversations",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("agent_id", sa.Text(), nullable=True),
        sa.Column("channel", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default=sa.text("'active'"), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.Column("message_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("token_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("status IN ('active', 'closed', 'archived')", name=op.f("ck_conversations_status")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_conversations")),
        sa.UniqueConstraint("tenant_id", "session_id", name=op.f("uq_conversations_tenant_id_session_id")),
    )
    op.create_index(
        op.f("ix_conversations_tenant_id_agent_id"), "conversations", ["tenant_id", "agent_id"], unique=False
    )
    op.create_index(
        op.f("ix_conversations_tenant_id_created_at_id"),
        "conversations",
        ["tenant_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_conversations_tenant_id_last_activity_at_id"),
        "conversations",
        ["tenant_id", "last_activity_at", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_conversations_tenant_id_user_id"), "conversations", ["tenant_id", "user_id"], unique=False)
    op.create_table(
        "tenants",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column(
            "settings", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenants")),
    )
    op.create_table(
        "api_keys",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.tenant_id"], name=op.f("fk_api_keys_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "conversation_state",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            name=op.f("fk_conversation_state_tenant_id_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "conversation_id", "key", name=op.f("pk_conversation_state")),
    )
    op.create_table(
        "messages",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("client_message_id", sa.Text(), nullable=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("tool_call_id", sa.Text(), nullable=True),
        sa.Column("tool_calls", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("execution", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("role IN ('system', 'user', 'assistant', 'tool')", name=op.f("ck_messages_role")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            name=op.f("fk_messages_tenant_id_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "conversation_id", "seq", name=op.f("pk_messages")),
    )
    op.create_index(
        "ix_messages_search",
        "messages",
        ["tenant_id", sa.literal_column("to_tsvector('simple'::regconfig, content)")],
        unique=False,
        postgresql_using="gin",
    )
    op.create_index(
        op.f("ix_messages_tenant_id_conversation_id_created_at"),
        "messages",
        ["tenant_id", "conversation_id", "created_at"],
        unique=False,
    )
    op.create_index(op.f("ix_messages_tenant_id_created_at"), "messages", ["tenant_id", "created_at"], unique=False)
    op.create_index(
        "uq_messages_client_message_id",
        "messages",
        ["tenant_id", "conversation_id", "client_message_id"],
        unique=True,
        postgresql_where=sa.text("client_message_id IS NOT NULL"),
    )
    op.create_table(
        "message_sources",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("document_id", sa.Text(), nullable=False),
        sa.Column("chunk_id", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("uri", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("snippet", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id", "seq"],
            ["messages.tenant_id", "messages.conversation_id", "messages.seq"],
            name=op.f("fk_message_sources_tenant_id_conversation_id_seq_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "conversation_id", "seq", "position", name=op.f("pk_message_sources")),
    )


def downgrade() -> None:
    op.drop_table("message_sources")
    op.drop_index(
        "uq_messages_client_message_id",
        table_name="messages",
        postgresql_where=sa.text("client_message_id IS NOT NULL"),
    )
    op.drop_index(op.f("ix_messages_tenant_id_created_at"), table_name="messages")
    op.drop_index(op.f("ix_messages_tenant_id_conversation_id_created_at"), table_name="messages")
    op.drop_index("ix_messages_search", table_name="messages", postgresql_using="gin")
    op.drop_table("messages")
    op.drop_table("conversation_state")
    op.drop_table("api_keys")
    op.drop_table("tenants")
    op.drop_index(op.f("ix_conversations_tenant_id_user_id"), table_name="conversations")
    op.drop_index(op.f("ix_conversations_tenant_id_last_activity_at_id"), table_name="conversations")
    op.drop_index(op.f("ix_conversations_tenant_id_created_at_id"), table_name="conversations")
    op.drop_index(op.f("ix_conversations_tenant_id_agent_id"), table_name="conversations")
    op.drop_table("conversations")
