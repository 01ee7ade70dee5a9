"""An event of another codec format (published by another version of the service) is a gap:
subscribers re-read Postgres and get the right message; nothing crashes, later events flow."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
from redis.asyncio import Redis

from app.cache.scripts import evict
from app.events import conversation_channel
from app.models import ConversationRef, Role
from app.services import messages
from db.session import Database, UnitOfWork
from tests.api.conftest import Caller
from tests.conftest import Servers
from tests.subscriptions.conftest import Server
from tests.subscriptions.test_live import ADD, subscriber


async def test_a_future_version_event_is_read_from_postgres(
    server: Server, writer: Caller, db: Database, servers: Servers
) -> None:
    first = await writer.data(ADD, {"s": "fmt-1", "c": "one"})
    cid = uuid.UUID(first["addMessage"]["conversation"]["id"])
    ws = await subscriber(server, writer.key, {"s": "fmt-1", "after": 0})
    redis = Redis.from_url(servers.redis_url)
    try:
        msg = await ws.recv()
        assert msg["payload"]["data"]["messageAdded"]["seq"] == 1

        # A message only Postgres knows of (written without this service's after-commit
        # listeners, the server's cache entry dropped), announced by a newer version's event
        # whose fields say something else.
        async def work(uow: UnitOfWork) -> None:
            batch = [messages.new_message(role=Role.USER, content="two, from Postgres")]
            await messages.append_batch(uow, writer.tenant, ConversationRef(id=cid), batch)

        await db.run(work)
        await evict(redis, [(writer.tenant, cid)])
        future = {
            "fv": "99.0",
            "type": "message_added",
            "tenant_id": writer.tenant,
            "conversation_id": str(cid),
            "at": datetime.now(UTC).isoformat(),
            "message": {"seq": 2, "content": "a field this version does not know", "mood": "?"},
        }
        await redis.publish(conversation_channel(writer.tenant, cid), orjson.dumps(future))
        msg = await ws.recv()
        assert msg["type"] == "next", msg
        assert msg["payload"]["data"]["messageAdded"] == {"seq": 2, "content": "two, from Postgres", "role": "USER"}

        await writer.data(ADD, {"s": "fmt-1", "c": "three"})  # the stream goes on
        msg = await ws.recv()
        assert msg["payload"]["data"]["messageAdded"]["seq"] == 3
    finally:
        await redis.aclose()
        await ws.close()
