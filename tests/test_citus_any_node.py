"""Querying from any node: the service pointed at a Citus *worker* instead of the coordinator.

Citus (11+) syncs its metadata to the workers, so a worker plans and routes a tenant's statements
like the coordinator does: locally when it holds the tenant's shard group, else to the worker that
does. This is what lets N API processes spread over the nodes so the coordinator hop and its CPU
disappear (docs/scaling.md; bench/citus_bench.py measures it). Run with `pytest --cluster citus`.
"""

from __future__ import annotations

import uuid

import pytest

from app.errors import NotFound
from app.models import Conversation, ConversationRef, Role
from app.services import conversations, messages
from db.repositories.messages import CITUS_APPEND_BY_ID
from db.session import Database, UnitOfWork, create_pool
from tests import citus_cluster

_PLACEMENT = """
SELECT p.nodeport FROM pg_dist_shard_placement p
WHERE p.shardid = get_shard_id_for_distribution_column('conversations', $1::text)
"""


async def _tenants_on_each_worker(coordinator: Database, ports: list[int]) -> dict[int, str]:
    """One fresh tenant whose shard group lives on each worker (tenants hash to shards at random)."""
    found: dict[int, str] = {}
    async with coordinator.read() as conn:
        while len(found) < len(ports):
            tenant = f"any-node-{uuid.uuid4().hex[:8]}"
            port = await conn.fetchval(_PLACEMENT, tenant)
            found.setdefault(port, tenant)
    return found


async def test_the_service_reads_and_writes_through_a_worker_for_local_and_remote_tenants(db: Database) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    cluster = current[0]
    worker = cluster.workers[0]
    tenants = await _tenants_on_each_worker(db, [w.port for w in cluster.workers])
    via_worker = Database(await create_pool(worker.url, min_size=1, max_size=2))
    try:
        convs: dict[str, Conversation] = {}
        for tenant in tenants.values():

            async def create(uow: UnitOfWork, tenant: str = tenant) -> Conversation:
                return await conversations.create(uow, tenant, session_id="any-node")

            convs[tenant] = await via_worker.run(create)
            for i in range(3):

                async def append(uow: UnitOfWork, tenant: str = tenant, i: int = i) -> None:
                    msg = messages.new_message(role=Role.USER, content=f"m{i}")
                    await messages.append(uow, tenant, ConversationRef(id=convs[tenant].id), msg)

                await via_worker.run(append)

        for tenant, conv in convs.items():
            ref = ConversationRef(id=conv.id)
            # Written through the worker, read back through the worker and through the coordinator.
            for database in (via_worker, db):
                async with database.read() as conn:
                    page = await messages.history_by_ref(conn, tenant, ref, messages.HistoryArgs(last=50))
                assert [(m.seq, m.content) for m in page.items] == [(1, "m0"), (2, "m1"), (3, "m2")]
            # Tenant isolation holds on a worker too: another tenant does not see the conversation.
            other = next(t for t in convs if t != tenant)
            async with via_worker.read() as conn:
                with pytest.raises(NotFound):
                    await messages.history_by_ref(conn, other, ref, messages.HistoryArgs(last=50))

        # The tenant held by the other worker: the worker delegates the append there whole (one
        # remote call, no two-phase commit), exactly as the coordinator does.
        remote = tenants[cluster.workers[1].port]
        args = [remote, convs[remote].id, None, None, "user", "m3", None, 1, None, None, {}, None, None, None]
        notices: list[str] = []
        async with via_worker.pool.acquire() as conn:
            conn.add_log_listener(lambda _c, message: notices.append(message.message))
            await conn.execute("SET client_min_messages = debug1; SET citus.log_remote_commands = on")
            try:
                row = await conn.fetchrow(CITUS_APPEND_BY_ID, *args)
            finally:
                await conn.execute("RESET client_min_messages; RESET citus.log_remote_commands")
        assert row is not None and row["seq"] == 4
        assert any("pushing down the function call" in n for n in notices)
        issued = [n for n in notices if n.startswith("issuing")]
        assert [n for n in issued if "append_message" in n]
        assert not [n for n in issued if "PREPARE TRANSACTION" in n]
    finally:
        await via_worker.close()
