"""The append and the history page on Citus without Citus re-planning them: per-shard-group static
functions behind a dispatcher (Citus only).

Why: ``append_message()`` (migration 9e4b7c2d1f60) is delegated whole to the worker of the tenant's
shard group, but each statement inside it still goes through Citus' planner there (deparsed, parsed
and planned again on every call: its local plan cache does not hold in 14.0.1 on Postgres 18), and
the messages insert fires the shard rollup trigger, whose dynamic ``EXECUTE`` is planned at every
firing (db/citus_triggers.py). Measured on a worker: ~0.5 ms of real work, ~0.7-0.9 ms of Citus
planning, ~0.6-0.9 ms of trigger planning per append (docs/scaling.md, "Where the time goes").

What this builds, after ``distribute()``:

- ``append_message_routed(…)``: the migration's body unchanged (every statement Citus-routed): the
  fallback, correct wherever it runs;
- ``append_message_s<shard id>(…)`` for every shard group (named by the ``conversations`` shard):
  the same body on that group's shard tables, so PL/pgSQL caches its plans for the session, plus
  the stats_daily rollup of the one message as a static upsert on the group's ``stats_daily`` shard,
  with the marker of db/repositories/append_rollup.py set so the shard trigger skips that statement
  (as on plain Postgres). Created on the coordinator, Citus propagates them to every node (and to a
  node added later): a shard move changes where a group lives, never its shard names;
- ``append_message()`` itself becomes a dispatcher (still delegated by tenant).

``history_page()`` (migration 1fd9a71b989d) gets the same three, without a rollup: its two statements
were re-planned by Citus too (~0.3 ms of the ~0.65 ms a read costs the worker). Its dispatcher is
VOLATILE (the function was STABLE): a STABLE function reads with its caller's snapshot, and the
placement check must see the metadata as of after the lock.

Why the shard-direct path is safe during a shard move: a move's final switch blocks writes with
``ExclusiveLock`` on the shard-metadata lock of every shard of the group, on every node
(``BlockWritesToShardList``); a Citus-routed write takes ``ShareLock`` on its anchor shard's one
(``AcquireMetadataLocks``). On the node holding the group only (no lock elsewhere), the dispatcher
takes that same ``ShareLock`` itself (``lock_shard_metadata(5, …)``, the UDF Citus uses to take it
remotely), then checks again, with a fresh snapshot, that the group's placement is still on this
node: a call routed here just before a switch
either holds the lock first (the switch waits for its commit; logical replication carries the
write) or sees the placement gone and takes the routed fallback. It also falls back outside READ
COMMITTED (a transaction snapshot could show stale placements), for a role that does not own the
tables (the UDF checks ownership) and when the group has no function
(a split's new shards until ``migrate`` runs again: docs/scaling.md, runbook). Reads take the lock
too, so a page read as a move switches cannot run on the old shard and miss a message already
written on the new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from db.repositories import append_rollup

#: Marks a dispatcher's body: rebuild everything when a migration replaced the function again.
DISPATCHER_TAG = "-- shard dispatcher (db/citus_shard_functions.py)"


@dataclass(frozen=True)
class Spec:
    """One function made shard-local: its parameters (in order) and the tables its body names."""

    name: str
    params: tuple[str, ...]
    tables: tuple[str, ...]

    @property
    def prefix(self) -> str:
        return f"{self.name}_s"

    @property
    def routed(self) -> str:
        return f"{self.name}_routed"


APPEND = Spec(
    "append_message",
    (
        "p_tenant_id", "p_conversation_id", "p_session_id", "p_client_message_id", "p_id", "p_role", "p_content",
        "p_name", "p_token_count", "p_tool_call_id", "p_tool_calls", "p_metadata", "p_execution",
        "p_expected_seq", "p_sources",
    ),
    ("conversations", "messages", "message_sources", "stats_daily"),
)  # fmt: skip
PAGE = Spec(
    "history_page",
    ("p_tenant_id", "p_conversation_id", "p_session_id", "p_forward", "p_lower", "p_upper_cap", "p_size"),
    ("conversations", "messages"),
)
SPECS = (APPEND, PAGE)

_FUNCTION_OID = "SELECT to_regproc($1)::oid"
_DEFINITION = "SELECT pg_get_functiondef($1::oid) AS def, prosrc AS body FROM pg_proc WHERE oid = $1::oid"
_EXISTING = "SELECT proname FROM pg_proc WHERE starts_with(proname, $1)"
# Every shard group with the shard names of the tables a body names (co-located: same ranges).
_GROUPS = """
SELECT a.shardid AS anchor, array_agg(t.logicalrelid::regclass::text ORDER BY t.logicalrelid) AS tables,
       array_agg(shard_name(t.logicalrelid, t.shardid) ORDER BY t.logicalrelid) AS shards
FROM pg_dist_shard a
JOIN pg_dist_shard t ON t.shardminvalue = a.shardminvalue AND t.shardmaxvalue = a.shardmaxvalue
WHERE a.logicalrelid = 'conversations'::regclass AND t.logicalrelid = ANY($1::regclass[])
GROUP BY a.shardid ORDER BY a.shardid
"""

_MARK = f"PERFORM set_config('{append_rollup.MARKER}', statement_timestamp()::text, true);\n    "

# The append's two facts (db/repositories/append_rollup.py) for the one message `m` of conversation
# `c` after its bump, upserted into the group's stats_daily shard.
_ROLLUP = (
    "\n    "
    + append_rollup.upsert(
        "{stats_daily}", tenant="p_tenant_id", conversation="target", message="m", header="c", source="FROM"
    )
    + ";"
)


def dispatcher_body(spec: Spec) -> str:
    params = ", ".join(spec.params)
    args = ", ".join(f"${i}" for i in range(1, len(spec.params) + 1))
    return f"""
{DISPATCHER_TAG}
DECLARE
    sid bigint := get_shard_id_for_distribution_column('conversations', p_tenant_id);
BEGIN
    -- Not on a node without the group (the coordinator, in a transaction block): no lock held there;
    -- nor for a role that does not own the tables (lock_shard_metadata would refuse it).
    IF current_setting('transaction_isolation') = 'read committed'
       AND EXISTS (SELECT 1 FROM pg_dist_placement p JOIN pg_dist_local_group g ON g.groupid = p.groupid
                   JOIN pg_class c ON c.oid = 'public.conversations'::regclass
                   WHERE p.shardid = sid AND pg_has_role(c.relowner, 'USAGE'))
       AND to_regproc('public.{spec.prefix}' || sid) IS NOT NULL THEN
        -- The lock a Citus-routed write takes; a shard move's switch takes it exclusively.
        PERFORM lock_shard_metadata(5, ARRAY[sid]);
        -- Still here once the lock is ours (a fresh snapshot: a switch may have committed meanwhile)?
        IF EXISTS (SELECT 1 FROM pg_dist_placement p JOIN pg_dist_local_group g ON g.groupid = p.groupid
                   WHERE p.shardid = sid) THEN
            RETURN QUERY EXECUTE 'SELECT * FROM public.{spec.prefix}' || sid || '({args})' USING {params};
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM public.{spec.routed}({params});
END
"""


def _with_body(definition: str, spec: Spec, body: str, name: str, *, volatile: bool = False) -> str:
    """pg_get_functiondef's CREATE OR REPLACE with another name and body (same signature/columns)."""
    head = definition.split("$function$", 1)[0]
    head = head.replace(f"public.{spec.name}(", f"public.{name}(", 1)
    if volatile:
        head = re.sub(r"^ (STABLE|IMMUTABLE)$", " VOLATILE", head, flags=re.MULTILINE)
    return f"{head}$fn${body}$fn$"


def shard_body(spec: Spec, body: str, shards: dict[str, str]) -> str | None:
    """The routed body on one group's shard tables (the append with its rollup inline); None if not
    of the expected shape (then no fast path: the dispatcher keeps the routed body)."""
    if "{" in body or "#variable_conflict use_column" not in body:
        return None
    out = body
    if spec is APPEND:
        insert, returning = "INSERT INTO messages (", "RETURNING * INTO m;"
        if body.count(insert) != 1 or body.count(returning) != 1:
            return None
        out = out.replace(insert, _MARK + insert, 1)
        out = out.replace(returning, returning + _ROLLUP, 1)
    for table in spec.tables:
        out = re.sub(rf"\b(FROM|UPDATE|INTO|JOIN) {table}\b", rf"\1 {{{table}}}", out)
    return out.format(**shards)


async def _definition(conn: asyncpg.Connection, oid: int) -> tuple[str, str]:
    row = await conn.fetchrow(_DEFINITION, oid)
    assert row is not None  # the oid was just looked up by name
    return str(row["def"]), str(row["body"])


async def _build_one(conn: asyncpg.Connection, spec: Spec) -> list[str]:
    oid = await conn.fetchval(_FUNCTION_OID, f"public.{spec.name}")
    if oid is None:
        return []
    definition, body = await _definition(conn, oid)
    rebuild = DISPATCHER_TAG not in body
    refresh = not rebuild and body.strip() != dispatcher_body(spec).strip()  # an older dispatcher
    if not rebuild:
        routed_oid = await conn.fetchval(_FUNCTION_OID, f"public.{spec.routed}")
        if routed_oid is None:
            return []  # a dispatcher without its fallback: not ours to repair
        body = (await _definition(conn, routed_oid))[1]
    existing = {r["proname"] for r in await conn.fetch(_EXISTING, spec.prefix)}
    statements: list[str] = []
    created: list[str] = []
    if rebuild:
        # Dropped first: CREATE OR REPLACE cannot change the columns (a new Message field's migration).
        for old in sorted(existing | ({spec.routed} if await conn.fetchval(_FUNCTION_OID, spec.routed) else set())):
            statements.append(f"DROP FUNCTION IF EXISTS public.{old}")
        statements.append(_with_body(definition, spec, body, spec.routed))
        created.append(f"{spec.routed}()")
    for group in await conn.fetch(_GROUPS, list(spec.tables)):
        name = f"{spec.prefix}{group['anchor']}"
        shards = dict(zip(group["tables"], group["shards"], strict=True))
        if (name in existing and not rebuild) or set(shards) != set(spec.tables):
            continue
        shard_local = shard_body(spec, body, shards)
        if shard_local is None:
            return []  # a body of another shape: keep the routed one everywhere
        statements.append(_with_body(definition, spec, shard_local, name))
        created.append(f"{name}()")
    if rebuild or refresh:
        statements.append(_with_body(definition, spec, dispatcher_body(spec), spec.name, volatile=True))
        created.append(f"{spec.name}() (shard dispatcher)")
    # One transaction: Citus propagates the functions to every node with one commit.
    async with conn.transaction():
        for statement in statements:
            await conn.execute(statement)
    return created


async def build(conn: asyncpg.Connection) -> list[str]:
    """Create the routed copies, the per-group functions and the dispatchers; returns what it created.

    Idempotent: with a dispatcher in place it only adds the groups that have no function yet (after
    a split); when a migration replaced the function, it rebuilds everything from the new body.
    """
    created: list[str] = []
    for spec in SPECS:
        created.extend(await _build_one(conn, spec))
    return created
