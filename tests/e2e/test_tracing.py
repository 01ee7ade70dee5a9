"""OpenTelemetry tracing across processes: a real API (`app.cli serve`) and a real worker export
their spans over OTLP/HTTP to a receiver in this test (protobuf decoded with opentelemetry-proto).
A GraphQL request that closes a conversation and the CRM delivery job it enqueues share one
trace; an action enqueued with a `traceparent` in its envelope runs in that trace; asyncpg
queries are spans. With tracing off, nothing imports opentelemetry."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.typing import Subprotocol

from app.embedded.process import die_with_parent, free_port
from app.services import tenants
from db.session import Database, UnitOfWork
from jobs.client import ActionClient
from tests.conftest import Servers
from tests.jobs.conftest import eventually, start_worker, wait_ready


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    role: str
    attributes: dict[str, Any]


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf) that also accepts CRM webhooks."""

    url: str = ""
    spans: list[Span] = field(default_factory=list)
    webhooks: list[bytes] = field(default_factory=list)

    def in_trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def receiver_app(receiver: Receiver) -> Starlette:
    async def traces(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    receiver.spans.append(
                        Span(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            role=str(resource.get("conversation_service.role")),
                            attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        )
                    )
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    async def webhook(request: Request) -> Response:
        receiver.webhooks.append(await request.body())
        return Response("ok")

    return Starlette(
        routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/webhook", webhook, methods=["POST"])]
    )


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(receiver_app(found), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    found.url = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        server.should_exit = True
        await task


def _tracing_env(receiver: Receiver) -> dict[str, str]:
    # Short batches so spans arrive within the test, not after the SDK's default 5 s.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}


def _spawn_api(servers: Servers, queue: str, receiver: Receiver, log: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": servers.database_url,
        "REDIS_URL": servers.redis_url,
        "ARQ_QUEUE": queue,
        "CRON_ENABLED": "false",
        **_tracing_env(receiver),
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - no imports or locks in it
        )


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


async def _api(servers: Servers, queue: str, receiver: Receiver, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = _spawn_api(servers, queue, receiver, log, port)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as http:
        while True:
            assert proc.poll() is None, _text(log)
            try:
                if (await http.get(f"{url}/healthz", timeout=1)).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not start:\n" + _text(log)
            await asyncio.sleep(0.1)


async def _tenant_with_crm(db: Database, receiver: Receiver) -> tuple[str, str]:
    tenant = f"otel-{uuid.uuid4().hex[:10]}"

    async def work(uow: UnitOfWork) -> str:
        await tenants.ensure_tenant(uow, tenant)
        await tenants.update_tenant_settings(
            uow, tenant, {"crm_webhook_url": f"{receiver.url}/webhook", "crm_webhook_secret": "s3cret"}
        )
        _, secret = await tenants.create_api_key(uow, tenant, tenants.parse_scopes("read,write"))
        return secret

    return tenant, await db.run(work)


async def test_a_request_and_its_job_share_one_trace(
    servers: Servers, db: Database, redis: Redis, receiver: Receiver, tmp_path: Path
) -> None:
    queue = f"cs-otel-{uuid.uuid4().hex[:8]}"
    worker = start_worker(servers, queue, tmp_path, **_tracing_env(receiver))
    api, url = await _api(servers, queue, receiver, tmp_path / "api.log")
    try:
        await wait_ready(worker, redis)
        tenant, key = await _tenant_with_crm(db, receiver)
        session_id = f"otel-{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            added = await http.post(
                "/graphql",
                json={
                    "query": "mutation($i: AddMessageInput!) { addMessage(input: $i) { message { seq } } }",
                    "variables": {"i": {"sessionId": session_id, "role": "USER", "content": "hello"}},
                },
            )
            assert added.json()["data"]["addMessage"]["message"]["seq"] == 1, added.text
            closed = await http.post(
                "/graphql",
                json={"query": f'mutation Close {{ closeSession(sessionId: "{session_id}") {{ status }} }}'},
            )
            assert closed.json()["data"]["closeSession"]["status"] == "CLOSED", closed.text

        async def delivered() -> list[Span]:
            return receiver.named("crm.deliver")

        [deliver] = await eventually(delivered, within_s=20)
        assert deliver.role == "worker"

        async def webhooks() -> list[bytes]:
            return receiver.webhooks

        assert await eventually(webhooks, within_s=10)  # the job really delivered

        async def whole_trace() -> list[Span] | None:
            spans = receiver.in_trace(deliver.trace_id)
            roots = [s for s in spans if s.role == "api" and s.name == "POST /graphql" and not s.parent_id]
            api_queries = [s for s in spans if s.role == "api" and s.attributes.get("db.system") == "postgresql"]
            worker_queries = [s for s in spans if s.role == "worker" and s.attributes.get("db.system") == "postgresql"]
            return spans if roots and api_queries and worker_queries else None

        spans = await eventually(whole_trace, within_s=20)
        by_id = {s.span_id: s for s in spans}
        # The job's span is the child of a span of the request (the server span, which enqueued it).
        assert by_id[deliver.parent_id].role == "api"
        root = next(s for s in spans if s.name == "POST /graphql" and not s.parent_id)
        assert root.attributes.get("http.route") == "/graphql"
        assert root.attributes.get("graphql.operation.name") == "Close"
        assert root.attributes.get("graphql.operation.type") == "mutation"
        assert root.attributes.get("conversation_service.tenant") == tenant
        # The two requests are two traces: only the closing one reaches the job.
        requests = [s for s in receiver.named("POST /graphql") if not s.parent_id]
        assert len({s.trace_id for s in requests}) >= 2

        # The middleware leaves WebSockets working: a subscription is acknowledged and streams.
        ws_url = url.replace("http", "ws") + "/graphql"
        async with websockets.connect(ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as ws:
            await ws.send(
                json.dumps({"type": "connection_init", "payload": {"headers": {"Authorization": f"Bearer {key}"}}})
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
            query = f'subscription {{ messageAdded(sessionId: "{session_id}", afterSeq: 0) {{ seq }} }}'
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert first["type"] == "next" and first["payload"]["data"]["messageAdded"]["seq"] == 1, first

        # An action carries the caller's traceparent in its envelope; the worker continues it.
        trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        async with await ActionClient.connect(servers.redis_url, queue_name=queue) as client:
            envelope = client.envelope("conversation.save_message", tenant_id=tenant, traceparent="x")
            assert envelope["traceparent"] == "x"
            answer = await client.call(
                "conversation.save_message",
                tenant_id=tenant,
                session_id=f"{session_id}-action",
                data={"role": "user", "content": "through the worker"},
                traceparent=f"00-{trace_id}-{parent_id}-01",
            )
        assert answer["success"] is True, answer

        async def action_span() -> list[Span]:
            return [s for s in receiver.in_trace(trace_id) if s.name == "action conversation.save_message"]

        [action] = await eventually(action_span, within_s=20)
        assert action.parent_id == parent_id and action.role == "worker"
        assert any(s.attributes.get("db.system") == "postgresql" for s in receiver.in_trace(trace_id))
    finally:
        for proc in (api, worker.proc):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (api, worker.proc):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_tracing_off_imports_nothing_of_opentelemetry(servers: Servers) -> None:
    """Off (the default): building the app and the worker, and making an envelope, load no
    opentelemetry module, and an envelope carries no traceparent."""
    script = (
        "import sys\n"
        "from app.settings import Settings\n"
        "from app.main import create_app\n"
        "from jobs.worker import worker_settings\n"
        "from jobs.client import ActionClient\n"
        f"s = Settings(_env_file=None, database_url={servers.database_url!r}, redis_url={servers.redis_url!r})\n"
        "create_app(s)\n"
        f"worker_settings(s, database_url={servers.database_url!r}, redis_url={servers.redis_url!r})\n"
        "env = ActionClient.envelope(None, 'ping', tenant_id='t', reply=False)\n"
        "assert 'traceparent' not in env, env\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
        "print('clean')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-3000:]
