"""The hot store on a Redis Cluster (3 masters + 3 replicas, REDIS_CLUSTER_NODES): reads equal
Postgres before, during and after a failover, including when the promoted replica never got the
last writes its master acknowledged (entries are fenced by the answering node's own run_id)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cache.client import HotCache
from app.cache.keys import conversation_keys
from app.embedded.redis_cluster import RedisCluster, cluster_info, command, start_redis_cluster, wait_cluster_ok
from app.models import ConversationRef
from app.services import messages
from db.session import Database
from tests.cache.conftest import FAST, Node, check_header_and_state, check_history, counter
from tests.cache.test_cache import append, new_conversation, texts


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = start_redis_cluster(tmp_path / "rc")
    yield cluster
    cluster.stop()


async def cluster_node(db: Database, cluster: RedisCluster) -> Node:
    cache = HotCache("", FAST, cluster_nodes=cluster.seeds)
    node_db = Database(db.pool)
    cache.attach(node_db)
    await cache.start()
    return Node(cache, node_db)


def master_and_replica(cluster: RedisCluster, key: str) -> tuple[int, int]:
    """Ports of the master serving ``key``'s slot and of its replica."""
    slot = int(command(cluster.nodes[0].port, "CLUSTER", "KEYSLOT", key).split("\r\n")[0].lstrip(":"))
    lines = command(cluster.nodes[0].port, "CLUSTER", "NODES").splitlines()
    rows = [line.split() for line in lines if line and not line.startswith(("$", "*"))]
    master_id, master_port = "", 0
    for row in rows:
        if "master" in row[2]:
            for span in row[8:]:
                lo, _, hi = span.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    master_id, master_port = row[0], int(row[1].split("@")[0].rsplit(":", 1)[1])
    replica_port = next(int(r[1].split("@")[0].rsplit(":", 1)[1]) for r in rows if r[3] == master_id)
    return master_port, replica_port


def run_id(port: int) -> str:
    text = command(port, "INFO", "server")
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("run_id:"))


async def wait_master(port: int, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while "role:master" not in command(port, "INFO", "replication"):
        assert time.monotonic() < deadline, f"node {port} was not promoted"
        await asyncio.sleep(0.05)


async def reader(node: Node, tenant: str, target: ConversationRef, stop: asyncio.Event) -> int:
    """Reads all through the failover; each read is compared with Postgres (check_history)."""
    reads = 0
    while not stop.is_set():
        await check_history(node.db, node.cache, tenant, target, last=50)
        await check_header_and_state(node.db, node.cache, tenant, target)
        reads += 1
        await asyncio.sleep(0.01)
    return reads


async def _failover_with_lost_write(db: Database, tenant: str, cluster: RedisCluster, *, kill: bool) -> None:
    node = await cluster_node(db, cluster)
    try:
        conv = await new_conversation(node, tenant)
        target = ConversationRef(id=conv.id)
        await append(node.db, tenant, conv.id, *texts(4))
        await check_history(node.db, node.cache, tenant, target, last=50)
        assert await check_history(node.db, node.cache, tenant, target, last=50)  # served by the cluster
        keys = conversation_keys(tenant, conv.id)
        master, replica = master_and_replica(cluster, keys[0])
        old_run_id = run_id(master)
        dumps = [await node.cache.redis.dump(k) for k in keys]
        await append(node.db, tenant, conv.id, {"content": "acknowledged by the master, lost in the failover"})

        stop = asyncio.Event()
        reads = asyncio.create_task(reader(node, tenant, target, stop))
        if kill:
            victim = next(n for n in cluster.nodes if n.port == master)
            assert victim.process is not None
            victim.process.kill()
        else:
            command(replica, "CLUSTER", "FAILOVER")
        await wait_master(replica)
        await asyncio.to_thread(wait_cluster_ok, [n for n in cluster.nodes if n.port != master or not kill])
        assert run_id(replica) != old_run_id
        await asyncio.sleep(0.2)
        stop.set()
        assert await reads > 0
        # The promoted replica holds the entry as it was before the last append (a write its master
        # acknowledged and never replicated), written under the old master's run_id.
        for key, value in zip(keys, dumps, strict=True):
            await node.cache.redis.restore(key, 60_000, value, replace=True)
        fills = counter("cache_fills_total")
        for _ in range(20):  # the breaker may still skip Redis for a moment after the failover
            served = await check_history(node.db, node.cache, tenant, target, last=50)  # equal to Postgres
            if not served and counter("cache_fills_total") > fills:
                break
            await asyncio.sleep(FAST.retry_s)
        assert counter("cache_fills_total") > fills  # a miss, refilled from Postgres: not served stale
        assert await check_history(node.db, node.cache, tenant, target, last=50)  # and served again
        written = await append(node.db, tenant, conv.id, {"content": "written after the failover"})
        await check_history(node.db, node.cache, tenant, target, last=50)
        async with node.db.read() as conn:
            page = await messages.history_by_ref(conn, tenant, target, messages.HistoryArgs(last=50), cache=node.cache)
        assert page.items[-1].seq == written.last_seq
        assert "lost in the failover" in page.items[-2].content
    finally:
        await node.cache.close()


async def test_scripts_fence_with_the_answering_nodes_run_id(
    db: Database, tenant: str, redis_cluster: RedisCluster
) -> None:
    node = await cluster_node(db, redis_cluster)
    try:
        conv = await new_conversation(node, tenant)
        await append(node.db, tenant, conv.id, *texts(3))
        target = ConversationRef(id=conv.id)
        await check_history(node.db, node.cache, tenant, target, last=10)
        assert await check_history(node.db, node.cache, tenant, target, last=10)
        hdr = conversation_keys(tenant, conv.id)[0]
        master, _ = master_and_replica(redis_cluster, hdr)
        assert (await node.cache.redis.hget(hdr, "b")).decode() == run_id(master)
    finally:
        await node.cache.close()


async def test_cluster_failover_never_serves_what_postgres_does_not_hold(
    db: Database, tenant: str, redis_cluster: RedisCluster
) -> None:
    await _failover_with_lost_write(db, tenant, redis_cluster, kill=False)


@pytest.mark.slow
async def test_a_killed_master_whose_replica_is_promoted_never_serves_stale(
    db: Database, tenant: str, redis_cluster: RedisCluster
) -> None:
    await _failover_with_lost_write(db, tenant, redis_cluster, kill=True)


def test_cluster_info_reports_three_masters(redis_cluster: RedisCluster) -> None:
    info = cluster_info(redis_cluster.nodes[0].port)
    assert info["cluster_state"].strip() == "ok" and info["cluster_size"].strip() == "3"
