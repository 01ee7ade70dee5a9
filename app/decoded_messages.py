"""Decoded hot-cache messages kept in process, bounded by approximate bytes (not by count: a
count bound lets 20,000 messages of 256 KiB hold gigabytes)."""

from __future__ import annotations

import uuid

from app.models import Message

Key = tuple[str, uuid.UUID, int]

#: Per entry beyond the bytes: the Message object, its uuids and datetime, the key tuple and
#: the dict slot (measured with tracemalloc: a decoded message is ~len(raw) + 450 bytes).
ENTRY_OVERHEAD = 768


def weight(raw: bytes) -> int:
    """Approximate bytes an entry holds: the cached bytes themselves, the decoded copy (its
    strings are at most as large as their UTF-8), and the fixed overhead."""
    return 2 * len(raw) + ENTRY_OVERHEAD


class DecodedMessages:
    """(tenant, conversation, seq) → (cached bytes, decoded Message), oldest insert dropped
    first while over `max_bytes`. An entry alone over the bound is not kept at all. One event
    loop: no locking."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: dict[Key, tuple[bytes, Message]] = {}

    def get(self, key: Key, raw: bytes) -> Message | None:
        """The message decoded before from these very bytes, or None."""
        known = self._data.get(key)
        return known[1] if known is not None and known[0] == raw else None

    def put(self, key: Key, raw: bytes, message: Message) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= weight(old[0])
        size = weight(raw)
        if size > self.max_bytes:
            return
        self._data[key] = (raw, message)
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._data))
            self.bytes -= weight(self._data.pop(oldest)[0])

    def drop_conversation(self, tenant_id: str, conversation_id: uuid.UUID) -> int:
        """Forget one conversation's messages (it was deleted: no copy of its content stays in
        memory). A scan of the keys: deletions are rare next to reads."""
        doomed = [k for k in self._data if k[1] == conversation_id and k[0] == tenant_id]
        for key in doomed:
            self.bytes -= weight(self._data.pop(key)[0])
        return len(doomed)

    def clear(self) -> None:
        self._data.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)
