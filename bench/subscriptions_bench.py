"""Live subscriptions under load: 1,000 subscribers on one API process across 100
conversations (20 WebSocket connections x 50 subscriptions, as an orchestrator multiplexes),
a steady write load and a burst; commit->delivery latency (message createdAt, stamped in the
appending statement just before its commit, to the moment the client decodes it) and memory
per idle subscription; beside raw Redis pub/sub: one subscription fanning out to the same
number of in-process asyncio queues, in the same run.

Run: `python -m bench.subscriptions_bench [--seconds 10] [--rate 50] [--write]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import websockets
from redis.asyncio import Redis

from app.embedded.process import free_port
from app.services import tenants
from bench import harness
from bench.docs import cpu_model, write_section
from bench.harness import rss_kib
from db.session import Database, UnitOfWork, create_pool

ROOT = Path(__file__).resolve().parent.parent
SUB = "subscription($s: String) { messageAdded(sessionId: $s) { seq content createdAt } }"
ADD = "mutation($s: String!, $c: String!) { addMessage(input: {sessionId: $s, role: USER, content: $c}) { created } }"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def make_key(url: str) -> str:
    db = Database(await create_pool(url))
    try:

        async def setup(uow: UnitOfWork) -> str:
            await tenants.ensure_tenant(uow, "bench")
            _, key = await tenants.create_api_key(uow, "bench", list(tenants.Scope))
            return key

        return await db.run(setup)
    finally:
        await db.close()


async def ours(args: argparse.Namespace, ws_url: str, http_url: str, key: str, server_pid: int) -> dict[str, float]:
    conversations = [f"c{i}" for i in range(args.conversations)]
    async with httpx.AsyncClient(base_url=http_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        for s in conversations:  # the sessions exist before anyone subscribes
            (await http.post("/graphql", json={"query": ADD, "variables": {"s": s, "c": "hello"}})).raise_for_status()
        rss_before = rss_kib(server_pid)
        latencies: list[float] = []
        delivered = 0
        sockets = []
        per_socket = args.subscribers // args.connections
        for c in range(args.connections):
            ws = await websockets.connect(ws_url, subprotocols=["graphql-transport-ws"], max_size=None)  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            for i in range(per_socket):
                s = conversations[(c * per_socket + i) % len(conversations)]
                await ws.send(
                    json.dumps({"id": str(i), "type": "subscribe", "payload": {"query": SUB, "variables": {"s": s}}})
                )
            sockets.append(ws)
        await asyncio.sleep(2)
        rss_idle = rss_kib(server_pid)

        async def read(ws: websockets.ClientConnection) -> None:
            nonlocal delivered
            async for raw in ws:
                now = time.time()
                msg = orjson.loads(raw)
                if msg.get("type") == "ping":
                    await ws.send('{"type":"pong"}')
                    continue
                if msg.get("type") != "next":
                    continue
                created = datetime.fromisoformat(msg["payload"]["data"]["messageAdded"]["createdAt"]).timestamp()
                latencies.append((now - created) * 1000)
                delivered += 1

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        sent = 0

        async def post(s: str) -> None:
            nonlocal sent
            (await http.post("/graphql", json={"query": ADD, "variables": {"s": s, "c": "steady"}})).raise_for_status()
            sent += 1

        # Steady: `rate` messages/s spread over the conversations.
        deadline = time.monotonic() + args.seconds
        i = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            await post(conversations[i % len(conversations)])
            i += 1
            await asyncio.sleep(max(0.0, 1 / args.rate - (time.monotonic() - started)))
        await asyncio.sleep(1)
        steady = list(latencies)
        steady_sent = sent
        latencies.clear()
        # Burst: `burst` messages from 8 concurrent writers as fast as they go.
        queue = list(range(args.burst))

        async def burst_writer() -> None:
            while queue:
                n = queue.pop()
                await post(conversations[n % len(conversations)])

        burst_started = time.monotonic()
        await asyncio.gather(*(burst_writer() for _ in range(8)))
        burst_seconds = time.monotonic() - burst_started
        expected = sent * (args.subscribers // args.conversations)
        deadline = time.monotonic() + 15
        while delivered < expected and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.1)
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
    return {
        "steady_p50": pct(steady, 0.5),
        "steady_p99": pct(steady, 0.99),
        "steady_messages": steady_sent,
        "burst_p50": pct(latencies, 0.5),
        "burst_p99": pct(latencies, 0.99),
        "burst_rate": args.burst / burst_seconds,
        "delivered": delivered,
        "expected": expected,
        "kib_per_idle_subscription": (rss_idle - rss_before) / args.subscribers,
    }


async def raw_redis(args: argparse.Namespace, redis_url: str, n_channels: int) -> dict[str, float]:
    """The floor: one pub/sub connection fanning out to N asyncio queues in one process."""
    subscriber, publisher = Redis.from_url(redis_url), Redis.from_url(redis_url)
    pubsub = subscriber.pubsub()
    channels = [f"raw:{i}" for i in range(n_channels)]
    await pubsub.subscribe(*channels)
    queues: dict[str, list[asyncio.Queue[bytes]]] = {c: [] for c in channels}
    for n in range(args.subscribers):
        queues[channels[n % len(channels)]].append(asyncio.Queue(1000))
    latencies: list[float] = []

    async def fan_out() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            for q in queues[message["channel"].decode()]:
                q.put_nowait(message["data"])

    async def consume(q: asyncio.Queue[bytes]) -> None:
        while True:
            data = await q.get()
            latencies.append((time.time() - float(orjson.loads(data)["t"])) * 1000)

    tasks = [asyncio.create_task(fan_out())] + [asyncio.create_task(consume(q)) for qs in queues.values() for q in qs]
    deadline = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        await publisher.publish(channels[i % len(channels)], orjson.dumps({"t": time.time(), "seq": i}))
        i += 1
        await asyncio.sleep(max(0.0, 1 / args.rate - (time.monotonic() - started)))
    await asyncio.sleep(1)
    for task in tasks:
        task.cancel()
    await pubsub.aclose()
    await subscriber.aclose()
    await publisher.aclose()
    return {"p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99), "deliveries": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="steady messages per second")
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    port = free_port()
    with harness.servers("cs-sub-bench-") as srv:
        pg, rd = srv.pg, srv.redis
        key = asyncio.run(make_key(pg.url))
        env = {**os.environ, "SUBSCRIBER_QUEUE_SIZE": "1000", "MAX_SUBSCRIPTIONS_PER_CONNECTION": "100"}
        cmd = [sys.executable, "-m", "bench.graphql_servers", "ours", str(port), pg.url, rd.url]
        server = harness.start(cmd, port, "/healthz", env)
        try:
            result = asyncio.run(
                ours(args, f"ws://127.0.0.1:{port}/graphql", f"http://127.0.0.1:{port}", key, server.pid)
            )
        finally:
            harness.stop(server)
        raw_one = asyncio.run(raw_redis(args, rd.url, 1))
        raw = asyncio.run(raw_redis(args, rd.url, args.conversations))
    table = "\n".join(
        [
            "| path | load | p50 ms | p99 ms | notes |",
            "|---|---|---:|---:|---|",
            f"| raw Redis pub/sub, 1 channel → {args.subscribers} asyncio queues | {args.rate:.0f} events/s | "
            f"{raw_one['p50']:.2f} | {raw_one['p99']:.2f} | {raw_one['deliveries']} deliveries |",
            f"| raw Redis pub/sub, {args.conversations} channels → {args.subscribers} queues | {args.rate:.0f} events/s | "
            f"{raw['p50']:.2f} | {raw['p99']:.2f} | {raw['deliveries']} deliveries (our shape) |",
            f"| messageAdded, {args.subscribers} subscribers / {args.conversations} conversations | steady {args.rate:.0f} msg/s "
            f"| {result['steady_p50']:.2f} | {result['steady_p99']:.2f} | commit→client decode |",
            f"| same | burst of {args.burst} ({result['burst_rate']:.0f} msg/s written) | {result['burst_p50']:.2f} | "
            f"{result['burst_p99']:.2f} | delivered {result['delivered']:.0f} of {result['expected']:.0f} |",
        ]
    )
    summary = f"memory per idle subscription: {result['kib_per_idle_subscription']:.1f} KiB (server RSS delta)"
    print(table)
    print(summary)
    if args.write:
        write_section(
            "subscriptions-bench",
            "## Live subscriptions (bench/subscriptions_bench.py)\n\n"
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_model()}, {os.cpu_count()} cores; "
            f"one API process (uvicorn), embedded Postgres with fsync on, Redis 6.2; {args.connections} WebSocket "
            f"connections carrying {args.subscribers} subscriptions; the load generator runs on the same machine.\n"
            f"Command: `python -m bench.subscriptions_bench --seconds {args.seconds} --rate {args.rate:.0f} --write`.\n\n"
            f"{table}\n\n{summary}.\n",
        )


if __name__ == "__main__":
    main()
