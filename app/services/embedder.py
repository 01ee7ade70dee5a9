"""Text → vector for SEMANTIC and HYBRID search (issue 14.2; docs/decisions.md, "Embeddings").

Two embedders behind one interface: an OpenAI-compatible `/embeddings` endpoint (EMBEDDINGS_URL),
or the offline default, WordLlama's 256-d static token embeddings loaded from the files inside the
`wordllama` wheel (no download, no torch: numpy + tokenizers). Vectors are L2-normalised so the
cosine distance of pgvector ranks them.

The local model is CPU work: it runs in a thread (never on the event loop), loaded lazily once per
process. Query vectors are cached briefly per process (repeated and paged searches).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import httpx

from app.settings import Settings, get_settings

LOCAL_MODEL = "wordllama-l2-supercat-256"
LOCAL_DIMENSIONS = 256
QUERY_CACHE_ENTRIES = 2048


class EmbeddingError(Exception):
    """The embedder failed (endpoint status, timeout, malformed answer, wrong vector length)."""


class Embedder(Protocol):
    model: str
    dimensions: int

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


def _normalised(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm > 0 else v


class LocalEmbedder:
    """WordLlama (MIT) from the wheel's own weight and tokenizer files. WordLlama.load() would look
    for the tokenizer in a directory the wheel does not have and then download it; building the
    inference object from the packaged files keeps it offline."""

    model = LOCAL_MODEL
    dimensions = LOCAL_DIMENSIONS

    def __init__(self) -> None:
        self._inference: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._inference is None:
                import wordllama
                from safetensors import safe_open
                from tokenizers import Tokenizer
                from wordllama.inference import WordLlamaInference

                root = Path(wordllama.__file__).parent
                tokenizer = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
                with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as f:
                    weights = f.get_tensor("embedding.weight")
                self._inference = WordLlamaInference(weights, tokenizer, binary=False)
            return self._inference

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        vectors = self._load().embed(texts, norm=True)
        return [[float(x) for x in row] for row in vectors]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return await asyncio.to_thread(self._embed_sync, texts)


class HttpEmbedder:
    """An OpenAI-compatible embeddings endpoint (the platform's Embedding Service)."""

    def __init__(self, url: str, model: str, dimensions: int, api_key: str | None, timeout_s: float) -> None:
        self.url = url if url.rstrip("/").endswith("/embeddings") else url.rstrip("/") + "/embeddings"
        self.model = model
        self.dimensions = dimensions
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                r = await client.post(self.url, json={"model": self.model, "input": texts}, headers=self.headers)
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"embeddings endpoint unreachable: {exc!r}") from exc
        if r.status_code != 200:
            raise EmbeddingError(f"embeddings endpoint answered HTTP {r.status_code}: {r.text[:200]}")
        try:
            data = sorted(r.json()["data"], key=lambda d: int(d.get("index", 0)))
            vectors = [[float(x) for x in d["embedding"]] for d in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"malformed embeddings answer: {exc!r}") from exc
        if len(vectors) != len(texts) or any(len(v) != self.dimensions for v in vectors):
            raise EmbeddingError(
                f"embeddings answer has {len(vectors)} vectors for {len(texts)} texts "
                f"(expected length {self.dimensions} each)"
            )
        return [_normalised(v) for v in vectors]


def from_settings(s: Settings) -> Embedder | None:
    if s.embedder == "none":
        return None
    if s.embeddings_url:
        assert s.embeddings_model and s.embeddings_dimensions  # Settings checks this
        return HttpEmbedder(
            s.embeddings_url, s.embeddings_model, s.embeddings_dimensions, s.embeddings_api_key, s.embeddings_timeout_s
        )
    return LocalEmbedder()


class _Registry:
    embedder: Embedder | None = None
    set: bool = False


def configure(embedder: Embedder | None) -> None:
    """Set the process's embedder (startup; tests switch it off and on)."""
    _Registry.embedder, _Registry.set = embedder, True
    _query_cache.clear()


def configured() -> Embedder | None:
    """The process's embedder: the one configured, else built from the settings on first use."""
    if not _Registry.set:
        configure(from_settings(get_settings()))
    return _Registry.embedder


def query_cache_s() -> float:
    return get_settings().embeddings_query_cache_s


_query_cache: OrderedDict[tuple[str, str], tuple[float, list[float]]] = OrderedDict()


async def embed_query(embedder: Embedder, query: str, ttl_s: float) -> list[float]:
    """The query's vector, from a short per-process cache when it was asked for recently."""
    key = (embedder.model, query)
    now = time.monotonic()
    hit = _query_cache.get(key)
    if hit is not None and hit[0] > now:
        _query_cache.move_to_end(key)
        return hit[1]
    (vector,) = await embedder.embed([query])
    if ttl_s > 0:
        _query_cache[key] = (now + ttl_s, vector)
        while len(_query_cache) > QUERY_CACHE_ENTRIES:
            _query_cache.popitem(last=False)
    return vector
