"""The single append's stats_daily rollup, inside the append statement (plain Postgres only).

Every write path keeps `stats_daily` by construction through the statement triggers of migration
3b7d9e1f6a24. For the single append (the hottest write) that trigger costs a transition table, a
plpgsql call, a join back to the conversation and a grouped upsert; the same two facts upserted
by a CTE of the append statement, from the rows the statement already has (`ins`, `bump`), save
~30 µs of its ~100–150 µs (docs/benchmarks.md, "Stats rollups": the two-row upsert remains).

Exactly once, by construction:

- `MARK` sets `conversation_service.rolled_up` to this statement's `statement_timestamp()` and is
  joined into the `ins` CTE, so no message row can be inserted before the marker is set;
- the messages insert trigger's WHEN (migration 5c1d7e9a3b42) skips a statement whose timestamp
  equals the marker: only this statement, never a later one of the same transaction (each
  statement the client sends gets its own `statement_timestamp()`), so an addMessages or import
  after an append in one transaction is rolled up by the trigger as before;
- `ROLLUP` upserts the message fact (its day and role) and the conversation fact (+1
  conversation_messages on the conversation's creation day and status) exactly like the trigger
  body (`_MESSAGE_FACTS` there), in primary-key order so concurrent appends lock rows in one order.

The Citus append (the append_message() function) does not set the marker: there the trigger
fires on the shard as before.
"""

from __future__ import annotations

#: The setting the messages insert trigger's WHEN compares with `statement_timestamp()`.
MARKER = "conversation_service.rolled_up"

#: Joined into `ins` (`FROM bump b, mark`): set before the first message row exists.
MARK = f"mark AS (SELECT set_config('{MARKER}', statement_timestamp()::text, true) AS v),\n"


def upsert(table: str, *, tenant: str, conversation: str, message: str, header: str, source: str) -> str:
    """The trigger body's two facts for one message (same shard, agent and day rules), as one upsert.

    `message` and `header` name the message row and its conversation after the bump (rows of the
    statement, or PL/pgSQL records); `source` is what comes before the VALUES list. The Citus
    per-shard-group append (db/citus_shard_functions.py) uses it too, on its group's shard.
    """
    return f"""INSERT INTO {table} AS s (tenant_id, day, agent_id, role, status, shard, conversations,
                                  conversation_messages, closed, duration_seconds, messages, tokens)
    SELECT {tenant}, v.day, coalesce({header}.agent_id, ''), v.role, v.status,
           abs(hashtext({conversation}::text)) % 16, 0, v.conversation_messages, 0, 0.0::float8,
           v.messages, v.tokens
    {source} (VALUES
        (({message}.created_at AT TIME ZONE 'UTC')::date, {message}.role, '', 0, 1, {message}.token_count::bigint),
        (({header}.created_at AT TIME ZONE 'UTC')::date, '', {header}.status, 1, 0, 0::bigint)
    ) AS v(day, role, status, conversation_messages, messages, tokens)
    ORDER BY v.day, v.role, v.status
    ON CONFLICT (tenant_id, day, agent_id, role, status, shard) DO UPDATE SET
        conversation_messages = s.conversation_messages + excluded.conversation_messages,
        messages = s.messages + excluded.messages,
        tokens = s.tokens + excluded.tokens"""


#: The append statement's CTE: the facts of the one message of `ins` (in primary-key order, so
#: concurrent appends lock rows in one order).
ROLLUP = (
    "roll AS (\n    "
    + upsert(
        "stats_daily",
        tenant="i.tenant_id",
        conversation="i.conversation_id",
        message="i",
        header="b",
        source="FROM ins i, bump b\n    CROSS JOIN LATERAL",
    )
    + "\n),\n"
)
