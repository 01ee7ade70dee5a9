"""The end-to-end half of tests/test_new_field_recipe.py: run (as a child process) in a copy of the
tree where the recipe of docs/architecture.md added `mood: str | None` to Message, against a fresh
database. It writes the field through every write path and reads it back through every encoding:

    addMessage and addMessages (GraphQL) → history (GraphQL, then the hot store's own entry) → the
    live event → export line → import into another tenant → the save_message action → the CRM
    webhook payload; a clientMessageId retried with another mood is IDEMPOTENCY_KEY_REUSED, and a
    mood of the wrong type is BAD_USER_INPUT with nothing written.

Prints one JSON object of what it saw and exits 0, or fails an assertion. Not collected by pytest.

    python -m tests.new_field_roundtrip DATABASE_URL REDIS_URL
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from redis.asyncio import Redis

from app import models
from app.cache import keys
from app.cache.codec import decode_messages
from app.events import RESYNC, EventHub, conversation_channel
from app.main import create_app
from app.models import ConversationRef, DomainEvent
from app.services import bulk_import, conversations, crm, transfer
from app.services.crm import CrmSyncRecord, CrmSyncStatus
from app.settings import Settings
from db.migrate import upgrade
from db.repositories import messages as message_repo
from db.session import Database, create_pool
from jobs.actions import run_action
from tests.api.conftest import make_caller
from tests.conftest import Servers
from tests.jobs.helpers import worker_state

ADD = """mutation($input: AddMessageInput!) {
  addMessage(input: $input) { created message { seq mood } conversation { id } }
}"""
ADD_MANY = """mutation($input: AddMessagesInput!) { addMessages(input: $input) { messages { seq mood } } }"""
HISTORY = """query($s: String!) { history(sessionId: $s) { edges { node { seq mood } } } }"""


def moods(rows: list[dict[str, Any]]) -> dict[int, Any]:
    return {r["seq"]: r["mood"] for r in rows}


async def main(database_url: str, redis_url: str) -> dict[str, Any]:
    assert "mood" in models.Message.__dataclass_fields__, "run in a tree with the recipe applied"
    seen: dict[str, Any] = {}
    tenant, other = f"t-{uuid.uuid4().hex[:10]}", f"o-{uuid.uuid4().hex[:10]}"
    bulk = f"b-{uuid.uuid4().hex[:10]}"
    app = create_app(Settings(_env_file=None), database_url=database_url, redis_url=redis_url)
    db = Database(await create_pool(database_url, min_size=1, max_size=4))
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
        ):
            api = await make_caller(db, http, tenant)
            other_api = await make_caller(db, http, other)
            bulk_api = await make_caller(db, http, bulk)

            first = await api.data(ADD, {"input": {"sessionId": "s", "role": "USER", "content": "hi"}})
            cid = uuid.UUID(first["addMessage"]["conversation"]["id"])
            assert first["addMessage"]["message"]["mood"] is None  # optional: old clients send nothing

            # The live event of the next append, through the real pub/sub hub.
            hub = EventHub(redis_url)
            await hub.start()
            try:
                async with hub.subscribe(conversation_channel(tenant, cid)) as sub:
                    added = await api.data(
                        ADD,
                        {
                            "input": {
                                "sessionId": "s",
                                "role": "USER",
                                "content": "how are you",
                                "mood": "curious",
                                "clientMessageId": "k-2",
                                "sources": [{"documentId": "d"}],
                            }
                        },
                    )
                    event = await asyncio.wait_for(sub.get(), 10)
                    while event is RESYNC:
                        event = await asyncio.wait_for(sub.get(), 10)
            finally:
                await hub.close()
            seen["addMessage"] = added["addMessage"]["message"]
            assert added["addMessage"]["message"] == {"seq": 2, "mood": "curious"}
            assert isinstance(event, DomainEvent) and event.message is not None
            seen["event"] = getattr(event.message, "mood", None)
            assert seen["event"] == "curious"

            batch = await api.data(
                ADD_MANY,
                {
                    "input": {
                        "sessionId": "s",
                        "messages": [
                            {"role": "ASSISTANT", "content": "fine", "mood": "calm"},
                            {"role": "USER", "content": "ok"},
                        ],
                    }
                },
            )
            seen["addMessages"] = batch["addMessages"]["messages"]
            assert moods(batch["addMessages"]["messages"]) == {3: "calm", 4: None}

            # A retry with the same key and another mood is the client's mistake, named.
            retry = await api.gql(
                ADD,
                {"input": {"sessionId": "s", "role": "USER", "content": "how are you", "mood": "sad",
                           "clientMessageId": "k-2", "sources": [{"documentId": "d"}]}},
            )  # fmt: skip
            error = retry["errors"][0]["extensions"]
            seen["retry"] = error
            assert error["code"] == "IDEMPOTENCY_KEY_REUSED" and error["fields"] == ["mood"], error

            expected = {1: None, 2: "curious", 3: "calm", 4: None}
            cold = await api.data(HISTORY, {"s": "s"})
            hot = await api.data(HISTORY, {"s": "s"})
            seen["history"] = [moods([e["node"] for e in h["history"]["edges"]]) for h in (cold, hot)]
            assert seen["history"] == [expected, expected]

            # The hot store's own entries (filled by the reads above) carry the field.
            redis = Redis.from_url(redis_url)
            try:
                raw = await redis.lrange(keys.conversation_keys(tenant, cid)[1], 0, -1)
            finally:
                await redis.aclose()
            cached = decode_messages(tenant, cid, [r for r in raw if r != keys.LOADED])
            seen["cache"] = {m.seq: getattr(m, "mood", None) for m in cached}
            assert seen["cache"] == expected, seen["cache"]

            # Export, then import into another tenant.
            async with db.read() as conn:
                conversation = await conversations.get(conn, tenant, ConversationRef(id=cid))
                line = await transfer.export_conversation(conn, conversation)
            seen["export"] = {m["seq"]: m.get("mood") for m in line["messages"]}
            assert seen["export"] == expected
            parsed = transfer.parse_line(json.loads(json.dumps(line)))
            await db.run(lambda uow: transfer.import_conversation(uow, other, parsed))
            imported = await other_api.data(HISTORY, {"s": "s"})
            seen["import"] = moods([e["node"] for e in imported["history"]["edges"]])
            assert seen["import"] == expected
            # ... and through the batched import (COPY into a stage, one set-based insert).
            await db.run(lambda uow: bulk_import.import_batch(uow, bulk, [parsed]))
            imported = await bulk_api.data(HISTORY, {"s": "s"})
            seen["bulk import"] = moods([e["node"] for e in imported["history"]["edges"]])
            assert seen["bulk import"] == expected

            # The save_message action, in-process through the job wrapper (envelope → data model).
            async with worker_state(Servers(database_url, redis_url), db, "recipe") as ctx:
                envelope = {
                    "action_id": uuid.uuid4().hex,
                    "action_type": "conversation.save_message",
                    "tenant_id": tenant,
                    "session_id": "s",
                    "data": {"role": "user", "content": "bye", "mood": "happy"},
                    "created_at": datetime.now(UTC).isoformat(),
                }
                ctx["job_id"] = envelope["action_id"]  # as arq runs it: the job id is the action_id
                answer = await run_action(ctx, "conversation.save_message", (envelope,), {})
                bad = dict(envelope, action_id=uuid.uuid4().hex, data={"role": "user", "content": "x", "mood": 7})
                ctx["job_id"] = bad["action_id"]
                refused = await run_action(ctx, "conversation.save_message", (bad,), {})
            assert answer.get("success") is True, answer
            seen["action"] = answer["data"]["message"]["mood"]
            assert answer["success"] is True and seen["action"] == "happy", answer
            seen["bad_action"] = refused["error"]
            assert refused["success"] is False and refused["error"]["code"] == "BAD_USER_INPUT", refused

            # The CRM webhook payload of the conversation's last messages (read from Postgres: seq 5 is the action's).
            async with db.read() as conn:
                conversation = await conversations.get(conn, tenant, ConversationRef(id=cid))
                stored = await message_repo.range_(conn, tenant, cid, 1, 5)
            now = datetime.now(UTC)
            record = CrmSyncRecord(
                tenant, uuid.uuid4(), cid, "closed", CrmSyncStatus.PENDING, 1, None, None, None, now, now
            )
            payload = json.loads(json.dumps(crm.build_payload(record, conversation, stored)))
            seen["webhook"] = {m["seq"]: m.get("mood") for m in payload["last_messages"]}
            assert seen["webhook"] == expected | {5: "happy"}, payload
    finally:
        await db.close()
    return seen


if __name__ == "__main__":
    upgrade(sys.argv[1])  # alembic runs its own event loop
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2])), default=str))
