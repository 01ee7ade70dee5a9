"""The schema, as SQLModel tables. Alembic migrations are generated from and
checked against this metadata; nothing else creates tables.

Every primary key and index leads with `tenant_id` so the data can be
distributed by tenant later (Citus) and so every lookup is tenant-scoped by
construction. The one exception is `api_keys.key_hash`: a key must be found
before its tenant is known (a reference table in Citus terms).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION
metadata = SQLModel.metadata

#: The default text-search configuration of message search. 'simple' does no stemming:
#: conversations here are multilingual and a wrong stemmer is worse than none. A tenant may choose
#: another (tenant setting `search_language`, db/repositories/text_search.py).
SEARCH_CONFIG = "simple"


def _ts(nullable: bool = False, default_now: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=sa.Column(
            sa.DateTime(timezone=True),
            nullable=nullable,
            server_default=sa.text("now()") if default_now else None,
        ),
    )


def _jsonb(nullable: bool = False, default: str | None = "'{}'::jsonb") -> Any:
    return Field(
        default=None,
        sa_column=sa.Column(pg.JSONB(), nullable=nullable, server_default=sa.text(default) if default else None),
    )


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    name: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    #: retention_days, idle_timeout_seconds, CRM webhook and lookup settings.
    settings: dict[str, Any] = _jsonb()
    created_at: datetime = _ts(default_now=True)
    #: When the admin API last changed the tenant's name or settings.
    updated_at: datetime = _ts(default_now=True)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    __table_args__ = (
        sa.UniqueConstraint("key_hash"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.tenant_id"], ondelete="CASCADE"),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    name: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    #: The first characters of the key, shown in listings so people can tell keys apart.
    prefix: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    #: sha256 of the whole key. Keys carry 192 random bits, so a slow hash buys nothing.
    key_hash: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    scopes: list[str] = Field(sa_column=sa.Column(pg.ARRAY(sa.Text()), nullable=False))
    created_at: datetime = _ts(default_now=True)
    revoked_at: datetime | None = _ts(nullable=True)
    #: Refused (UNAUTHENTICATED) from then on; null: never expires.
    expires_at: datetime | None = _ts(nullable=True)
    #: Written at most once a minute per key (app/auth.py), never per request.
    last_used_at: datetime | None = _ts(nullable=True)


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"
    __table_args__ = (
        sa.UniqueConstraint("tenant_id", "session_id"),
        sa.CheckConstraint("status IN ('active', 'closed', 'archived')", name="status"),
        sa.Index(None, "tenant_id", "last_activity_at", "id"),
        sa.Index(None, "tenant_id", "created_at", "id"),
        sa.Index(None, "tenant_id", "user_id"),
        sa.Index(None, "tenant_id", "agent_id"),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    session_id: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    user_id: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    agent_id: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    channel: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    title: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    status: str = Field(sa_column=sa.Column(sa.Text(), nullable=False, server_default=sa.text("'active'")))
    tags: list[str] = Field(sa_column=sa.Column(pg.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'")))
    metadata_: dict[str, Any] = Field(
        sa_column=sa.Column("metadata", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    created_at: datetime = _ts(default_now=True)
    updated_at: datetime = _ts(default_now=True)
    last_message_at: datetime | None = _ts(nullable=True)
    #: last_message_at, or created_at before the first message: the list order.
    last_activity_at: datetime = _ts(default_now=True)
    closed_at: datetime | None = _ts(nullable=True)
    close_reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    message_count: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False, server_default=sa.text("0")))
    token_count: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    last_seq: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False, server_default=sa.text("0")))


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("role IN ('system', 'user', 'assistant', 'tool')", name="role"),
        sa.Index(
            "uq_messages_client_message_id",
            "tenant_id",
            "conversation_id",
            "client_message_id",
            unique=True,
            postgresql_where=sa.text("client_message_id IS NOT NULL"),
        ),
        sa.Index(None, "tenant_id", "conversation_id", "created_at"),
        sa.Index(None, "tenant_id", "created_at"),
        # Finding a conversation's pinned system prompt (context windows) without scanning it.
        sa.Index(
            "ix_messages_system",
            "tenant_id",
            "conversation_id",
            "seq",
            postgresql_where=sa.text("role = 'system'"),
        ),
        # A small pending list: every search probe scans all of it (migration ac43885c0bbd).
        sa.Index(
            "ix_messages_search",
            "tenant_id",
            sa.text("to_tsvector(search_config, content)"),
            postgresql_using="gin",
            postgresql_with={"fastupdate": "on", "gin_pending_list_limit": 256},
        ),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    conversation_id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    seq: int = Field(sa_column=sa.Column(sa.Integer(), primary_key=True))
    id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), nullable=False))
    client_message_id: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    role: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    content: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    name: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    tool_call_id: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    tool_calls: Any = _jsonb(nullable=True, default=None)
    token_count: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    metadata_: dict[str, Any] = Field(
        sa_column=sa.Column("metadata", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    execution: Any = _jsonb(nullable=True, default=None)
    created_at: datetime = _ts(default_now=True)
    #: The text-search configuration the message is indexed with: its tenant's `search_language` when
    #: it was written (an INSERT that leaves it out gets it from a trigger; migration afe98dca5168).
    search_config: str = Field(sa_column=sa.Column(pg.REGCONFIG(), nullable=False))


class MessageSource(SQLModel, table=True):
    __tablename__ = "message_sources"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id", "seq"],
            ["messages.tenant_id", "messages.conversation_id", "messages.seq"],
            ondelete="CASCADE",
        ),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    conversation_id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    seq: int = Field(sa_column=sa.Column(sa.Integer(), primary_key=True))
    position: int = Field(sa_column=sa.Column(sa.SmallInteger(), primary_key=True))
    document_id: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    chunk_id: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    title: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    uri: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    score: float | None = Field(default=None, sa_column=sa.Column(sa.Float(), nullable=True))
    snippet: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))


class ConversationState(SQLModel, table=True):
    __tablename__ = "conversation_state"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            ondelete="CASCADE",
        ),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    conversation_id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    key: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    value: Any = _jsonb(default=None)
    version: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    updated_at: datetime = _ts(default_now=True)
    #: A deleted key is a tombstone (value null, hidden from reads) that keeps its version, so a
    #: key re-created later continues from it: versions never go back (no ABA across deletes).
    deleted: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean(), nullable=False, server_default=sa.text("false"))
    )


# --------------------------------------------------------------------------------------------------
# Jobs (docs/jobs.md): the CRM outbox, the action log, and the indexes the crons scan.
# --------------------------------------------------------------------------------------------------


class CrmOutbox(SQLModel, table=True):
    """One CRM delivery: written in the transaction that closes the conversation (or by syncCrm),
    delivered by a job until the CRM accepts it or the tenant's attempts run out."""

    __tablename__ = "crm_outbox"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        sa.CheckConstraint("trigger IN ('closed', 'manual')", name="trigger"),
        sa.Index(None, "tenant_id", "conversation_id", "created_at"),
        #: Only pending rows: the sweep reads this small index across tenants.
        sa.Index("ix_crm_outbox_due", "tenant_id", "next_attempt_at", postgresql_where=sa.text("status = 'pending'")),
        #: Only unsettled rows: the worker's metrics sample counts these, never the delivered ones.
        sa.Index(
            "ix_crm_outbox_unsettled", "tenant_id", "created_at", postgresql_where=sa.text("status <> 'delivered'")
        ),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    conversation_id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), nullable=False))
    #: 'closed' (the conversation closed) or 'manual' (syncCrm).
    trigger: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.Text(), nullable=False, server_default=sa.text("'pending'")))
    attempts: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False, server_default=sa.text("0")))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    next_attempt_at: datetime = _ts(default_now=True)
    #: Set while a job is sending; a crashed sender's claim expires and the sweep sends again.
    locked_until: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(default_now=True)
    updated_at: datetime = _ts(default_now=True)
    delivered_at: datetime | None = _ts(nullable=True)


class ActionLog(SQLModel, table=True):
    """The answer of every domain action that wrote something, by action_id: a repeated action
    answers like the first instead of acting twice. Pruned after ACTION_LOG_RETENTION_DAYS."""

    __tablename__ = "action_log"
    __table_args__ = (sa.Index(None, "tenant_id", "created_at"),)

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    action_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    action_type: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    #: sha256 of the canonical payload: the same action_id with another payload is refused.
    payload_hash: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    #: NULL for actions that answer from their own rows (save_message: the message).
    response: Any = _jsonb(nullable=True, default=None)
    created_at: datetime = _ts(default_now=True)


_conversations = Conversation.__table__  # type: ignore[attr-defined]
#: Idle-close scans active conversations by last activity; retention scans closed ones by closed_at.
sa.Index(
    "ix_conversations_idle",
    _conversations.c.tenant_id,
    _conversations.c.last_activity_at,
    postgresql_where=sa.text("status = 'active'"),
)
sa.Index(
    "ix_conversations_closed_at",
    _conversations.c.tenant_id,
    _conversations.c.closed_at,
    postgresql_where=sa.text("closed_at IS NOT NULL"),
)


class AuditEntry(SQLModel, table=True):
    """Who changed what in a tenant: admin changes and deletions. Names and counts only, never
    message content or secrets. Kept for ever (erasure must stay provable)."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_tenant_at", "tenant_id", "at", "id"),)

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    at: datetime = _ts(default_now=True)
    #: An API key id, or 'cli', 'trusted', 'system'.
    actor: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    action: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    details: Any = _jsonb(nullable=True, default=None)


class ConversationSummaryState(SQLModel, table=True):
    """The summarizer's bookkeeping per conversation (`Conversation.summaryInfo`). The summary's
    text and range live in the `summary` state key, which the context window reads; this row
    holds what a reader cannot see there: status, model, the last error, attempts, the lease."""

    __tablename__ = "conversation_summaries"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"],
            ["conversations.tenant_id", "conversations.id"],
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("status IN ('none', 'pending', 'ready', 'failed')", name="status"),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    conversation_id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    status: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    #: The last summary written by the summarizer covers seq 1..up_to_seq (0: none yet).
    up_to_seq: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False, server_default=sa.text("0")))
    #: The conversation's token_count up to up_to_seq: unsummarized tokens = token_count - this.
    covered_tokens: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    token_count: int | None = Field(default=None, sa_column=sa.Column(sa.Integer(), nullable=True))
    model: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    #: Failed attempts since the last success (the retry backoff's exponent).
    attempts: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False, server_default=sa.text("0")))
    #: Set while a job summarizes: one summarization per conversation at a time; a crashed job's expires.
    locked_until: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts(default_now=True)


class DeadLetter(SQLModel, table=True):
    """A tenant's failed action, listable and replayable through the admin API. Only envelopes
    whose tenant exists are kept here; the Redis list keeps every dead letter, tenant or not."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        sa.Index("ix_dead_letters_tenant_failed", "tenant_id", "failed_at", "id"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.tenant_id"], ondelete="CASCADE"),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    #: uuid5 of the job id and kind: a retried answer never records twice.
    id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    kind: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    action_type: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    action_id: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    correlation_id: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    error: Any = _jsonb(nullable=True, default=None)
    envelope: Any = _jsonb(nullable=True, default=None)
    failed_at: datetime = _ts(default_now=True)
    replayed_at: datetime | None = _ts(nullable=True)


class StatsDaily(SQLModel, table=True):
    """Daily rollups for stats (issue 11), kept by statement triggers on messages and conversations
    (migration 3b7d9e1f6a24). Message facts have role set and status ''; conversation facts (by the
    conversation's creation day) have status set and role ''. 16 shards per key spread concurrent writes."""

    __tablename__ = "stats_daily"

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    day: date = Field(sa_column=sa.Column(sa.Date(), primary_key=True))
    agent_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    role: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    status: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    shard: int = Field(sa_column=sa.Column(sa.SmallInteger(), primary_key=True))
    conversations: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    conversation_messages: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    closed: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    duration_seconds: float = Field(sa_column=sa.Column(sa.Float(), nullable=False))
    messages: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    tokens: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))


class VectorType(sa.types.UserDefinedType[Any]):
    """pgvector's `vector` (any length: the length is the embedder's, see message_embeddings)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "vector"


class MessageEmbedding(SQLModel, table=True):
    """A message's vector for SEMANTIC/HYBRID search (issue 14.2), written by the worker after commit.
    `model` names the embedder that made it (a new model re-embeds; search reads its own model's only).
    The column holds any length; the HNSW index (cosine) is a partial expression index per length,
    made by migration 9e4b1c7a2f60 for 256 and by `embed-backfill` for other lengths. No foreign key: the deletion path deletes
    these rows explicitly, and Citus refuses a new table's inline key to a distributed one."""

    __tablename__ = "message_embeddings"
    __table_args__ = (
        # The one index not led by tenant_id: a graph index cannot be; the tenant filter is applied
        # during the scan (pgvector's iterative scans, see db/repositories/embeddings.py).
        sa.Index(
            "ix_message_embeddings_hnsw_256",
            sa.literal_column("((embedding)::vector(256))").label("embedding_256"),
            postgresql_using="hnsw",
            postgresql_ops={"embedding_256": "vector_cosine_ops"},
            postgresql_where=sa.text("dims = 256"),
        ),
    )

    tenant_id: str = Field(sa_column=sa.Column(sa.Text(), primary_key=True))
    conversation_id: uuid.UUID = Field(sa_column=sa.Column(pg.UUID(as_uuid=True), primary_key=True))
    seq: int = Field(sa_column=sa.Column(sa.Integer(), primary_key=True))
    model: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    dims: int = Field(sa_column=sa.Column(sa.SmallInteger(), nullable=False))
    embedding: Any = Field(sa_column=sa.Column(VectorType(), nullable=False))
    embedded_at: datetime = _ts(default_now=True)


# Reflection (the drift test, autogenerate) then knows the column's type.
pg.base.ischema_names["vector"] = VectorType
