"""A client for other Python services: enqueue a domain action and await its answer.

    from jobs.client import ActionClient

    async with await ActionClient.connect("redis://localhost:6379/0") as client:
        answer = await client.call(
            "conversation.save_message",
            tenant_id="acme",
            session_id="s-42",
            data={"role": "user", "content": "hello"},
        )
        if answer["success"]:
            print(answer["data"]["message"]["seq"])
        else:
            print(answer["error"]["code"], answer["error"]["message"])

`call` builds the envelope (a fresh `action_id` unless given: pass your own to make a retry
safe), enqueues it with `_job_id=action_id` and the JSON serializer, and waits on this client's
callback list. Re-sending an `action_id` arq still knows (queued, running, or its result kept for
ARQ_KEEP_RESULT_S) enqueues nothing: the client then returns the stored answer. One reader task
per client serves any number of concurrent calls. docs/jobs.md has the envelope and the answers.
With `signing_key=(producer id, secret)` every envelope is signed (jobs/signing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job

from app import tracing
from app.queue import json_deserializer, json_serializer
from jobs import signing

log = logging.getLogger("conversation_service.client")

DEFAULT_QUEUE = "conversation-service"


class ActionClient:
    def __init__(
        self,
        redis: ArqRedis,
        *,
        queue_name: str = DEFAULT_QUEUE,
        owns_redis: bool = False,
        signing_key: tuple[str, str] | None = None,
    ) -> None:
        self.redis = redis
        self.queue_name = queue_name
        #: (producer id, secret): envelopes are signed (workers with ACTION_SIGNING_KEYS require it).
        self.signing_key = signing_key
        #: This client's callback list (answers expire with CALLBACK_TTL_S if nobody reads them).
        self.reply_queue = f"{queue_name}:replies:{uuid.uuid4().hex}"
        self._owns_redis = owns_redis
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, redis_url: str, *, queue_name: str = DEFAULT_QUEUE, signing_key: tuple[str, str] | None = None
    ) -> ActionClient:
        redis = await create_pool(
            RedisSettings.from_dsn(redis_url),
            job_serializer=json_serializer,
            job_deserializer=json_deserializer,
            default_queue_name=queue_name,
        )
        return cls(redis, queue_name=queue_name, owns_redis=True, signing_key=signing_key)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        for future in self._waiting.values():
            future.cancel()
        if self._owns_redis:
            await self.redis.aclose()

    def envelope(
        self,
        action_type: str,
        *,
        tenant_id: str,
        data: dict[str, Any] | None = None,
        session_id: str | None = None,
        conversation_id: str | uuid.UUID | None = None,
        action_id: str | None = None,
        correlation_id: str | None = None,
        reply: bool = True,
        traceparent: str | None = None,
    ) -> dict[str, Any]:
        action_id = action_id or uuid.uuid4().hex
        envelope: dict[str, Any] = {
            "action_id": action_id,
            "action_type": action_type,
            "tenant_id": tenant_id,
            "data": data or {},
            "correlation_id": correlation_id or action_id,
            "created_at": datetime.now(UTC).isoformat(),
        }
        if session_id is not None:
            envelope["session_id"] = session_id
        if conversation_id is not None:
            envelope["conversation_id"] = str(conversation_id)
        if reply:
            envelope["callback_queue_name"] = self.reply_queue
        # W3C trace context: the worker's span joins the caller's trace (given, or the current span's).
        traceparent = traceparent or tracing.current_traceparent()
        if traceparent is not None:
            envelope["traceparent"] = traceparent
        return envelope

    async def send(self, envelope: dict[str, Any]) -> bool:
        """Enqueue without waiting (signed, with a signing key); False when arq already holds this action_id."""
        if self.signing_key is not None:
            envelope = signing.sign(envelope, *self.signing_key)
        job = await self.redis.enqueue_job(
            envelope["action_type"], envelope, _job_id=envelope["action_id"], _queue_name=self.queue_name
        )
        return job is not None

    async def call(
        self,
        action_type: str,
        *,
        tenant_id: str,
        data: dict[str, Any] | None = None,
        session_id: str | None = None,
        conversation_id: str | uuid.UUID | None = None,
        action_id: str | None = None,
        correlation_id: str | None = None,
        wait_s: float = 30.0,
        traceparent: str | None = None,
    ) -> dict[str, Any]:
        """Run an action and return its answer `{correlation_id, action_id, success, data | error}`.
        Raises TimeoutError when no answer comes within `wait_s` seconds."""
        envelope = self.envelope(
            action_type,
            tenant_id=tenant_id,
            data=data,
            session_id=session_id,
            conversation_id=conversation_id,
            action_id=action_id,
            correlation_id=correlation_id,
            traceparent=traceparent,
        )
        key = envelope["action_id"]
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[key] = answer
        self._start_reader()
        try:
            async with asyncio.timeout(wait_s):
                if await self.send(envelope):
                    return await answer
                # A repeated action_id: answered from arq's kept result (or its callback, if it was ours).
                stored = asyncio.ensure_future(self._stored_answer(key))
                try:
                    done, _ = await asyncio.wait({answer, stored}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stored.cancel()
                return (answer if answer in done else stored).result()
        finally:
            self._waiting.pop(key, None)

    async def _stored_answer(self, action_id: str) -> dict[str, Any]:
        job = Job(action_id, self.redis, _queue_name=self.queue_name, _deserializer=json_deserializer)
        result: dict[str, Any] = await job.result(poll_delay=0.05)
        return result

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_answers(), name=f"answers:{self.reply_queue}")

    async def _read_answers(self) -> None:
        while True:
            item = await self.redis.brpop([self.reply_queue], timeout=1)  # type: ignore[misc]
            if item is None:
                continue
            try:
                answer = json.loads(item[1])
                future = self._waiting.get(answer.get("action_id"))
            except (ValueError, AttributeError):
                log.warning("ignoring a malformed answer on %s", self.reply_queue)
                continue
            if future is not None and not future.done():
                future.set_result(answer)
