"""The stats_daily rollup triggers (migration 3b7d9e1f6a24) on Citus: they fire on the shards.

Citus refuses to distribute a table that has triggers unless ``citus.enable_unsafe_triggers`` is on;
with it, each trigger is created on every shard of the table, so it fires on the worker that holds
the rows, inside the statement's own (single-shard) transaction. Its function then must not run a
distributed query from there (Citus forbids nested distributed execution, and it would leave the
shard group): it has to name the co-located *shards* of ``stats_daily``, ``conversations`` and
``messages`` itself. ``rewrite_for_shards`` replaces each rollup trigger function, after
``distribute()``, by one that looks those shard names up from the tenant of the rows at hand (all
rows of one shard-level statement live in one shard group) and runs the same upsert with
``EXECUTE``. Same facts, same arithmetic: only the table names differ. Plain Postgres keeps the
static functions (plan cached, no lookup); this runs only on a database with the ``citus`` extension.
"""

from __future__ import annotations

import re

import asyncpg

#: The shard-aware rollup functions: which rows give the tenant, and the OLD/NEW the body needs.
_ROLLUP_FUNCTIONS = """
SELECT p.proname AS name, p.prosrc AS body FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public' AND p.proname LIKE 'stats\\_daily\\_%' AND p.prorettype = 'trigger'::regtype
"""

_BODY = re.compile(r"^\s*BEGIN\s+(?P<sql>.*?);\s*RETURN\s+(?P<ret>\w+);\s*END\s*$", re.DOTALL)
# Already rewritten (idempotent migrate): the dynamic version has a DECLARE block.
_SHARD_NAME = "shard_name('{table}'::regclass, get_shard_id_for_distribution_column('{table}', t))"


def _tenant_source(name: str, sql: str) -> str:
    """Where the function finds the tenant of the rows it rolls up."""
    if "OLD." in sql:
        return "OLD.tenant_id"
    if "new_rows" in sql:
        return "(SELECT tenant_id FROM new_rows LIMIT 1)"
    return "(SELECT tenant_id FROM old_rows LIMIT 1)"


def shard_local_function(name: str, body: str) -> str | None:
    """The CREATE OR REPLACE of one rollup function reading its co-located shards; None if not ours."""
    match = _BODY.match(body)
    if match is None:
        return None
    sql, ret = match.group("sql"), match.group("ret")
    dynamic = sql.replace("%", "%%")
    for table, slot in (("stats_daily", 1), ("conversations", 2), ("messages", 3)):
        dynamic = re.sub(rf"\b(INTO|JOIN|FROM) {table}\b", rf"\1 %{slot}$s", dynamic)
    # EXECUTE does not see the OLD/NEW variables: they are passed as $1/$2.
    row_level = "OLD." in sql or "NEW." in sql
    dynamic = dynamic.replace("OLD.", "($1).").replace("NEW.", "($2).")
    using = " USING OLD, NEW" if row_level else ""
    names = ", ".join(_SHARD_NAME.format(table=t) for t in ("stats_daily", "conversations", "messages"))
    return f"""
CREATE OR REPLACE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE t text;
BEGIN
    t := {_tenant_source(name, sql)};
    IF t IS NOT NULL THEN
        EXECUTE format($q${dynamic}$q$, {names}){using};
    END IF;
    RETURN {ret};
END $fn$
"""


async def rewrite_for_shards(conn: asyncpg.Connection) -> list[str]:
    """Make the rollup trigger functions shard-local (Citus only); returns the functions rewritten."""
    rewritten: list[str] = []
    for row in await conn.fetch(_ROLLUP_FUNCTIONS):
        statement = shard_local_function(row["name"], row["body"])
        if statement is None:  # already shard-local (DECLARE …): migrate is idempotent
            continue
        await conn.execute(statement)
        rewritten.append(row["name"])
    return rewritten
