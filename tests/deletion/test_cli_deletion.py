"""`conversation-service delete-conversation` and `erase-user`, as an operator runs them (a
subprocess against the test servers): the same path as the API, audited as 'cli'."""

from __future__ import annotations

import uuid

import httpx
import pytest
from redis.asyncio import Redis

from db.session import Database
from tests.conftest import Servers
from tests.deletion.helpers import HISTORY, cached_keys, caller, conversation_with_content, holds_content, leftovers
from tests.subscriptions.conftest import Server
from tests.test_cli import cli


@pytest.fixture
async def http(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=30)


async def test_cli_deletes_and_erases_through_the_deletion_service(
    servers: Servers, db: Database, redis: Redis, http: httpx.AsyncClient, tenant: str
) -> None:
    marker = "zq" + uuid.uuid4().hex[:12]
    writer, _ = await caller(db, http, tenant, "read,write")
    one = await conversation_with_content(writer, f"a-{uuid.uuid4()}", "cli-user", marker)
    two = await conversation_with_content(writer, f"b-{uuid.uuid4()}", "cli-user", marker)
    await writer.data(HISTORY, {"id": one})
    assert holds_content(await cached_keys(redis, [one]))

    done = cli(servers, "delete-conversation", "--tenant", tenant, one)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 conversations, 3 messages, 1 state keys" in done.stdout
    assert holds_content(await cached_keys(redis, [one])) == {}
    erased = cli(servers, "erase-user", "--tenant", tenant, "cli-user")
    assert erased.returncode == 0, erased.stderr
    assert "deleted 1 conversations, 3 messages, 1 state keys" in erased.stdout
    assert await leftovers(db, tenant, [one, two], "cli-user", [marker]) == {}
    async with db.read() as conn:
        audit = await conn.fetch("SELECT actor, action FROM audit_log WHERE tenant_id = $1 ORDER BY at", tenant)
    assert [(a["actor"], a["action"]) for a in audit] == [("cli", "deleteConversation"), ("cli", "eraseEndUser")]

    unknown = cli(servers, "erase-user", "--tenant", "no-such-" + uuid.uuid4().hex[:6], "cli-user")
    assert unknown.returncode == 1 and "no such tenant" in unknown.stderr
    bad = cli(servers, "delete-conversation", "--tenant", tenant, "not-a-uuid")
    assert bad.returncode == 1 and "BAD_USER_INPUT" in bad.stderr
    await http.aclose()
