"""CRM administration over HTTP: the webhook secret's rotation (a real loopback receiver sees both
signatures during the overlap, then only the new one), deliveries listed and redelivered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from app.services import crm
from db.session import Database
from tests.api.conftest import Caller, make_caller

CREATE = 'mutation { createConversation(input: {sessionId: "s1", userId: "u1"}) { id } }'
SYNC = "mutation($id: ID!) { syncCrm(conversationId: $id) { status } }"
ROTATE = "mutation($s: Int) { rotateCrmSecret(overlapSeconds: $s) { secret previousValidUntil } }"
DELIVERIES = """query($status: CrmSyncStatus) { crmDeliveries(status: $status, first: 10) {
  edges { node { conversationId conversation { id } sync { status attempts lastError } } } } }"""
REDELIVER = "mutation($id: ID!) { redeliverCrmSync(conversationId: $id) { status attempts } }"


class Receiver:
    """A loopback HTTP server that records each webhook's signature header and body."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.calls.append((self.headers["X-CS-Timestamp"], self.headers["X-CS-Signature"], body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _signed_by(secret: str, timestamp: str, header: str, body: bytes) -> bool:
    """The documented receiver check, written independently: any comma-separated v1= matches."""
    expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, s.strip()) for s in header.split(","))


async def _deliver_pending(db: Database, tenant: str) -> None:
    """What the worker's job does for each pending delivery (the real delivery path)."""
    async with httpx.AsyncClient() as client:
        for record in [r for r in await crm.due_deliveries(db) if r.tenant_id == tenant]:
            await crm.deliver(db, client, tenant, record.id, crm.CrmOptions(max_attempts=1))


async def _admin(db: Database, http: httpx.AsyncClient, tenant: str) -> Caller:
    return await make_caller(db, http, tenant, "read,write,admin")


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    db: Database, http: httpx.AsyncClient, tenant: str, receiver: Receiver
) -> None:
    admin = await _admin(db, http, tenant)
    await admin.data(
        "mutation($u: String) { updateTenantSettings(input: {crmWebhookUrl: $u}) { crmWebhookUrl } }",
        {"u": receiver.url},
    )
    old = (await admin.data(ROTATE, {"s": 0}))["rotateCrmSecret"]
    assert old["previousValidUntil"] is None  # there was no secret before
    assert (await admin.data("{ tenantSettings { crmSecretSet } }"))["tenantSettings"]["crmSecretSet"] is True
    new = (await admin.data(ROTATE, {"s": 2}))["rotateCrmSecret"]
    assert new["secret"] != old["secret"] and new["previousValidUntil"]
    conversation = (await admin.data(CREATE))["createConversation"]["id"]
    await admin.data(SYNC, {"id": conversation})
    await _deliver_pending(db, tenant)
    (ts, header, body), *_ = receiver.calls
    assert len(header.split(",")) == 2
    assert _signed_by(new["secret"], ts, header, body) and _signed_by(old["secret"], ts, header, body)
    assert crm.verify(old["secret"], ts, header, body) and crm.verify(new["secret"], ts, header, body)

    await asyncio.sleep(2.1)  # the overlap is over
    await admin.data(SYNC, {"id": conversation})
    await _deliver_pending(db, tenant)
    ts, header, body = receiver.calls[-1]
    assert len(receiver.calls) == 2 and "," not in header
    assert _signed_by(new["secret"], ts, header, body) and not _signed_by(old["secret"], ts, header, body)
    entries = (await admin.data("{ auditLog { edges { node { action details } } } }"))["auditLog"]["edges"]
    rotations = [e["node"]["details"] for e in entries if e["node"]["action"] == "rotateCrmSecret"]
    assert rotations == [{"overlapSeconds": 2, "hadSecret": True}, {"overlapSeconds": 0, "hadSecret": False}]
    assert old["secret"] not in str(entries) and new["secret"] not in str(entries)


async def test_deliveries_are_listed_and_redelivered_once(
    db: Database, http: httpx.AsyncClient, tenant: str, other_tenant: str
) -> None:
    failing = Receiver(status=500)
    try:
        admin, theirs = await _admin(db, http, tenant), await _admin(db, http, other_tenant)
        await admin.data(
            "mutation($u: String) { updateTenantSettings(input: {crmWebhookUrl: $u}) { crmWebhookUrl } }",
            {"u": failing.url},
        )
        await admin.data(ROTATE, {"s": 0})
        conversation = (await admin.data(CREATE))["createConversation"]["id"]
        await admin.data(SYNC, {"id": conversation})
        await _deliver_pending(db, tenant)  # one attempt allowed: it fails for good
        failed = (await admin.data(DELIVERIES, {"status": "FAILED"}))["crmDeliveries"]["edges"]
        assert [e["node"]["conversationId"] for e in failed] == [conversation]
        assert failed[0]["node"]["conversation"] == {"id": conversation}
        assert failed[0]["node"]["sync"]["lastError"].startswith("HTTP 500")
        assert (await admin.data(DELIVERIES, {"status": "PENDING"}))["crmDeliveries"]["edges"] == []
        assert (await theirs.data(DELIVERIES))["crmDeliveries"]["edges"] == []
        assert await theirs.error_code(REDELIVER, {"id": conversation}) == "NOT_FOUND"

        first = (await admin.data(REDELIVER, {"id": conversation}))["redeliverCrmSync"]
        second = (await admin.data(REDELIVER, {"id": conversation}))["redeliverCrmSync"]
        assert first == second == {"status": "PENDING", "attempts": 0}
        everything = (await admin.data(DELIVERIES))["crmDeliveries"]["edges"]
        assert len(everything) == 1  # the same delivery, due again: not a second one
        failing.status = 200
        started = time.monotonic()
        await _deliver_pending(db, tenant)
        assert time.monotonic() - started < 5 and len(failing.calls) == 2
        delivered = (await admin.data(DELIVERIES, {"status": "DELIVERED"}))["crmDeliveries"]["edges"]
        assert len(delivered) == 1
        actions = [
            e["node"]["action"]
            for e in (await admin.data("{ auditLog { edges { node { action } } } }"))["auditLog"]["edges"]
        ]
        assert actions.count("redeliverCrmSync") == 2
    finally:
        failing.close()
