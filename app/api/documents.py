"""Trusted documents: the operations our known clients send, kept in graphql/*.graphql.

A client may send `{"documentId": "<sha256>"}` or Apollo's
`{"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "<sha256>"}}}` instead of the
query text. With TRUSTED_DOCUMENTS_ONLY the server runs nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from app.settings import PROJECT_ROOT

#: Installed from a wheel, the documents ship inside the package (setup.py copies graphql/*.graphql
#: to app/api/trusted_documents/ at build time); in a source checkout they are read from graphql/.
_PACKAGED = Path(__file__).resolve().with_name("trusted_documents")
DOCUMENTS_DIR = _PACKAGED if _PACKAGED.is_dir() else PROJECT_ROOT / "graphql"


def document_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TrustedDocument:
    name: str
    text: str
    sha256: str


class DocumentRegistry:
    def __init__(self, documents: list[TrustedDocument], *, trusted_only: bool = False) -> None:
        self.documents = documents
        self.trusted_only = trusted_only
        self._by_hash = {d.sha256: d for d in documents}
        self._by_text = {d.text for d in documents}

    @classmethod
    def load(cls, directory: Path = DOCUMENTS_DIR, *, trusted_only: bool = False) -> DocumentRegistry:
        documents = [
            TrustedDocument(name=path.stem, text=path.read_text(), sha256=document_hash(path.read_text()))
            for path in sorted(directory.glob("*.graphql"))
        ]
        return cls(documents, trusted_only=trusted_only)

    def by_id(self, document_id: str) -> TrustedDocument | None:
        return self._by_hash.get(document_id.removeprefix("sha256:"))

    def by_name(self, name: str) -> TrustedDocument | None:
        return next((d for d in self.documents if d.name == name), None)

    def is_trusted(self, text: str) -> bool:
        return text in self._by_text
