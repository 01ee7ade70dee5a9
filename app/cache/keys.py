"""Key layout (one hash tag per conversation: one Redis Cluster slot) and the cache's constants.

The layout of each key is described in the package docstring (app/cache/__init__.py)."""

from __future__ import annotations

import hashlib
import uuid

#: A fill whose read of `v` is older than this (by Redis' clock) is not written.
FILL_DEADLINE_S = 10.0
#: How long an invalidated entry's version counter is kept; must exceed FILL_DEADLINE_S.
TOMBSTONE_TTL_S = 60.0
#: The state hash's "loaded" marker: Postgres text cannot hold NUL, so no state key is this.
LOADED = b"\x00"
#: Where a request's sessionId → conversation id is remembered in process (the mapping never
#: changes while the conversation exists; every read checks it against the header).
SESSION_LRU_SIZE = 65_536
#: Messages cached per conversation stop at this many bytes too (the newest always stays).
MAX_ENTRY_BYTES = 2 * 1024 * 1024


def conversation_keys(tenant_id: str, conversation_id: uuid.UUID) -> tuple[str, str, str]:
    """(hdr, msgs, state) keys of one conversation: one hash tag, one Cluster slot."""
    tag = f"cs:{{{tenant_id}:{conversation_id}}}:"
    return tag + "hdr", tag + "msgs", tag + "state"


def session_key(tenant_id: str, session_id: str) -> str:
    """The sessionId → conversation id mapping (hashed: session ids are free text up to 200 chars)."""
    return f"cs:{{{tenant_id}}}:sess:{hashlib.sha256(session_id.encode()).hexdigest()[:32]}"


#: SCAN pattern for per-conversation keys; the hash tag is parsed from each match.
CONVERSATION_KEY_MATCH = "cs:*{*:*}*"


def conversation_of_key(key: bytes | str) -> tuple[str, uuid.UUID] | None:
    """(tenant_id, conversation_id) from a key's `{tenant:conversation}` hash tag, else None."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    start = text.find("{")
    end = text.find("}", start + 1)
    if not text.startswith("cs:") or start < 0 or end < 0:
        return None
    tenant_id, sep, rest = text[start + 1 : end].rpartition(":")
    if not sep or not tenant_id:
        return None
    try:
        return tenant_id, uuid.UUID(rest)
    except ValueError:
        return None


def profile_key(tenant_id: str, user_id: str) -> str:
    """A CRM customer profile (app/cache/profiles.py; user ids are free text, so hashed)."""
    return f"cs:{{{tenant_id}}}:crm:customer:{hashlib.sha256(user_id.encode()).hexdigest()[:32]}"
