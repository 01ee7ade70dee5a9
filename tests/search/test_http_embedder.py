"""The pluggable embedder (issue 14.2): an OpenAI-compatible `/embeddings` endpoint, served by a
real HTTP server on loopback, drives SEMANTIC search over GraphQL with its own vector length (its
HNSW index made by the backfill); its failures are clear errors, never bad vectors."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.services import embedder as embedders
from app.services import embeddings
from db.session import Database
from tests.api.conftest import Caller
from tests.factories import add_message, create_conversation

DIMS = 8


def bag_of_words(text: str) -> list[float]:
    """Each word adds to one of 8 buckets: texts sharing words point the same way."""
    v = [0.0] * DIMS
    for word in text.lower().split():
        v[hashlib.sha256(word.encode()).digest()[0] % DIMS] += 1.0
    return v


class FakeEmbeddings:
    def __init__(self) -> None:
        self.mode = "ok"
        self.auth: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                fake.auth.append(self.headers.get("Authorization"))
                if fake.mode == "500":
                    return self._send(500, b'{"error": "overloaded"}')
                if fake.mode == "short":
                    data = [{"index": i, "embedding": [1.0, 2.0]} for i, _ in enumerate(body["input"])]
                else:
                    # Answered in reverse order: the client must sort by index.
                    data = [{"index": i, "embedding": bag_of_words(t)} for i, t in enumerate(body["input"])][::-1]
                self._send(200, json.dumps({"data": data, "model": body["model"]}).encode())

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeEmbeddings]:
    server = FakeEmbeddings()
    yield server
    server.close()


async def test_an_endpoint_embedder_serves_semantic_search(api: Caller, db: Database, fake: FakeEmbeddings) -> None:
    http = embedders.HttpEmbedder(fake.url, "bow-8", DIMS, "sk-emb", 5.0)
    previous = embedders.configured()
    embedders.configure(http)
    try:
        conv = await create_conversation(db, api.tenant)
        for text in ("apples and pears", "cars trucks buses", "pears apples apples"):
            await add_message(db, api.tenant, conv, content=text)
        assert await embeddings.backfill(db, http, tenant_id=api.tenant) == 3
        data = await api.data(
            "query($q: String!) { search(query: $q, mode: SEMANTIC, first: 2) { edges { node { score message { content } } } } }",
            {"q": "apples pears"},
        )
        hits = [e["node"] for e in data["search"]["edges"]]
        assert {h["message"]["content"] for h in hits} == {"apples and pears", "pears apples apples"}
        assert hits[0]["score"] >= hits[1]["score"] > 0.5
        assert fake.auth[0] == "Bearer sk-emb"
        async with db.read() as conn:
            row = await conn.fetchrow(
                "SELECT model, dims, vector_dims(embedding) AS n FROM message_embeddings WHERE tenant_id = $1 LIMIT 1",
                api.tenant,
            )
            assert row is not None and (row["model"], row["dims"], row["n"]) == ("bow-8", DIMS, DIMS)
            assert await conn.fetchval("SELECT to_regclass('ix_message_embeddings_hnsw_8') IS NOT NULL")
        # The endpoint failing: a clear BAD_USER_INPUT for the query, nothing stored by a job.
        fake.mode = "500"
        embedders.configure(embedders.HttpEmbedder(fake.url, "bow-8", DIMS, None, 5.0))
        body = await api.gql('{ search(query: "something new", mode: HYBRID) { edges { cursor } } }')
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert "HTTP 500" in body["errors"][0]["message"]
    finally:
        embedders.configure(previous)


async def test_wrong_answers_are_errors_not_vectors(fake: FakeEmbeddings) -> None:
    http = embedders.HttpEmbedder(fake.url + "/embeddings", "bow-8", DIMS, None, 5.0)
    (v,) = await http.embed(["one two three"])
    assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6)  # normalised
    fake.mode = "short"
    with pytest.raises(embedders.EmbeddingError, match="expected length 8"):
        await http.embed(["one"])
    unreachable = embedders.HttpEmbedder("http://127.0.0.1:9/v1", "bow-8", DIMS, None, 1.0)
    with pytest.raises(embedders.EmbeddingError, match="unreachable"):
        await unreachable.embed(["one"])
