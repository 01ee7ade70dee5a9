"""A fake CRM: a real HTTP server on loopback, verifying signatures as docs/jobs.md tells a CRM to.

It fails the first `fail_first` webhook calls with HTTP 500, then accepts. A delivery whose
Idempotency-Key it has accepted before is acknowledged again but not counted twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


def verify(secret: str, timestamp: str | None, signature: str | None, signed: bytes) -> bool:
    """The documented check, written independently of app/services/crm.py."""
    if not timestamp or not signature or abs(time.time() - int(timestamp)) > 300:
        return False
    expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


class FakeCrm:
    def __init__(self, secret: str, *, fail_first: int = 0, profiles: dict[str, dict[str, Any]] | None = None):
        self.secret = secret
        self.fail_first = fail_first
        self.profiles = profiles or {}
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.accepted: dict[str, dict[str, Any]] = {}
        self.bad_signatures = 0
        self.lookups: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = verify(fake.secret, self.headers.get("X-CS-Timestamp"), self.headers.get("X-CS-Signature"), body)
                key = self.headers.get("Idempotency-Key", "")
                with fake.lock:
                    fake.calls.append({"key": key, "signature_ok": ok})
                    if len(fake.calls) <= fake.fail_first:
                        self._reply(500, {"error": "try later"})
                        return
                    if not ok:
                        fake.bad_signatures += 1
                        self._reply(401, {"error": "bad signature"})
                        return
                    duplicate = key in fake.accepted
                    if not duplicate:
                        fake.accepted[key] = json.loads(body)
                self._reply(200, {"ok": True, "duplicate": duplicate})

            def do_GET(self) -> None:
                ok = verify(
                    fake.secret,
                    self.headers.get("X-CS-Timestamp"),
                    self.headers.get("X-CS-Signature"),
                    self.path.encode(),
                )
                user_id = unquote(self.path.rsplit("/", 1)[-1])
                with fake.lock:
                    fake.lookups.append(user_id)
                if not ok:
                    self._reply(401, {"error": "bad signature"})
                elif user_id in fake.profiles:
                    self._reply(200, fake.profiles[user_id])
                else:
                    self._reply(404, {"error": "no such customer"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-crm", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def tenant_settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "crm_webhook_url": f"{self.url}/webhook",
            "crm_webhook_secret": self.secret,
            "crm_lookup_url": f"{self.url}/customers/{{user_id}}",
            **extra,
        }

    def deliveries_for(self, conversation_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [d for d in self.accepted.values() if d["conversation"]["id"] == conversation_id]

    def __enter__(self) -> FakeCrm:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
