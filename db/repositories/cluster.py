"""SQL about the Citus cluster itself (not about any tenant): settings every node must agree on."""

from __future__ import annotations

from db.session import Connection

#: `SHOW` runs in a new session of this user on this database on every node, so role and database
#: settings count, as they do for the coordinator's connections to the workers and for any-node pools.
_ASYNC_COMMIT_NODES = """
SELECT n.nodename || ':' || n.nodeport
FROM run_command_on_all_nodes('SHOW synchronous_commit') r
JOIN pg_dist_node n USING (nodeid)
WHERE r.success AND r.result = 'off'
ORDER BY n.nodeid
"""


async def nodes_with_async_commit(conn: Connection) -> list[str]:
    """The nodes (`host:port`) whose sessions commit with synchronous_commit=off.

    A shard move with logical replication (Citus' default transfer mode) loses writes committed
    asynchronously just before its switch (docs/scaling.md, "Moves need synchronous_commit").
    """
    return [str(row[0]) for row in await conn.fetch(_ASYNC_COMMIT_NODES)]
