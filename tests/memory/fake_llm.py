"""A fake OpenAI-compatible chat-completions server: a real HTTP server on loopback.

`mode` decides each answer: "ok" (a summary naming the seqs it was given), "slow" (the same after
`delay_s`), "500", "malformed" (HTTP 200 with a body that is not JSON), "no-choices" (JSON without
choices). Every request body is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeLlm:
    def __init__(self, mode: str = "ok", delay_s: float = 0.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                with fake.lock:
                    fake.requests.append(body)
                    fake.paths.append(self.path)
                    fake.auth.append(self.headers.get("Authorization"))
                    n, mode = len(fake.requests), fake.mode
                if mode == "slow":
                    time.sleep(fake.delay_s)
                if mode == "500":
                    self._send(500, b'{"error": {"message": "model overloaded"}}')
                    return
                if mode == "malformed":
                    self._send(200, b'{"choices": [ this is not json')
                    return
                if mode == "no-choices":
                    self._send(200, b'{"id": "x", "object": "chat.completion"}')
                    return
                user = body["messages"][-1]["content"]
                seqs = [int(s) for s in re.findall(r"^\[(\d+)\]", user, flags=re.M)]
                text = f"SUMMARY#{n} of seqs {min(seqs)}-{max(seqs)}" if seqs else f"SUMMARY#{n} of nothing"
                answer = {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "model": body.get("model", "fake") + "-2026",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                }
                self._send(200, json.dumps(answer).encode())

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.requests)

    def prompt(self, i: int) -> str:
        with self.lock:
            return str(self.requests[i]["messages"][-1]["content"])

    def __enter__(self) -> FakeLlm:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
