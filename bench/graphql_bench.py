"""GraphQL benchmarks with a real HTTP load generator (wrk, 32 connections):

- `addMessage` through our GraphQL API vs a bare Starlette + asyncpg endpoint doing the same
  durable append (the GraphQL and service-layer tax; aim: >= 50 % of bare);
- "last 50 messages" through our API vs the bare endpoint vs PostGraphile v4 serving the same
  query from the same database (aim: at least PostGraphile's throughput).

Run: `python -m bench.graphql_bench [--seconds 10] [--write]` (needs `wrk`, and Node for
PostGraphile: `npm install` in bench/postgraphile runs on first use). One fresh embedded
Postgres (fsync on) and Redis; every server gets the machine in turn, never two at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
import uuid
from dataclasses import dataclass

from app.embedded.process import free_port
from app.services import tenants
from bench import harness
from bench.docs import cpu_model, write_section

# The server and load helpers live in the harness; these names stay importable from here
# (bench/shapes_bench.py and others use them).
from bench.harness import ROOT, ensure_postgraphile, lua_script, run_wrk, start, stop, wait_http
from db.session import Database, UnitOfWork, create_pool

__all__ = [
    "ROOT",
    "SESSIONS",
    "TENANT",
    "ensure_postgraphile",
    "lua_script",
    "run_wrk",
    "seed",
    "start",
    "stop",
    "wait_http",
]
TENANT = "bench"
SESSIONS = 64


@dataclass
class Result:
    scenario: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


async def seed(url: str) -> tuple[str, str]:
    db = Database(await create_pool(url))
    try:

        async def setup(uow: UnitOfWork) -> str:
            await tenants.ensure_tenant(uow, TENANT)
            _, key = await tenants.create_api_key(uow, TENANT, list(tenants.Scope))
            return key

        key: str = await db.run(setup)
        cid = uuid.uuid4()
        async with db.read() as conn:
            await conn.execute(
                "INSERT INTO conversations (tenant_id, id, session_id, last_seq, message_count, token_count, "
                "last_message_at) VALUES ($1, $2, 'history', 10000, 10000, 500000, now())",
                TENANT,
                cid,
            )
            await conn.execute(
                """INSERT INTO messages (tenant_id, conversation_id, seq, id, role, content, token_count, created_at)
                   SELECT $1, $2, g, gen_random_uuid(), CASE WHEN g % 2 = 0 THEN 'assistant' ELSE 'user' END,
                          'message number ' || g || ': ' || repeat('lorem ipsum dolor sit amet ', 6), 50,
                          now() - (10000 - g) * interval '1 second'
                   FROM generate_series(1, 10000) g""",
                TENANT,
                cid,
            )
            await conn.execute("ANALYZE")
        return key, str(cid)
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-postgraphile", action="store_true")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    results: list[Result] = []
    with harness.servers("cs-gql-bench-") as srv:
        root, pg, rd = srv.root, srv.pg, srv.redis
        key, cid = asyncio.run(seed(pg.url))
        doc_last = (ROOT / "graphql" / "AgentLastMessages.graphql").read_text()
        doc_add = (ROOT / "graphql" / "ServiceAddMessage.graphql").read_text()
        content = "Hola, necesito ayuda con mi pedido número 12345, ¿pueden revisarlo?"
        auth = {"Authorization": f"Bearer {key}"}
        scripts = {
            ("addMessage", "ours"): lua_script(
                root / "add_ours.lua",
                "/graphql",
                auth,
                [
                    json.dumps(
                        {
                            "query": doc_add,
                            "variables": {"input": {"sessionId": f"s{i}", "role": "USER", "content": content}},
                        }
                    )
                    for i in range(SESSIONS)
                ],
            ),
            ("addMessage", "bare"): lua_script(
                root / "add_bare.lua",
                "/add",
                {},
                [
                    json.dumps({"tenant": TENANT, "sessionId": f"s{i}", "role": "user", "content": content})
                    for i in range(SESSIONS)
                ],
            ),
            ("last 50", "ours"): lua_script(
                root / "last_ours.lua",
                "/graphql",
                auth,
                [json.dumps({"query": doc_last, "variables": {"conversationId": cid, "last": 50}})],
            ),
            ("last 50", "bare"): lua_script(
                root / "last_bare.lua", "/last", {}, [json.dumps({"tenant": TENANT, "conversationId": cid, "last": 50})]
            ),
            ("last 50", "PostGraphile"): lua_script(
                root / "last_pg.lua",
                "/graphql",
                {},
                [
                    json.dumps(
                        {
                            "query": 'query($c: UUID!) { allMessages(condition: {tenantId: "bench", conversationId: $c}, '
                            "orderBy: SEQ_DESC, first: 50) { nodes { id seq role content name toolCallId toolCalls "
                            "tokenCount createdAt } } }",
                            "variables": {"c": cid},
                        }
                    )
                ],
            ),
        }
        py = sys.executable
        port = free_port()
        servers: dict[str, list[str]] = {
            "ours": [py, "-m", "bench.graphql_servers", "ours", str(port), pg.url, rd.url],
            "bare": [py, "-m", "bench.graphql_servers", "bare", str(port), pg.url, rd.url],
        }
        postgraphile = None if args.skip_postgraphile else ensure_postgraphile()
        if postgraphile is not None:
            servers["PostGraphile"] = [
                str(postgraphile),
                "-c",
                pg.url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--schema",
                "public",
                "--disable-query-log",
                "--no-setof-functions-contain-nulls",
            ]
        for server, cmd in servers.items():
            env = {**os.environ, "NODE_ENV": "production"}
            proc = start(cmd, port, "/graphql" if server != "bare" else "/", env)
            try:
                for (scenario, who), script in scripts.items():
                    if who != server:
                        continue
                    run_wrk(script, port, 2, args.connections)  # warm-up: caches, JIT, pools
                    rps, p50, p99, errors = run_wrk(script, port, args.seconds, args.connections)
                    results.append(Result(scenario, server, rps, p50, p99, errors))
                    print(
                        f"{scenario:12} {server:13} {rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}",
                        flush=True,
                    )
            finally:
                stop(proc)
    table = render(results)
    print()
    print(table)
    if args.write:
        write_docs(table, args)


def render(results: list[Result]) -> str:
    by = {(r.scenario, r.server): r for r in results}
    lines = [
        "| scenario | server | req/s | p50 ms | p99 ms | non-2xx/socket errors | vs bare | vs PostGraphile |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        bare = by.get((r.scenario, "bare"))
        peer = by.get((r.scenario, "PostGraphile"))
        vs_bare = f"{100 * r.rps / bare.rps:.0f} %" if bare and r.server != "bare" else ""
        vs_peer = f"{100 * r.rps / peer.rps:.0f} %" if peer and r.server != "PostGraphile" else ""
        lines.append(
            f"| {r.scenario} | {r.server} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {vs_bare} | {vs_peer} |"
        )
    return "\n".join(lines)


def write_docs(table: str, args: argparse.Namespace) -> None:
    write_section(
        "graphql-bench",
        "## GraphQL over HTTP (bench/graphql_bench.py)\n\n"
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_model()}, {os.cpu_count()} cores; "
        f"embedded Postgres 18 with fsync on; one uvicorn process per server; wrk -t2 -c{args.connections} "
        f"-d{args.seconds}s after a 2 s warm-up; Python {platform.python_version()}.\n"
        f"Command: `python -m bench.graphql_bench --seconds {args.seconds} --write`.\n\n"
        f"{table}\n",
    )


if __name__ == "__main__":
    main()
