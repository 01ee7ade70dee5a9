"""Live fan-out of committed domain events through Redis pub/sub.

Each API process holds ONE pub/sub connection. It subscribes to the channels its local
subscribers need (reference-counted) and fans every message out in process to per-subscriber
bounded queues; nothing is polled per subscriber. Publishing happens after commit (a
Database listener), one pipeline per unit of work.

Channels (the tenant is in every name):
- `cs:ev:{<tenant>}:c:<conversation_id>`: every event of one conversation (messageAdded);
- `cs:ev:{<tenant>}:t`: every event of the tenant (conversationEvents, sessions not yet created).

Pub/sub is at-most-once: a message published while our connection is down is lost. That is
why subscribers track seqs and backfill from storage (Postgres, the truth) whenever they see
a gap or are told the hub reconnected (RESYNC): delivery is exactly once, in order, anyway.
A loss with no later event to reveal it (the last message of a conversation) is closed three ways:
the publisher retries a failed pipeline and, if it must give up, publishes a resync marker on
the channels it dropped once Redis answers again; a SUBSCRIBE that fails makes the reader
reconnect (which re-subscribes everything and sends RESYNC); and a subscriber that hears nothing
for a while asks storage itself (IDLE, app/api/subscriptions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from app import codec, metrics
from app.models import DomainEvent

log = logging.getLogger("conversation_service.events")


def conversation_channel(tenant_id: str, conversation_id: uuid.UUID) -> str:
    return f"cs:ev:{{{tenant_id}}}:c:{conversation_id}"


def tenant_channel(tenant_id: str) -> str:
    return f"cs:ev:{{{tenant_id}}}:t"


#: Process-wide signals (not domain events): a revoked API key, `{"key_id": ..., "tenant_id": ...}`.
KEY_REVOKED_CHANNEL = "cs:auth:key-revoked"

SignalHandler = Callable[[bytes], None]
"""Called with a signal's raw payload; must not block (schedule work instead)."""
ResyncHandler = Callable[[], None]
"""Called each time the hub (re)connects: signals published while it was away are lost."""


async def announce_key_revoked(redis_url: str, key_id: str, tenant_id: str, *, timeout_s: float = 2.0) -> bool:
    """Tell every API process a key was revoked (after the revocation committed). Best effort:
    when Redis is away, processes still notice within WS_AUTH_RECHECK_S by re-checking."""
    client = Redis.from_url(redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await client.publish(KEY_REVOKED_CHANNEL, orjson.dumps({"key_id": key_id, "tenant_id": tenant_id}))
        return True
    except (RedisError, OSError) as exc:
        log.warning("could not announce the revocation of key %s (%s); re-checks will catch it", key_id, exc)
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


# --- wire format: app/codec.py (versioned; an event of another format is a gap) ---------------


def encode(event: DomainEvent) -> bytes:
    return codec.encode_event(event)


def decode(data: bytes) -> DomainEvent:
    """Raises codec.UnknownFormat for an event another version of the service published."""
    return codec.decode_event(data)


# --- subscribers ---------------------------------------------------------------------------


class _Resync:
    """Told to every subscriber after the hub reconnected: events may have been lost."""


RESYNC = _Resync()


class _Idle:
    """Returned by `Subscriber.get` when nothing came within its timeout: time to ask storage."""


IDLE = _Idle()

#: Published on a channel whose events were given up: its subscribers re-read storage (RESYNC).
#: Never valid codec output (every encoded event is a JSON object), so never taken for an event.
RESYNC_MARKER = b"cs:resync"

#: How long the publisher retries a failed pipeline before it gives the batch up (seconds).
PUBLISH_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


class SubscriberOverflow(Exception):
    pass


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[DomainEvent | _Resync]
    overflowed: bool = False

    async def get(self, idle_after: float | None = None) -> DomainEvent | _Resync | _Idle:
        """The next item; IDLE when `idle_after` seconds pass without one."""
        if self.overflowed:
            raise SubscriberOverflow
        if idle_after is None or idle_after <= 0:
            item = await self.queue.get()
        else:
            try:
                # Not wait_for: on 3.11 it can swallow a cancellation (see EventHub.subscribe).
                async with asyncio.timeout(idle_after):
                    item = await self.queue.get()
            except TimeoutError:
                return IDLE
        if self.overflowed:
            raise SubscriberOverflow
        return item

    def offer(self, item: DomainEvent | _Resync) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Never grow without bound for a slow consumer: end it; it resumes with afterSeq.
            self.overflowed = True


@dataclass(eq=False)
class _Channel:
    subscribers: set[Subscriber] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class EventHub:
    def __init__(
        self, redis_url: str, *, queue_size: int = 1000, reconnect_max_s: float = 2.0, outbox_size: int = 10_000
    ) -> None:
        self.redis_url = redis_url
        self.queue_size = queue_size
        self.reconnect_max_s = reconnect_max_s
        self._publisher = Redis.from_url(redis_url)
        self._channels: dict[str, _Channel] = {}
        self._pubsub: PubSub | None = None
        self._client: Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._lock = asyncio.Lock()
        self._outbox: asyncio.Queue[list[DomainEvent]] = asyncio.Queue(outbox_size)
        self._sender: asyncio.Task[None] | None = None
        self._signals: dict[str, list[SignalHandler]] = {}
        self._resync_handlers: list[ResyncHandler] = []
        #: Completes events before they are published (Resources adds conversation headers).
        self.enrich: Callable[[list[DomainEvent]], Awaitable[None]] | None = None
        #: Channels whose events were given up: a resync marker goes to each with the next publish.
        self._lost_channels: set[str] = set()
        #: Set when the pub/sub connection may have missed a SUBSCRIBE: the reader reconnects.
        self._reconnect_requested = False

    # publishing -----------------------------------------------------------------------------

    def enqueue(self, events: list[DomainEvent]) -> None:
        """Hand committed events to the background publisher and return at once: a write's
        response never waits on pub/sub. One task publishes, so the order is kept; whatever is
        queued when it runs goes out in one pipeline. Bounded: if Redis is away long enough to
        fill the queue, the oldest events go (subscribers backfill from Postgres on the gap)."""
        if self._outbox.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._outbox.get_nowait()
                self._outbox.task_done()
            metrics.EVENTS_DROPPED.inc()
        self._outbox.put_nowait(events)

    async def publish(self, events: list[DomainEvent]) -> None:
        """Publish now, in one pipeline (the background publisher's step; also for tools)."""
        if self.enrich is not None:
            await self.enrich(events)
        lost = set(self._lost_channels)
        async with self._publisher.pipeline(transaction=False) as pipe:
            for channel in sorted(lost):
                pipe.publish(channel, RESYNC_MARKER)
            for event in events:
                data = encode(event)
                pipe.publish(conversation_channel(event.tenant_id, event.conversation_id), data)
                pipe.publish(tenant_channel(event.tenant_id), data)
            await pipe.execute()
        self._lost_channels -= lost
        metrics.EVENTS_PUBLISHED.inc(len(events))

    async def _publish_retrying(self, batch: list[DomainEvent]) -> None:
        """Publish, retrying a failure (a Redis blip, a failover) with backoff for ~3 s; then give
        the batch up and remember its conversation channels for a resync marker."""
        for delay in (*PUBLISH_RETRY_DELAYS, None):
            try:
                await self.publish(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if delay is None:
                    metrics.EVENTS_DROPPED.inc(len(batch))
                    self._lost_channels.update(conversation_channel(e.tenant_id, e.conversation_id) for e in batch)
                    log.warning("could not publish %d events (%s); subscribers will resync", len(batch), exc)
                    return
                await asyncio.sleep(delay)

    async def _publish_forever(self) -> None:
        while True:
            batch = await self._outbox.get()
            taken = 1
            while not self._outbox.empty() and len(batch) < 500:
                batch = batch + self._outbox.get_nowait()
                taken += 1
            try:
                await self._publish_retrying(batch)
            finally:
                for _ in range(taken):
                    self._outbox.task_done()

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until everything enqueued so far is published or given up (shutdown, tests)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), timeout_s)

    # subscribing ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._run(), name="event-hub-reader")
        self._sender = asyncio.create_task(self._publish_forever(), name="event-hub-publisher")

    async def close(self) -> None:
        await self.flush()
        self._closing = True
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._drop_connection()
        await self._publisher.aclose()

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, *, confirm_timeout: float = 5.0) -> AsyncIterator[Subscriber]:
        """A queue of the channel's events. When this returns, Redis has confirmed the
        subscription: anything published from now on reaches the queue."""
        subscriber = Subscriber(asyncio.Queue(self.queue_size))
        async with self._lock:
            entry = self._channels.get(channel)
            if entry is None:
                entry = self._channels[channel] = _Channel()
                if self._pubsub is not None and self._connected.is_set():
                    try:
                        await self._pubsub.subscribe(channel)
                    except (RedisError, OSError):
                        self._reconnect_requested = True  # the reconnect subscribes it
            entry.subscribers.add(subscriber)
        metrics.SUBSCRIBERS.inc()
        try:
            with contextlib.suppress(TimeoutError):
                # Redis down: go on; the reconnect re-subscribes and sends RESYNC. Not
                # wait_for: on 3.11 it can swallow a cancellation that lands as the wait
                # completes, and the subscriber (and its connection) would never end.
                async with asyncio.timeout(confirm_timeout):
                    await entry.confirmed.wait()
            if not entry.confirmed.is_set() and self._connected.is_set():
                self._reconnect_requested = True  # connected yet unconfirmed: the SUBSCRIBE may be lost
            yield subscriber
        finally:
            metrics.SUBSCRIBERS.dec()
            async with self._lock:
                entry.subscribers.discard(subscriber)
                if not entry.subscribers and self._channels.get(channel) is entry:
                    del self._channels[channel]
                    if self._pubsub is not None and self._connected.is_set():
                        with contextlib.suppress(RedisError, OSError):
                            await self._pubsub.unsubscribe(channel)

    async def listen(self, channel: str, handler: SignalHandler, on_resync: ResyncHandler | None = None) -> None:
        """Hear a signal channel for the life of the hub (no queue: the handler runs in the
        reader and must return at once). `on_resync` runs after every (re)connect."""
        async with self._lock:
            handlers = self._signals.setdefault(channel, [])
            handlers.append(handler)
            if on_resync is not None:
                self._resync_handlers.append(on_resync)
            if len(handlers) == 1 and self._pubsub is not None and self._connected.is_set():
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.subscribe(channel)

    # the reader -----------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                await self._connect()
                delay = 0.05
                await self._read()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("event hub lost Redis (%s); reconnecting", exc)
            except Exception:
                log.exception("event hub reader failed; reconnecting")
            self._connected.clear()
            for entry in self._channels.values():
                entry.confirmed.clear()
            await self._drop_connection()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    async def _connect(self) -> None:
        self._client = Redis.from_url(self.redis_url, socket_connect_timeout=2, health_check_interval=10)
        self._pubsub = self._client.pubsub()
        async with self._lock:
            channels = [*self._channels, *self._signals]
            # A connection needs at least one subscription before it can be read.
            await self._pubsub.subscribe("cs:ev:hub", *channels)
            self._connected.set()
        metrics.HUB_CONNECTS.inc()

    async def _read(self) -> None:
        assert self._pubsub is not None
        resynced = False
        while not self._closing:
            if self._reconnect_requested:
                self._reconnect_requested = False
                raise ConnectionError("a subscription was not confirmed: reconnecting to re-subscribe")
            message = await self._pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            if kind == "subscribe":
                entry = self._channels.get(channel)
                if entry is not None:
                    entry.confirmed.set()
                if channel == "cs:ev:hub" and not resynced:
                    resynced = True
                    # Whatever was published while we were away is in Postgres: tell everyone.
                    for entry in self._channels.values():
                        for subscriber in entry.subscribers:
                            subscriber.offer(RESYNC)
                    for on_resync in self._resync_handlers:
                        _call_safely(on_resync)
                continue
            if kind != "message":
                continue
            signal_handlers = self._signals.get(channel)
            if signal_handlers:
                for handler in signal_handlers:
                    _call_safely(handler, message["data"])
                continue
            entry = self._channels.get(channel)
            if entry is None or not entry.subscribers:
                continue
            if message["data"] == RESYNC_MARKER:
                for subscriber in entry.subscribers:
                    subscriber.offer(RESYNC)
                continue
            try:
                event = decode(message["data"])
            except codec.UnknownFormat as exc:
                # Published by another version (a rolling deploy): never guess at its fields. It
                # is a gap like a lost event: subscribers re-read Postgres, the truth.
                log.warning("event of another format on %s (%s): subscribers resync", channel, exc)
                metrics.EVENTS_UNKNOWN_FORMAT.inc()
                for subscriber in entry.subscribers:
                    subscriber.offer(RESYNC)
                continue
            except Exception:
                log.exception("undecodable event on %s", channel)
                continue
            for subscriber in entry.subscribers:
                subscriber.offer(event)

    async def _drop_connection(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


def _call_safely(handler: Callable[..., None], *args: Any) -> None:
    try:
        handler(*args)
    except Exception:
        log.exception("event hub signal handler %r failed", handler)


EventFilter = Callable[[DomainEvent], bool]
