"""Many processes on the clusters: 3 API processes (`serve`) and 2 arq workers (`worker`), real
subprocesses, against the Citus cluster with the hot store on the Redis Cluster (pub/sub and the
queue on the single Redis). Cross-process guarantees: a subscriber on API #1 sees what API #2, API #3
and the workers write exactly once and in order; a clientMessageId sent to two APIs at once, or an
action_id run again by whichever worker takes it, writes once; one CAS winner among all five
processes; the conversation's counters equal a recount. Runs with `pytest --cluster citus`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from db.session import Database
from jobs.client import ActionClient
from tests import citus_cluster
from tests.conftest import Servers
from tests.jobs.conftest import WorkerProcess, eventually, start_worker
from tests.jobs.conftest import wait_ready as wait_worker
from tests.processes import ApiProcess, api_key, start_api, wait_ready
from tests.subscriptions.conftest import WS

PER_SOURCE = 15  # messages written through each of API #2, API #3 and the workers
SUB = "subscription($id: ID, $after: Int) { messageAdded(conversationId: $id, afterSeq: $after) { seq content } }"
ADD = """mutation($id: ID!, $c: String!, $k: String) {
  addMessage(input: {conversationId: $id, role: USER, content: $c, clientMessageId: $k}) { created message { id seq } } }"""
SET = """mutation($id: ID!, $v: JSON!, $e: Int) {
  setState(input: {conversationId: $id, key: "turn", value: $v, expectedVersion: $e}) { version } }"""


@pytest.fixture(scope="module")
def queue() -> str:
    return f"cs-test-procs-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def apis(servers: Servers, queue: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ApiProcess]]:
    if citus_cluster.current_cluster() is None:
        pytest.skip("needs the Citus cluster: pytest --cluster citus")
    log_dir = tmp_path_factory.mktemp("apis")
    started = [start_api(servers, log_dir, ARQ_QUEUE=queue) for _ in range(3)]
    try:
        wait_ready(started)
        yield started
    finally:
        for api in started:
            api.stop()


@pytest.fixture(scope="module")
async def workers(servers: Servers, redis: Redis, queue: str, worker_logs: Path) -> AsyncIterator[list[WorkerProcess]]:
    # No kept results: an action_id sent again runs again, on whichever worker takes it, so its
    # idempotency is the action log's (Postgres), not arq's job-id dedup.
    started = [start_worker(servers, queue, worker_logs, ARQ_KEEP_RESULT_S="0") for _ in range(2)]
    try:
        for w in started:
            await wait_worker(w, redis, within_s=60)
        yield started
    finally:
        for w in started:
            w.stop()


@pytest.fixture(scope="module")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


async def gql(http: httpx.AsyncClient, url: str, key: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    r = await http.post(
        f"{url}/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def read_seqs(ws: WS, count: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    while len(out) < count:
        msg = await ws.recv(wait=30)
        assert msg["type"] == "next", msg
        added = msg["payload"]["data"]["messageAdded"]
        out.append((added["seq"], added["content"]))
    return out


async def test_three_apis_and_two_workers_keep_every_guarantee_across_processes(
    apis: list[ApiProcess],
    workers: list[WorkerProcess],
    servers: Servers,
    queue: str,
    db: Database,
    redis: Redis,
) -> None:
    tenant = f"mp-{uuid.uuid4().hex[:10]}"
    key = await api_key(db, tenant)
    one, two, three = apis
    async with httpx.AsyncClient() as http, await ActionClient.connect(servers.redis_url, queue_name=queue) as client:
        created = await gql(http, two.url, key, 'mutation { createConversation(input: {sessionId: "mp"}) { id } }', {})
        cid = created["data"]["createConversation"]["id"]
        sockets = []
        for api in (one, three):
            ws = await WS.open(api.ws)
            assert (await ws.init(key))["type"] == "connection_ack"
            await ws.subscribe("1", SUB, {"id": cid, "after": 0})
            sockets.append(ws)
        receivers = [asyncio.create_task(read_seqs(ws, 3 * PER_SOURCE)) for ws in sockets]

        async def through_api(api: ApiProcess, other: ApiProcess, name: str) -> list[bool]:
            createds: list[bool] = []
            for i in range(PER_SOURCE):
                variables = {"id": cid, "c": f"{name}-{i}", "k": f"{name}-{i}"}
                if i % 5 == 0:  # the same clientMessageId to two processes at once: one write
                    both = await asyncio.gather(
                        gql(http, api.url, key, ADD, variables), gql(http, other.url, key, ADD, variables)
                    )
                    assert all("errors" not in b for b in both), both
                    assert both[0]["data"]["addMessage"]["message"] == both[1]["data"]["addMessage"]["message"]
                    createds += [b["data"]["addMessage"]["created"] for b in both]
                else:
                    body = await gql(http, api.url, key, ADD, variables)
                    assert "errors" not in body, body
                    createds.append(body["data"]["addMessage"]["created"])
            return createds

        async def arq_forgot(action_id: str) -> None:
            # The answer is pushed before arq deletes its job key; until then arq refuses the id.
            keys = (f"arq:job:{action_id}", f"arq:result:{action_id}")
            await eventually(lambda: forgotten(keys))

        async def forgotten(keys: tuple[str, ...]) -> bool:
            return not await redis.exists(*keys)

        async def through_workers() -> list[bool]:
            createds: list[bool] = []
            for i in range(PER_SOURCE):
                action_id = f"{tenant}-wk-{i}"
                tries = 2 if i % 5 == 0 else 1  # run again (no kept result): the message is not written twice
                first_id = None
                for attempt in range(tries):
                    if attempt:
                        await arq_forgot(action_id)
                    answer = await client.call(
                        "conversation.save_message",
                        tenant_id=tenant,
                        conversation_id=cid,
                        data={"role": "user", "content": f"wk-{i}"},
                        action_id=action_id,
                    )
                    assert answer["success"], answer
                    first_id = first_id or answer["data"]["message"]["id"]
                    assert answer["data"]["message"]["id"] == first_id
                    createds.append(answer["data"]["created"])
            return createds

        results = await asyncio.gather(through_api(two, three, "a2"), through_api(three, one, "a3"), through_workers())
        for createds in results:
            assert createds.count(True) == PER_SOURCE  # every retry, wherever it went, answered created=false
        streams = await asyncio.wait_for(asyncio.gather(*receivers), 60)
        async with db.read() as conn:
            stored = await conn.fetch(
                "SELECT seq, content FROM messages WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY seq",
                tenant,
                uuid.UUID(cid),
            )
        expected = [(r["seq"], r["content"]) for r in stored]
        assert [s for s, _ in expected] == list(range(1, 3 * PER_SOURCE + 1))  # gap-free, nothing twice
        assert sorted(c for _, c in expected) == sorted(
            f"{name}-{i}" for name in ("a2", "a3", "wk") for i in range(PER_SOURCE)
        )
        for got in streams:
            assert got == expected  # each subscriber: every message, once, in order
        for ws in sockets:
            with pytest.raises(TimeoutError):
                await ws.recv(wait=0.3)  # and nothing after

        # CAS across processes: five writers expect version 1; exactly one wins.
        first = await gql(http, one.url, key, SET, {"id": cid, "v": "start", "e": 0})
        assert first["data"]["setState"]["version"] == 1, first
        contenders = [gql(http, api.url, key, SET, {"id": cid, "v": f"api{n}", "e": 1}) for n, api in enumerate(apis)]
        actions = [
            client.call(
                "conversation.update_state",
                tenant_id=tenant,
                conversation_id=cid,
                data={"key": "turn", "value": f"worker{n}", "expected_version": 1},
            )
            for n in range(2)
        ]
        api_answers = await asyncio.gather(*contenders)
        action_answers = await asyncio.gather(*actions)
        wins = [a["data"]["setState"]["version"] for a in api_answers if "errors" not in a]
        wins += [a["data"]["state"]["version"] for a in action_answers if a["success"]]
        assert wins == [2]
        losses = [a["errors"][0]["extensions"]["code"] for a in api_answers if "errors" in a]
        losses += [a["error"]["code"] for a in action_answers if not a["success"]]
        assert losses == ["CONFLICT"] * 4
        # An update_state action run again (by either worker) answers from the action log: no new version.
        again = []
        for _ in range(3):
            await arq_forgot(f"{tenant}-state-last")
            again.append(
                await client.call(
                    "conversation.update_state",
                    tenant_id=tenant,
                    conversation_id=cid,
                    data={"key": "turn", "value": "last"},
                    action_id=f"{tenant}-state-last",
                )
            )
        assert [a["data"]["state"]["version"] for a in again] == [3, 3, 3], again

        # Counters equal a recount, read through each process (hot store or Postgres).
        async with db.read() as conn:
            recount = await conn.fetchrow(
                "SELECT count(*), max(seq) FROM messages WHERE tenant_id = $1 AND conversation_id = $2",
                tenant,
                uuid.UUID(cid),
            )
            assert recount is not None
            count, last = recount
            version = await conn.fetchval(
                "SELECT version FROM conversation_state WHERE tenant_id = $1 AND conversation_id = $2 AND key = 'turn'",
                tenant,
                uuid.UUID(cid),
            )
        assert (count, last, version) == (3 * PER_SOURCE, 3 * PER_SOURCE, 3)
        for api in apis:
            body = await gql(
                http, api.url, key, "query($id: ID!) { conversation(id: $id) { messageCount lastSeq } }", {"id": cid}
            )
            assert body["data"]["conversation"] == {"messageCount": count, "lastSeq": last}, body
        for ws in sockets:
            await ws.close()
