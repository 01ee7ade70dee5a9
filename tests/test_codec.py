"""app/codec.py: one codec, derived from the records. A Message with one more (throwaway)
optional field round-trips through every encoding without a line of codec code: the hot store
(through real Redis), live events (through real pub/sub), export lines, action results and
webhook payloads."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import pytest
from redis.asyncio import Redis

from app import codec
from app.cache import codec as cache_codec
from app.events import RESYNC, EventHub, conversation_channel
from app.models import Conversation, DomainEvent, EventType, Message, Role, Source, StateEntry, Status
from app.services import actions, crm
from app.services.crm import CrmSyncRecord, CrmSyncStatus
from app.settings import PROJECT_ROOT
from tests.conftest import Servers


@dataclass(slots=True, weakref_slot=False)
class MoodMessage(Message):
    """Message with the field a recipe would add (docs/architecture.md)."""

    mood: str | None = None


NOW = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)


def sample_conversation(tenant: str, cid: uuid.UUID) -> Conversation:
    return Conversation(
        tenant, cid, "s-1", "u-1", "a-1", "web", "t", Status.CLOSED, ["vip"], {"plan": "pro"},
        NOW, NOW, NOW, NOW, NOW, "bye", 1, 20, 1,
    )  # fmt: skip


def sample_message(tenant: str, cid: uuid.UUID, cls: type[Message] = Message, **extra: object) -> Message:
    return cls(
        tenant, cid, 1, uuid.uuid4(), "cm-1", Role.ASSISTANT, "héllo", None, None, [{"id": "c1"}], 20,
        {"k": [1, 2]}, {"model": "gpt-4o"}, NOW, [Source("doc", "c", "T", "u", 0.5, "snip")], **extra,
    )  # fmt: skip


@pytest.fixture
def mood_codec() -> Iterator[codec.Codec]:
    previous = codec.use(codec.Codec(message=MoodMessage))
    try:
        yield codec.CODEC
    finally:
        codec.use(previous)


def test_the_format_version_follows_the_records() -> None:
    assert codec.Codec().stamp == codec.STAMP
    assert codec.Codec(message=MoodMessage).stamp != codec.STAMP  # a new field is a new format


async def test_a_new_message_field_round_trips_through_every_encoding(
    mood_codec: codec.Codec, servers: Servers, tenant: str
) -> None:
    cid = uuid.uuid4()
    m = sample_message(tenant, cid, MoodMessage, mood="curious")
    conversation = sample_conversation(tenant, cid)

    # Hot store: what the cache writes, through real Redis, read back by what the cache reads.
    redis = Redis.from_url(servers.redis_url)
    key = f"cs:{{{tenant}:{cid}}}:test-msgs"
    try:
        await redis.rpush(key, cache_codec.encode_message(m))
        raw = await redis.lrange(key, 0, -1)
        await redis.delete(key)
    finally:
        await redis.aclose()
    (back,) = cache_codec.decode_messages(tenant, cid, raw)
    assert isinstance(back, MoodMessage) and back == m and back.mood == "curious"

    # Live events: published and received through the real pub/sub hub.
    hub = EventHub(servers.redis_url)
    await hub.start()
    try:
        async with hub.subscribe(conversation_channel(tenant, cid)) as sub:
            event = DomainEvent(EventType.MESSAGE_ADDED, tenant, cid, NOW, conversation=conversation, message=m)
            await hub.publish([event])
            got = await asyncio.wait_for(sub.get(), 5)
            while got is RESYNC:  # the hub's own, on connecting
                got = await asyncio.wait_for(sub.get(), 5)
    finally:
        await hub.close()
    assert isinstance(got, DomainEvent) and got == event
    assert isinstance(got.message, MoodMessage) and got.message.mood == "curious"

    # Export line and action result: the public snake_case object, as JSON text and back.
    public = orjson.loads(orjson.dumps({"messages": [actions.message_json(m)]}))["messages"][0]
    assert public["mood"] == "curious" and public["role"] == "assistant" and "tenant_id" not in public
    assert codec.message_from(public | {"tenant_id": tenant}) == m

    # Webhook: the documented subset, plus the new field.
    record = CrmSyncRecord(tenant, uuid.uuid4(), cid, "closed", CrmSyncStatus.PENDING, 1, None, None, None, NOW, NOW)
    payload = orjson.loads(orjson.dumps(crm.build_payload(record, conversation, [m])))
    (sent,) = payload["last_messages"]
    assert sent["mood"] == "curious"
    assert set(sent) == {"seq", "id", "role", "content", "name", "tool_call_id", "tool_calls", "token_count",
                         "created_at", "mood"}  # fmt: skip


PINNED_MESSAGE_FIELDS = {
    "id", "conversation_id", "seq", "client_message_id", "role", "content", "name", "tool_call_id", "tool_calls",
    "token_count", "metadata", "execution", "created_at", "sources",
}  # fmt: skip


def _documented(name: str) -> set[str]:
    """The fields docs/jobs.md lists for one of its objects ("a message `{id, …}`")."""
    text = " ".join((PROJECT_ROOT / "docs" / "jobs.md").read_text().split())
    match = re.search(rf"{name} `\{{([^}}]*)\}}`", text)
    assert match, f"docs/jobs.md documents no {name} object"
    return {f.strip() for f in match.group(1).split(",")}


def test_wire_formats_are_the_documented_ones() -> None:
    """docs/jobs.md's objects, field for field (the codec derives them; this pins the result)."""
    cid = uuid.uuid4()
    m = sample_message("t", cid)
    # The field list is docs/jobs.md's: a new Message field is documented there, not pinned here too.
    assert set(actions.message_json(m)) == _documented("message")
    assert {k: v for k, v in actions.message_json(m).items() if k in PINNED_MESSAGE_FIELDS} == {
        "id": str(m.id), "conversation_id": str(cid), "seq": 1, "client_message_id": "cm-1",
        "role": "assistant", "content": "héllo", "name": None, "tool_call_id": None,
        "tool_calls": [{"id": "c1"}], "token_count": 20, "metadata": {"k": [1, 2]},
        "execution": {"model": "gpt-4o"}, "created_at": NOW.isoformat(),
        "sources": [{"document_id": "doc", "chunk_id": "c", "title": "T", "uri": "u", "score": 0.5,
                     "snippet": "snip"}],
    }  # fmt: skip
    m.sources = None  # not loaded: [] as before
    assert actions.message_json(m)["sources"] == []
    c = sample_conversation("t", cid)
    assert set(actions.conversation_json(c)) == {
        "id", "tenant_id", "session_id", "user_id", "agent_id", "channel", "title", "status", "tags",
        "metadata", "created_at", "updated_at", "last_message_at", "closed_at", "close_reason",
        "message_count", "token_count", "last_seq",
    }  # fmt: skip
    assert actions.conversation_json(c)["status"] == "closed"
    s = StateEntry(cid, "k", {"v": 1}, 3, NOW)
    assert actions.state_json(s) == {
        "conversation_id": str(s.conversation_id),
        "key": "k",
        "value": {"v": 1},
        "version": 3,
        "updated_at": NOW.isoformat(),
    }
    record = CrmSyncRecord("t", uuid.uuid4(), cid, "closed", CrmSyncStatus.PENDING, 2, None, None, None, NOW, NOW)
    body = crm.build_payload(record, c, [m])
    assert set(body["conversation"]) == set(actions.conversation_json(c)) - {"tenant_id"} | {"duration_seconds"}
    assert body["conversation"]["duration_seconds"] == 0.0


def test_entries_of_another_format_are_refused_not_guessed() -> None:
    cid = uuid.uuid4()
    m = sample_message("t", cid)
    array = orjson.loads(codec.encode_message(m))
    future = orjson.dumps(["99.0", *array[1:]])
    legacy = orjson.dumps(array[1:])  # the positional array before versions: no stamp
    for raw in (future, legacy, orjson.dumps([*array, "extra"]), b"not json"):
        with pytest.raises(codec.UnknownFormat):
            codec.decode_messages("t", cid, [raw])
    header = codec.encode_conversation(sample_conversation("t", cid))
    for raw in (header.replace(codec.STAMP.encode(), b"99.0"), b'{"tenant_id": "t"}'):
        with pytest.raises(codec.UnknownFormat):
            codec.decode_conversation(raw)
    state = codec.encode_state(StateEntry(cid, "k", 1, 1, NOW))
    for raw in (state.replace(codec.STAMP.encode(), b"99.0"), b"1:1700000000000000:1"):
        with pytest.raises(codec.UnknownFormat):
            codec.decode_state(cid, b"k", raw)
    event = codec.encode_event(DomainEvent(EventType.MESSAGE_ADDED, "t", cid, NOW, message=m))
    with pytest.raises(codec.UnknownFormat):
        codec.decode_event(event.replace(codec.STAMP.encode(), b"99.0"))
