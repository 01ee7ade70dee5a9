"""message embeddings: pgvector, one vector per message and model, HNSW (cosine) for the default 256-d

Revision ID: 9e4b1c7a2f60
Revises: 3b7d9e1f6a24
Create Date: 2026-11-30 15:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "9e4b1c7a2f60"
down_revision: str | None = "3b7d9e1f6a24"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    # No foreign key to conversations: on Citus this migration may run after distribution, when a
    # new local table cannot reference a distributed one (docs/scaling.md); the deletion path
    # removes these rows explicitly (db/repositories/deletion.py).
    op.execute(
        """
        CREATE TABLE message_embeddings (
            tenant_id text NOT NULL,
            conversation_id uuid NOT NULL,
            seq integer NOT NULL,
            model text NOT NULL,
            dims smallint NOT NULL,
            embedding vector NOT NULL,
            embedded_at timestamp with time zone DEFAULT now() NOT NULL,
            CONSTRAINT pk_message_embeddings PRIMARY KEY (tenant_id, conversation_id, seq)
        )
        """
    )
    # HNSW over the typed expression, partial per vector length (the column takes any length).
    # Searches say `dims = 256` and order by `embedding::vector(256) <=> …` to use it.
    op.execute(
        "CREATE INDEX ix_message_embeddings_hnsw_256 ON message_embeddings "
        "USING hnsw ((embedding::vector(256)) vector_cosine_ops) WHERE dims = 256"
    )
    # Filtered k-NN (one tenant among many, a conversation filter) must still find `first` rows:
    # pgvector 0.8's iterative scans keep walking the graph until enough rows pass the filter.
    # Set on the database so every connection (and Citus's shard queries) has it; a role without
    # the right to alter the database leaves it as it was (searches then return fewer far hits).
    op.execute(
        """
        DO $$ BEGIN
            EXECUTE format('ALTER DATABASE %I SET hnsw.iterative_scan = relaxed_order', current_database());
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'hnsw.iterative_scan not set on the database: %', SQLERRM;
        END $$
        """
    )


def downgrade() -> None:
    op.drop_table("message_embeddings")
