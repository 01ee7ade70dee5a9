"""Soak: one API process under a bounded mixed load with 100 live subscribers; is its memory flat?

The load (all over real HTTP and WebSocket against a uvicorn process): 100 `messageAdded`
subscriptions on 10 WebSocket connections across 50 conversations, writers appending to those
conversations, CRM-style readers (conversation lists with nested messages, transcripts, stats,
search, context windows), state writes, and hostile traffic from clients with no key (unique
large documents, unique operation names) that must not be retained. RSS of the API process is
sampled every `--sample` seconds; after `--warmup` seconds the samples must stay within ±10 %
of the first post-warm-up sample. Bounded in time: it stops by itself after `--seconds`.

Run: `python -m bench.soak [--seconds 300] [--warmup 60] [--write]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
import orjson
import websockets

from app.embedded.process import free_port
from bench.docs import cpu_model, write_section
from bench.graphql_servers import start_ours
from bench.harness import rss_kib, servers
from bench.subscriptions_bench import make_key

ROOT = Path(__file__).resolve().parent.parent
SUB = "subscription($s: String) { messageAdded(sessionId: $s) { seq content } }"
ADD = (
    "mutation($s: String!, $c: String!) "
    "{ addMessage(input: {sessionId: $s, role: USER, content: $c}) { created message { seq conversationId } } }"
)
READS = [
    "query { conversations(first: 20) { totalCount edges { node { id sessionId messages(last: 3) { edges { node { seq content sources { documentId } } } } } } } }",
    "query($s: String!) { conversation(sessionId: $s) { id messageCount messages(last: 50) { edges { node { seq role content tokenCount metadata } } } } }",
    "query($s: String!) { conversation(sessionId: $s) { contextWindow(maxTokens: 2000) { totalTokens messages { seq content } } } }",
    "query { stats { conversations messages } }",
    'query { searchMessages(query: "soak", first: 10) { edges { node { seq content } } } }',
]
STATE = 'mutation($c: ID!, $v: JSON!) { setState(input: {conversationId: $c, key: "progress", value: $v}) { version } }'


async def soak(args: argparse.Namespace, http_url: str, ws_url: str, key: str, pid: int) -> dict[str, object]:
    sessions = [f"soak-{i}" for i in range(args.conversations)]
    headers = {"Authorization": f"Bearer {key}"}
    stop = asyncio.Event()
    counts = {"writes": 0, "reads": 0, "hostile": 0, "delivered": 0, "errors": 0}
    async with httpx.AsyncClient(base_url=http_url, headers=headers, timeout=30) as http:
        ids: list[str] = []
        for s in sessions:
            r = await http.post("/graphql", json={"query": ADD, "variables": {"s": s, "c": "soak start"}})
            ids.append(r.json()["data"]["addMessage"]["message"]["conversationId"])

        sockets = []
        per_socket = args.subscribers // args.connections
        for c in range(args.connections):
            ws = await websockets.connect(ws_url, subprotocols=["graphql-transport-ws"], max_size=None)  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            for i in range(per_socket):
                s = sessions[(c * per_socket + i) % len(sessions)]
                payload = {"query": SUB, "variables": {"s": s}}
                await ws.send(json.dumps({"id": str(i), "type": "subscribe", "payload": payload}))
            sockets.append(ws)

        async def read(ws: websockets.ClientConnection) -> None:
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg.get("type") == "ping":
                    await ws.send('{"type":"pong"}')
                elif msg.get("type") == "next":
                    counts["delivered"] += 1

        async def writer(n: int) -> None:
            rng = random.Random(n)
            while not stop.is_set():
                s = rng.choice(sessions)
                body = {"query": ADD, "variables": {"s": s, "c": f"soak message {rng.random()}"}}
                r = await http.post("/graphql", json=body)
                counts["writes"] += 1
                counts["errors"] += r.status_code != 200 or "errors" in r.json()
                await asyncio.sleep(1 / args.rate)

        async def reader(n: int) -> None:
            rng = random.Random(1000 + n)
            while not stop.is_set():
                query = rng.choice(READS)
                variables = {"s": rng.choice(sessions)} if "$s" in query else {}
                r = await http.post("/graphql", json={"query": query, "variables": variables})
                counts["reads"] += 1
                counts["errors"] += r.status_code != 200 or "errors" in r.json()
                if rng.random() < 0.1:
                    v = {"c": rng.choice(ids), "v": {"step": rng.randrange(100)}}
                    await http.post("/graphql", json={"query": STATE, "variables": v})
                await asyncio.sleep(0.02)

        async def hostile() -> None:
            """No key: unique documents (some large) and unique operation names, never retained."""
            async with httpx.AsyncClient(base_url=http_url, timeout=30) as anon:
                i = 0
                while not stop.is_set():
                    i += 1
                    filler = "x" * (200_000 if i % 10 == 0 else 100)
                    body = {"query": f"query Op{i}_{filler[:50]} {{ __typename }} # {i} {filler}"}
                    await anon.post("/graphql", json=body)
                    counts["hostile"] += 1
                    await asyncio.sleep(0.05)

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        load = [asyncio.create_task(writer(n)) for n in range(args.writers)]
        load += [asyncio.create_task(reader(n)) for n in range(args.readers)]
        load.append(asyncio.create_task(hostile()))
        samples: list[tuple[float, int]] = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < args.seconds:
            samples.append((elapsed, rss_kib(pid)))
            print(f"{elapsed:6.0f} s  RSS {samples[-1][1] / 1024:7.1f} MiB  {counts}", flush=True)
            await asyncio.sleep(args.sample)
        samples.append((time.monotonic() - started, rss_kib(pid)))
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
        await asyncio.sleep(2)
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
    return {"samples": samples, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--sample", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=10.0, help="appends per second per writer")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    port = free_port()
    with servers("cs-soak-") as s:
        key = asyncio.run(make_key(s.pg.url))
        server = start_ours(port, s.pg.url, s.redis.url)
        try:
            result = asyncio.run(
                soak(args, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql", key, server.pid)
            )
        finally:
            server.kill()
    samples: list[tuple[float, int]] = result["samples"]  # type: ignore[assignment]
    after = [rss for t, rss in samples if t >= args.warmup]
    base = after[0]
    low, high = min(after), max(after)
    spread = max(high - base, base - low) / base * 100
    flat = spread <= 10
    rows = "\n".join(f"| {t:.0f} | {rss / 1024:.1f} |" for t, rss in samples)
    table = f"| seconds | API RSS MiB |\n|---:|---:|\n{rows}"
    summary = (
        f"after the {args.warmup} s warm-up: first {base / 1024:.1f} MiB, min {low / 1024:.1f}, max {high / 1024:.1f} "
        f"(±{spread:.1f} %: {'flat' if flat else 'NOT flat'}); {result['writes']} appends, {result['reads']} reads, "
        f"{result['hostile']} unauthenticated hostile requests, {result['delivered']} subscription deliveries, "
        f"{result['errors']} errors"
    )
    print(table)
    print(summary)
    if args.write:
        write_section(
            "soak",
            "## Soak: memory under mixed load (bench/soak.py)\n\n"
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_model()}, {os.cpu_count()} cores; "
            f"one API process (uvicorn), embedded Postgres with fsync on, Redis 6.2; {args.subscribers} subscriptions on "
            f"{args.connections} WebSockets over {args.conversations} conversations, {args.writers} writers at "
            f"{args.rate:.0f} appends/s each, {args.readers} readers (lists with nested messages, transcripts, context "
            "windows, stats, search, state writes), and one client with no key sending unique documents (every tenth "
            "200 KB) and unique operation names. The load generator runs on the same machine.\n"
            f"Command: `python -m bench.soak --seconds {args.seconds} --warmup {args.warmup} --sample {args.sample:g} --write`.\n\n"
            f"{summary}.\n\n{table}\n",
        )
    sys.exit(0 if flat else 1)


if __name__ == "__main__":
    main()
