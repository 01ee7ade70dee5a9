"""Trusted documents: the operations our known clients send, kept in graphql/*.graphql.

A client may send `{"documentId": "<sha256>"}` or Apollo's
`{"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "<sha256>"}}}` instead of the
query text. With TRUSTED_DOCUMENTS_ONLY the server runs nothing else.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import metrics
from app.settings import PROJECT_ROOT

#: Installed from a wheel, the documents ship inside the package (setup.py copies graphql/*.graphql
#: to app/api/trusted_documents/ at build time); in a source checkout they are read from graphql/.
_PACKAGED = Path(__file__).resolve().with_name("trusted_documents")
DOCUMENTS_DIR = _PACKAGED if _PACKAGED.is_dir() else PROJECT_ROOT / "graphql"


def document_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: Why a request's document was refused (Apollo's code for an unknown hash is the first).
UNKNOWN_DOCUMENT = "PERSISTED_QUERY_NOT_FOUND"
DOCUMENT_MISMATCH = "DOCUMENT_MISMATCH"
UNTRUSTED_DOCUMENT = "UNTRUSTED_DOCUMENT"


class DocumentRefused(Exception):
    """A request's document is not one this server runs; `reason` is one of the constants above."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TrustedDocument:
    name: str
    text: str
    sha256: str


class AutomaticPersistedQueries:
    """Apollo's APQ cache: hash -> query text registered by clients (hash + query, sha256 checked),
    least recently used first out. Bounded by the bytes of the texts it holds, and only texts up
    to `max_query_bytes` (the parsed-document cache's limit) enter: a client cannot grow it."""

    def __init__(self, max_bytes: int, max_query_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_query_bytes = max_query_bytes
        self.bytes = 0
        self._texts: OrderedDict[str, str] = OrderedDict()

    def get(self, sha256: str) -> str | None:
        text = self._texts.get(sha256)
        if text is not None:
            self._texts.move_to_end(sha256)
        return text

    def register(self, sha256: str, text: str) -> None:
        size = len(text.encode()) + len(sha256)
        if sha256 in self._texts or size > self.max_bytes or len(text.encode()) > self.max_query_bytes:
            return
        self._texts[sha256] = text
        self.bytes += size
        while self.bytes > self.max_bytes:
            old_hash, old_text = self._texts.popitem(last=False)
            self.bytes -= len(old_text.encode()) + len(old_hash)

    def __len__(self) -> int:
        return len(self._texts)


class DocumentRegistry:
    def __init__(
        self,
        documents: list[TrustedDocument],
        *,
        trusted_only: bool = False,
        apq_bytes: int = 1024 * 1024,
        apq_max_query_bytes: int = 16 * 1024,
    ) -> None:
        self.documents = documents
        self.trusted_only = trusted_only
        self._by_hash = {d.sha256: d for d in documents}
        self._by_text = {d.text for d in documents}
        # Trusted-only runs nothing but the shipped documents: no client registers anything.
        self.apq = None if trusted_only or apq_bytes <= 0 else AutomaticPersistedQueries(apq_bytes, apq_max_query_bytes)

    @classmethod
    def load(
        cls,
        directory: Path = DOCUMENTS_DIR,
        *,
        trusted_only: bool = False,
        apq_bytes: int = 1024 * 1024,
        apq_max_query_bytes: int = 16 * 1024,
    ) -> DocumentRegistry:
        documents = [
            TrustedDocument(name=path.stem, text=path.read_text(), sha256=document_hash(path.read_text()))
            for path in sorted(directory.glob("*.graphql"))
        ]
        return cls(documents, trusted_only=trusted_only, apq_bytes=apq_bytes, apq_max_query_bytes=apq_max_query_bytes)

    def by_id(self, document_id: str) -> TrustedDocument | None:
        return self._by_hash.get(document_id.removeprefix("sha256:"))

    def by_name(self, name: str) -> TrustedDocument | None:
        return next((d for d in self.documents if d.name == name), None)

    def is_trusted(self, text: str) -> bool:
        return text in self._by_text

    def resolve(self, query: Any, document_id: Any, extensions: Any) -> str | None:
        """The text to run for a request (HTTP body or WebSocket subscribe payload): a
        `documentId` or Apollo's persisted-query hash is replaced by its document; with
        TRUSTED_DOCUMENTS_ONLY nothing else runs. Refusals raise DocumentRefused."""
        if document_id is None and isinstance(extensions, dict):
            persisted = extensions.get("persistedQuery")
            if isinstance(persisted, dict):
                document_id = persisted.get("sha256Hash")
        if document_id is not None:
            document = self.by_id(str(document_id))
            if document is not None:
                if query is not None and query != document.text:
                    raise DocumentRefused("the query does not match its document id", DOCUMENT_MISMATCH)
                return document.text
            return self._automatic(str(document_id).removeprefix("sha256:"), query)
        if self.trusted_only and (not isinstance(query, str) or not self.is_trusted(query)):
            metrics.HTTP_REJECTED.labels("untrusted_document").inc()
            raise DocumentRefused("only trusted documents are accepted here: send a documentId", UNTRUSTED_DOCUMENT)
        return query if isinstance(query, str) else None

    def _automatic(self, sha256: str, query: Any) -> str:
        """Apollo's APQ flow for a hash that is no trusted document: a hash alone is served from
        the cache, else PERSISTED_QUERY_NOT_FOUND (the client then sends hash + query); hash +
        query runs and registers the query when its sha256 is that hash (never in trusted-only)."""
        if query is None:
            text = self.apq.get(sha256) if self.apq is not None else None
            if text is None:
                metrics.HTTP_REJECTED.labels("unknown_document").inc()
                raise DocumentRefused("PersistedQueryNotFound", UNKNOWN_DOCUMENT)
            return text
        if self.trusted_only:
            metrics.HTTP_REJECTED.labels("untrusted_document").inc()
            raise DocumentRefused("only trusted documents are accepted here: send a documentId", UNTRUSTED_DOCUMENT)
        if not isinstance(query, str) or document_hash(query) != sha256:
            raise DocumentRefused("provided sha256Hash does not match query", DOCUMENT_MISMATCH)
        if self.apq is not None:
            self.apq.register(sha256, query)
        return query
