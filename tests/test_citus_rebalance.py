"""Online growth on Citus: a worker is added and a shard group moves to it while 8 writers append
through the real API (10 % of their clientMessageIds sent twice) and 50 live subscribers
(graphql-transport-ws, on two API processes) follow the 8 conversations: nothing lost, nothing
duplicated, seqs gap-free, every subscriber sees every message of its conversation exactly once and
in order, and the longest pause a writer saw is measured. Runs with `pytest --cluster citus`;
skipped otherwise. REBALANCE_MESSAGES (default 500, the issue's full size) scales it down."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.embedded.citus import add_worker
from db.session import Database
from tests import citus_cluster
from tests.conftest import Servers
from tests.processes import ApiProcess, api_key, start_api, wait_ready
from tests.subscriptions.conftest import WS

WRITERS = 8
SUBSCRIBERS = 50
PER_WRITER = int(os.environ.get("REBALANCE_MESSAGES", "500"))
SUB = "subscription($id: ID, $after: Int) { messageAdded(conversationId: $id, afterSeq: $after) { seq content } }"
ADD = """mutation($id: ID!, $c: String!, $k: String) {
  addMessage(input: {conversationId: $id, role: USER, content: $c, clientMessageId: $k}) { created message { seq } } }"""


async def follow(ws: WS, count: int, out: list[tuple[int, str]]) -> list[tuple[int, str]]:
    while len(out) < count:
        msg = await ws.recv(wait=60)  # a writer may wait for the move; the stream with it
        assert msg["type"] == "next", msg
        added = msg["payload"]["data"]["messageAdded"]
        out.append((added["seq"], added["content"]))
    return out


async def test_a_shard_group_moves_to_a_new_worker_while_writers_append_and_subscribers_follow(
    db: Database, servers: Servers, tmp_path: Path
) -> None:
    current = citus_cluster.current_cluster()
    if current is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    cluster, root, started = current
    apis = [start_api(servers, tmp_path) for _ in range(2)]
    try:
        wait_ready(apis)
        await run_rebalance(db, cluster, root, started, apis)
    finally:
        for api in apis:
            api.stop()


async def run_rebalance(db: Database, cluster: Any, root: Path, started: list[Any], apis: list[ApiProcess]) -> None:
    began = time.monotonic()
    tenants = [f"rb-{uuid.uuid4().hex[:10]}" for _ in range(WRITERS)]
    keys = [await api_key(db, t) for t in tenants]
    async with httpx.AsyncClient(timeout=60) as http:

        async def gql(w: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
            r = await http.post(
                f"{apis[w % 2].url}/graphql",
                json={"query": query, "variables": variables},
                headers={"Authorization": f"Bearer {keys[w]}"},
            )
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            assert "errors" not in body, body
            data: dict[str, Any] = body["data"]
            return data

        convs = []
        for w in range(WRITERS):
            created = await gql(w, 'mutation { createConversation(input: {sessionId: "rb"}) { id } }', {})
            convs.append(created["createConversation"]["id"])
        sockets: list[tuple[int, WS]] = []
        for n in range(SUBSCRIBERS):
            w = n % WRITERS
            ws = await WS.open(apis[n % 2].ws)
            assert (await ws.init(keys[w]))["type"] == "connection_ack"
            await ws.subscribe("1", SUB, {"id": convs[w], "after": 0})
            sockets.append((w, ws))
        progress_of: list[list[tuple[int, str]]] = [[] for _ in sockets]
        followers = [asyncio.create_task(follow(ws, PER_WRITER, progress_of[n])) for n, (_, ws) in enumerate(sockets)]
        new_node = add_worker(cluster, root / f"worker{len(cluster.workers) + 1}", fsync=False)
        started.append(new_node)
        pauses: list[tuple[float, float]] = []  # (start, duration) of every write
        window: list[float] = []  # when the move (reference tables + shard group) ran
        progress = [0]
        fifth_written = asyncio.Event()

        async def writer(w: int) -> None:
            for i in range(PER_WRITER):
                tries = 2 if random.random() < 0.1 else 1  # 10 % are retried: the second must be a no-op
                for attempt in range(tries):
                    started_at = time.monotonic()
                    data = await gql(w, ADD, {"id": convs[w], "c": f"{w}/{i}", "k": f"w{w}-m{i}"})
                    pauses.append((started_at, time.monotonic() - started_at))
                    assert data["addMessage"]["created"] == (attempt == 0)
                progress[0] += 1
                if progress[0] >= WRITERS * PER_WRITER // 5:
                    fifth_written.set()  # the move starts with the writers in full swing

        async def move() -> float:
            await fifth_written.wait()
            conn = await asyncpg.connect(cluster.url)
            try:
                shard = await conn.fetchval(
                    "SELECT get_shard_id_for_distribution_column('conversations', $1::text)", tenants[0]
                )
                node = await conn.fetchrow("SELECT nodename, nodeport FROM citus_shards WHERE shardid = $1", shard)
                assert node is not None
                move_began = time.monotonic()
                # A new node needs the reference tables (tenants, api_keys) before it can take shards. Both
                # calls as an operator types them: Citus' default transfer mode (`auto`: logical replication,
                # writes blocked only for the final catch-up and the switch; every table has a replica identity).
                await conn.execute("SELECT replicate_reference_tables()")
                await conn.execute(
                    "SELECT citus_move_shard_placement($1::bigint, $2::text, $3::int, '127.0.0.1', $4::int)",
                    shard,
                    node["nodename"],
                    node["nodeport"],
                    new_node.port,
                )
                took = time.monotonic() - move_began
                window[:] = [move_began, move_began + took]
                where = await conn.fetchval("SELECT nodeport FROM citus_shards WHERE shardid = $1", shard)
                assert where == new_node.port
                return took
            finally:
                await conn.close()

        results = await asyncio.gather(move(), *(writer(w) for w in range(WRITERS)))
        move_s = results[0]
        written_s = time.monotonic() - began
        try:
            streams = await asyncio.wait_for(asyncio.gather(*followers), 120)
        except TimeoutError:
            behind = [
                (n, len(got), got[-1][0] if got else 0) for n, got in enumerate(progress_of) if len(got) < PER_WRITER
            ]
            raise AssertionError(
                f"subscribers behind 120 s after the last write (socket, received, last seq): {behind}; "
                f"hub counters: {await hub_counters(http, apis)}; where the rows are: "
                f"{await where_rows_are(cluster, new_node, tenants, convs)}; API logs: "
                + " | ".join(api.output()[-2000:] for api in apis)
            ) from None
        for w, conv in enumerate(convs):
            async with db.read() as conn:
                rows = await conn.fetch(
                    "SELECT seq, content, client_message_id FROM messages WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY seq",
                    tenants[w],
                    uuid.UUID(conv),
                )
            assert [r["seq"] for r in rows] == list(range(1, PER_WRITER + 1))  # gap-free, nothing lost
            assert sorted(r["client_message_id"] for r in rows) == sorted(f"w{w}-m{i}" for i in range(PER_WRITER))
            stored = [(r["seq"], r["content"]) for r in rows]
            for (subscribed_to, _), got in zip(sockets, streams, strict=True):
                if subscribed_to == w:
                    assert got == stored  # every message of its conversation, once, in order

        async def quiet(ws: WS) -> None:
            with pytest.raises(TimeoutError):
                await ws.recv(wait=0.3)  # and nothing after

        await asyncio.gather(*(quiet(ws) for _, ws in sockets))
        counters = await hub_counters(http, apis)
        await asyncio.gather(*(ws.close() for _, ws in sockets))
    # A write overlapping the move may have waited for it; the others show the box's own noise.
    longest = max(pauses, key=lambda p: p[1])
    during = [d for s, d in pauses if s < window[1] and s + d > window[0]]
    outside = [d for s, d in pauses if not (s < window[1] and s + d > window[0])]
    print(
        f"\n{WRITERS} x {PER_WRITER} writes, {SUBSCRIBERS} subscribers: shard group moved in {move_s:.2f}s; "
        f"longest write {longest[1] * 1000:.0f} ms at {longest[0] - window[0]:+.1f}s from the move's start, over {len(pauses)} writes "
        f"(overlapping the move: {max(during, default=0) * 1000:.0f} ms, "
        f"outside it: {max(outside, default=0) * 1000:.0f} ms, median {statistics.median(outside) * 1000:.0f} ms); "
        f"written in {written_s:.1f}s, all delivered in {time.monotonic() - began:.1f}s; hub counters: {counters}"
    )


async def where_rows_are(cluster: Any, new_node: Any, tenants: list[str], convs: list[str]) -> list[str]:
    """Every node's shard tables, read directly: which placement holds each conversation's rows and
    counter (a write that landed on a moved-away placement shows here and nowhere else)."""
    out: list[str] = []
    for port in sorted({node.port for node in [cluster.coordinator, *cluster.workers, new_node]}):
        async with citus_cluster.shards_on(port, "messages", "conversations") as (conn, shards):
            for name in shards:
                for w, conv in enumerate(convs):
                    if name.startswith("messages_"):
                        row = await conn.fetchrow(
                            f"SELECT count(*) AS n, max(seq) AS top FROM {name} WHERE tenant_id = $1 AND conversation_id = $2",
                            tenants[w],
                            uuid.UUID(conv),
                        )
                    else:
                        row = await conn.fetchrow(
                            f"SELECT message_count AS n, last_seq AS top FROM {name} WHERE tenant_id = $1 AND id = $2",
                            tenants[w],
                            uuid.UUID(conv),
                        )
                    if row is not None and row["n"]:
                        out.append(f"port {port} {name} w{w}: n={row['n']} top={row['top']}")
    return out


async def hub_counters(http: httpx.AsyncClient, apis: list[ApiProcess]) -> dict[str, float]:
    """What the APIs' event hubs went through (Prometheus): reconnects, drops, backfills, idle checks."""
    wanted = (
        "event_hub_connects_total",
        "events_dropped_total",
        "subscription_backfills_total",
        "subscription_idle_checks_total",
    )
    totals: dict[str, float] = {}
    for api in apis:
        text = (await http.get(f"{api.url}/metrics")).text
        for line in text.splitlines():
            name = line.split("{")[0].split(" ")[0]
            if name in wanted:
                label = line.split(" ")[0]
                totals[label] = totals.get(label, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals
