"""The schema is made only by migrations, and they match the models."""

from __future__ import annotations

import re
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from db.migrate import alembic_config
from db.session import sqlalchemy_url
from db.tables import metadata
from tests.conftest import Servers

#: Vector indexes for other embedding sizes are made at run time, one per size an endpoint
#: embedder answers with (app/services/embeddings.py), not by migrations.
_RUNTIME_INDEX = re.compile(r"ix_message_embeddings_hnsw_\d+")
_MIGRATED_INDEXES = {index.name for table in metadata.sorted_tables for index in table.indexes}


def _made_by_migrations(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return not (
        type_ == "index" and reflected and name not in _MIGRATED_INDEXES and _RUNTIME_INDEX.fullmatch(name or "")
    )


async def test_models_and_migrations_do_not_drift(servers: Servers) -> None:
    engine = create_async_engine(sqlalchemy_url(servers.database_url))
    try:
        async with engine.connect() as conn:

            def diff(sync_conn: Any) -> list[Any]:
                ctx = MigrationContext.configure(
                    sync_conn, opts={"compare_type": True, "include_object": _made_by_migrations}
                )
                return list(compare_metadata(ctx, metadata))

            changes = await conn.run_sync(diff)
            head = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()
    assert changes == [], f"models and migrations differ; add a migration: {changes}"
    assert head == ScriptDirectory.from_config(alembic_config(servers.database_url)).get_current_head()


async def test_every_primary_key_and_index_leads_with_tenant_id() -> None:
    for table in metadata.sorted_tables:
        assert table.primary_key.columns.values()[0].name == "tenant_id", table.name
        for index in table.indexes:
            if index.dialect_options["postgresql"]["using"] == "hnsw":
                continue  # a vector graph index cannot lead with a column (db/tables.py MessageEmbedding)
            first = next(iter(index.expressions))
            assert getattr(first, "name", None) == "tenant_id", (table.name, index.name)
        for constraint in table.constraints:
            cols = getattr(constraint, "columns", None)
            if cols is not None and constraint.__class__.__name__ == "UniqueConstraint":
                if table.name == "api_keys":
                    continue  # a key is looked up before its tenant is known (see db/tables.py)
                assert cols.values()[0].name == "tenant_id", (table.name, constraint.name)
