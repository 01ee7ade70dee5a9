"""A tenant's text-search configuration (its `search_language` setting) and the match expression.

Messages are indexed with `to_tsvector(search_config, content)` (migration afe98dca5168): the
configuration is a column of the message, so one GIN index serves every language. A query is
parsed with the tenant's configuration of today; the configuration is inlined as a literal (it is
one of SUPPORTED, never client text) so the planner sees a constant tsquery and can estimate it."""

from __future__ import annotations

import uuid

from db.session import Connection, on_citus

#: What a tenant without the setting gets (and what every message had before the setting existed).
SEARCH_CONFIG = "simple"

#: The configurations a tenant may choose (all built into Postgres).
SUPPORTED = ("simple", "english", "spanish", "german", "french", "portuguese", "italian")

#: The tenant's configuration inside a statement (one primary-key lookup per statement); what an
#: INSERT puts in `messages.search_config`. $1 is the tenant.
TENANT_CONFIG = (
    "coalesce((SELECT (settings->>'search_language')::regconfig FROM tenants WHERE tenant_id = $1), "
    f"'{SEARCH_CONFIG}'::regconfig)"
)


def literal(config: str) -> str:
    if config not in SUPPORTED:  # a guard: the value is inlined into SQL
        raise ValueError(f"unsupported text-search configuration {config!r}")
    return f"'{config}'::regconfig"


def tsquery(config: str, param: str) -> str:
    return f"websearch_to_tsquery({literal(config)}, {param})"


def match(config: str, param: str, alias: str = "m") -> str:
    """The indexed expression (ix_messages_search) against the query: the GIN index applies."""
    return f"to_tsvector({alias}.search_config, {alias}.content) @@ {tsquery(config, param)}"


async def tenant_config(conn: Connection, tenant_id: str) -> str:
    value = await conn.fetchval("SELECT settings->>'search_language' FROM tenants WHERE tenant_id = $1", tenant_id)
    return value if value in SUPPORTED else SEARCH_CONFIG


async def tenant_message_count(conn: Connection, tenant_id: str) -> int:
    value = await conn.fetchval(
        "SELECT coalesce(sum(message_count), 0) FROM conversations WHERE tenant_id = $1", tenant_id
    )
    return int(value)


async def reindex_batch(
    conn: Connection, tenant_id: str, after: tuple[uuid.UUID, int] | None, limit: int
) -> tuple[int, int, tuple[uuid.UUID, int] | None]:
    """The next `limit` messages in primary-key order after `after` get the tenant's configuration of
    now; (messages passed, messages changed, the last key or None at the end)."""
    lo_conversation, lo_seq = after if after is not None else (uuid.UUID(int=0), -1)
    # On Citus the configuration is a parameter read first: the `tenants` subquery (a reference table)
    # makes Citus split the statement into subplans (intermediate results, two-phase commit).
    config = [await tenant_config(conn, tenant_id)] if on_citus() else []
    expression = "$5::regconfig" if config else TENANT_CONFIG
    row = await conn.fetchrow(
        f"""
        WITH batch AS MATERIALIZED (
            SELECT conversation_id, seq FROM messages
            WHERE tenant_id = $1 AND (conversation_id, seq) > ($2, $3)
            ORDER BY conversation_id, seq LIMIT $4
        ), changed AS (
            UPDATE messages m SET search_config = {expression}
            FROM batch b
            WHERE m.tenant_id = $1 AND m.conversation_id = b.conversation_id AND m.seq = b.seq
              AND m.search_config <> {expression}
            RETURNING 1
        ), last AS (
            SELECT conversation_id, seq FROM batch ORDER BY conversation_id DESC, seq DESC LIMIT 1
        )
        SELECT (SELECT count(*) FROM batch) AS passed, (SELECT count(*) FROM changed) AS changed,
               (SELECT conversation_id FROM last) AS conversation_id, (SELECT seq FROM last) AS seq
        """,
        tenant_id,
        lo_conversation,
        lo_seq,
        limit,
        *config,
    )
    assert row is not None
    passed = int(row["passed"])
    last = (row["conversation_id"], int(row["seq"])) if passed == limit else None
    return passed, int(row["changed"]), last
