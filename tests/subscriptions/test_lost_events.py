"""A lost event that no later event reveals (a conversation's last message) still reaches every
messageAdded subscriber: the idle check reads storage, a resync marker makes subscribers re-read,
and the publisher retries a failed pipeline before giving it up (then marks the channels)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from redis.asyncio import Redis

from app import metrics
from app.embedded.process import EmbeddedServer
from app.events import RESYNC_MARKER, EventHub, conversation_channel
from app.models import ConversationRef, DomainEvent, EventType, Role
from app.services import messages
from db.session import Database, UnitOfWork
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers
from tests.subscriptions.conftest import Server, serve, settings_for
from tests.subscriptions.test_live import ADD, seqs, subscriber


async def _write_silently(db: Database, tenant: str, cid: uuid.UUID, content: str) -> None:
    """A message Postgres holds but whose event never reaches Redis (as if its publish was lost)."""

    async def work(uow: UnitOfWork) -> None:
        await messages.append_batch(
            uow, tenant, ConversationRef(id=cid), [messages.new_message(role=Role.USER, content=content)]
        )

    await db.run(work)


@pytest.fixture
async def quick_check(servers: Servers) -> AsyncIterator[Server]:
    async for s in serve(settings_for(servers, subscription_idle_check_s=0.5)):
        yield s


@pytest.fixture
async def no_check(servers: Servers) -> AsyncIterator[Server]:
    async for s in serve(settings_for(servers, subscription_idle_check_s=0)):
        yield s


@contextlib.asynccontextmanager
async def _conversation_with_one(
    db: Database, server: Server, tenant: str, session: str
) -> AsyncIterator[tuple[Caller, uuid.UUID]]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        caller = await make_caller(db, http, tenant)
        first = await caller.data(ADD, {"s": session, "c": "one"})
        yield caller, uuid.UUID(first["addMessage"]["conversation"]["id"])


async def test_a_lost_last_message_arrives_by_the_idle_check(quick_check: Server, db: Database, tenant: str) -> None:
    async with _conversation_with_one(db, quick_check, tenant, "idle-1") as (writer, cid):
        ws = await subscriber(quick_check, writer.key, {"s": "idle-1", "after": 0})
        try:
            assert await seqs(ws, 1) == [1]
            behind = metrics.IDLE_CHECKS.labels("behind")._value.get()
            await _write_silently(db, tenant, cid, "two, never announced")
            assert await seqs(ws, 1, wait=5) == [2]  # no event will ever come: the check found it
            assert metrics.IDLE_CHECKS.labels("behind")._value.get() == behind + 1
            await writer.data(ADD, {"s": "idle-1", "c": "three"})  # live again, nothing twice
            assert await seqs(ws, 1) == [3]
            with pytest.raises(TimeoutError):
                await ws.recv(wait=1.2)  # idle checks that find nothing new send nothing
        finally:
            await ws.close()


async def test_without_the_check_a_lost_last_message_waits(no_check: Server, db: Database, tenant: str) -> None:
    """The control: what the check is there for (0 turns it off)."""
    async with _conversation_with_one(db, no_check, tenant, "idle-2") as (writer, cid):
        ws = await subscriber(no_check, writer.key, {"s": "idle-2", "after": 0})
        try:
            assert await seqs(ws, 1) == [1]
            await _write_silently(db, tenant, cid, "two, never announced")
            with pytest.raises(TimeoutError):
                await ws.recv(wait=1.5)
            await writer.data(ADD, {"s": "idle-2", "c": "three"})  # the next event reveals the gap
            assert await seqs(ws, 2) == [2, 3]
        finally:
            await ws.close()


async def test_a_resync_marker_makes_subscribers_read_storage(
    no_check: Server, db: Database, tenant: str, servers: Servers
) -> None:
    async with _conversation_with_one(db, no_check, tenant, "idle-3") as (writer, cid):
        ws = await subscriber(no_check, writer.key, {"s": "idle-3", "after": 0})
        redis = Redis.from_url(servers.redis_url)
        try:
            assert await seqs(ws, 1) == [1]
            await _write_silently(db, tenant, cid, "two")
            await redis.publish(conversation_channel(tenant, cid), RESYNC_MARKER)
            assert await seqs(ws, 1, wait=3) == [2]
        finally:
            await redis.aclose()
            await ws.close()


def _event(tenant: str, cid: uuid.UUID) -> DomainEvent:
    return DomainEvent(EventType.STATE_CHANGED, tenant, cid, datetime.now(UTC), state_key="k")


class _Listener:
    """A plain subscriber on one channel, connected before and through the publisher's trouble."""

    def __init__(self, url: str, channel: str) -> None:
        self.client = Redis.from_url(url)
        self.channel = channel
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Listener:
        pubsub = self.client.pubsub()
        await pubsub.subscribe(self.channel)

        async def pump() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    self.received.put_nowait(message["data"])

        self._task = asyncio.create_task(pump())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.client.aclose()

    async def next(self, wait: float) -> bytes:
        return await asyncio.wait_for(self.received.get(), wait)


async def _publishing(url: str, allowed: bool) -> None:
    """PUBLISH refused by Redis itself (an ACL), every connection kept: a failure, not a hang."""
    admin = Redis.from_url(url)
    try:
        await admin.execute_command("ACL", "SETUSER", "default", "+publish" if allowed else "-publish")
    finally:
        await admin.aclose()


async def test_the_publisher_retries_a_blip_instead_of_dropping(redis_of_its_own: EmbeddedServer) -> None:
    tenant = f"lost-{uuid.uuid4().hex[:8]}"
    cid = uuid.uuid4()
    hub = EventHub(redis_of_its_own.url)
    await hub.start()
    try:
        async with _Listener(redis_of_its_own.url, conversation_channel(tenant, cid)) as listener:
            dropped = metrics.EVENTS_DROPPED._value.get()
            await _publishing(redis_of_its_own.url, allowed=False)
            hub.enqueue([_event(tenant, cid)])
            await asyncio.sleep(0.4)  # a few attempts fail
            await _publishing(redis_of_its_own.url, allowed=True)
            data = await listener.next(5)  # a later attempt lands: the event itself, late
            assert data != RESYNC_MARKER and b"state_changed" in data
            assert metrics.EVENTS_DROPPED._value.get() == dropped
    finally:
        await hub.close()


async def test_a_batch_given_up_is_followed_by_a_resync_marker_on_its_channel(redis_of_its_own: EmbeddedServer) -> None:
    tenant = f"lost-{uuid.uuid4().hex[:8]}"
    lost, other = uuid.uuid4(), uuid.uuid4()
    hub = EventHub(redis_of_its_own.url)
    await hub.start()
    try:
        async with _Listener(redis_of_its_own.url, conversation_channel(tenant, lost)) as listener:
            dropped = metrics.EVENTS_DROPPED._value.get()
            await _publishing(redis_of_its_own.url, allowed=False)
            hub.enqueue([_event(tenant, lost)])
            await hub.flush(timeout_s=10)  # every retry failed (~3 s): given up
            assert metrics.EVENTS_DROPPED._value.get() == dropped + 1
            await _publishing(redis_of_its_own.url, allowed=True)
            with pytest.raises(TimeoutError):
                await listener.next(0.3)  # nothing until the publisher has something to send
            hub.enqueue([_event(tenant, other)])  # another conversation's event carries the marker
            assert await listener.next(5) == RESYNC_MARKER
            hub.enqueue([_event(tenant, other)])
            await hub.flush(timeout_s=5)
            with pytest.raises(TimeoutError):
                await listener.next(0.5)  # said once
    finally:
        await hub.close()
