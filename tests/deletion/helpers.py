"""Callers with real keys over real HTTP, and the generic "is anything of it left?" checks."""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
from redis.asyncio import Redis

from app.services import tenants
from db.session import Database
from tests.api.conftest import Caller

CREATE = "mutation($i: CreateConversationInput!) { createConversation(input: $i) { id sessionId } }"
ADD = "mutation($i: AddMessageInput!) { addMessage(input: $i) { message { seq } conversation { id } } }"
SET_STATE = "mutation($i: SetStateInput!) { setState(input: $i) { version } }"
DELETE = "mutation($id: ID!) { deleteConversation(id: $id) { conversations messages stateKeys } }"
ERASE = "mutation($u: String!) { eraseEndUser(userId: $u) { conversations messages stateKeys } }"
HISTORY = "query($id: ID!) { history(conversationId: $id, last: 50) { edges { node { seq content } } } }"
SEARCH = "query($q: String!) { searchMessages(query: $q) { edges { node { conversationId content } } } }"


async def caller(db: Database, http: httpx.AsyncClient, tenant: str, scopes: str) -> tuple[Caller, str]:
    """A caller with a fresh key of these scopes, and the key's id (the audit actor)."""

    async def setup(uow: Any) -> tuple[str, str]:
        await tenants.ensure_tenant(uow, tenant)
        key, secret = await tenants.create_api_key(uow, tenant, tenants.parse_scopes(scopes))
        return str(key.id), secret

    key_id, secret = await db.run(setup)
    return Caller(http=http, tenant=tenant, key=secret), key_id


async def conversation_with_content(
    api: Caller, session_id: str, user_id: str, marker: str, *, messages: int = 3
) -> str:
    """A conversation holding `marker` in its title, metadata, messages, sources and state."""
    created = await api.data(
        CREATE, {"i": {"sessionId": session_id, "userId": user_id, "title": marker, "metadata": {"m": marker}}}
    )
    cid: str = created["createConversation"]["id"]
    for n in range(messages):
        source = {"documentId": f"doc-{marker}", "snippet": marker}
        await api.data(
            ADD,
            {
                "i": {
                    "conversationId": cid,
                    "role": "USER",
                    "content": f"{marker} message {n}",
                    "clientMessageId": f"cm-{uuid.uuid4()}",
                    "sources": [source],
                }
            },
        )
    await api.data(SET_STATE, {"i": {"conversationId": cid, "key": "kept", "value": {"v": marker}}})
    await api.data(SET_STATE, {"i": {"conversationId": cid, "key": "gone", "value": marker}})
    await api.data('mutation($c: ID!) { deleteState(conversationId: $c, key: "gone") }', {"c": cid})
    return cid


async def tenant_tables(db: Database) -> list[tuple[str, set[str]]]:
    """Every table with a tenant_id column and its columns: a table added later is covered."""
    async with db.read() as conn:
        rows = await conn.fetch(
            """SELECT c.table_name, array_agg(c.column_name::text) AS columns
               FROM information_schema.columns c
               JOIN information_schema.tables t USING (table_schema, table_name)
               WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
               GROUP BY c.table_name HAVING bool_or(c.column_name = 'tenant_id')
               ORDER BY c.table_name"""
        )
    return [(r["table_name"], set(r["columns"])) for r in rows]


async def leftovers(
    db: Database, tenant: str, conversation_ids: list[str], user_id: str | None, needles: list[str]
) -> dict[str, int]:
    """Rows of `tenant` in every tenant table that belong to these conversations (by
    conversation_id, or id in conversations), to the user (by user_id), or whose text holds one
    of `needles` anywhere (content that a table without those columns could still carry)."""
    ids = [uuid.UUID(c) for c in conversation_ids]
    found: dict[str, int] = {}
    async with db.read() as conn:
        for table, columns in await tenant_tables(db):
            clauses = ["t::text LIKE '%' || n || '%'"]
            if "conversation_id" in columns:
                clauses.append("t.conversation_id = ANY($2::uuid[])")
            if table == "conversations":
                clauses.append("t.id = ANY($2::uuid[])")
            if "user_id" in columns and user_id is not None:
                clauses.append("t.user_id = $4")
            sql = (
                f'SELECT count(*) FROM "{table}" t, unnest($3::text[]) n '
                f"WHERE t.tenant_id = $1 AND ({' OR '.join(clauses)}) "
                # Every parameter typed, whichever clauses this table uses.
                "AND cardinality($2::uuid[]) >= 0 AND $4::text IS NOT NULL"
            )
            count = await conn.fetchval(sql, tenant, ids, needles, user_id or "")
            if count:
                found[table] = count
    return found


async def cached_keys(redis: Redis, conversation_ids: list[str]) -> dict[str, Any]:
    """Every Redis key naming one of the conversations, or holding one of their ids as its value,
    with what it holds (a hash's fields, a list's length, a string): in the single Redis and, when
    the hot store is a Redis Cluster (REDIS_CLUSTER_NODES, `pytest --cluster citus`), on its masters."""
    found = await _cached_keys_on(redis, conversation_ids)
    for seed in filter(None, os.environ.get("REDIS_CLUSTER_NODES", "").split(",")):
        host, _, port = seed.strip().rpartition(":")
        node = Redis(host=host or "127.0.0.1", port=int(port))
        try:
            # Masters only: a replica may lag behind a deletion the master already made.
            if (await node.execute_command("ROLE"))[0] == b"master":  # type: ignore[no-untyped-call]
                found.update(await _cached_keys_on(node, conversation_ids))
        finally:
            await node.aclose()
    return found


async def _cached_keys_on(redis: Redis, conversation_ids: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    async for raw in redis.scan_iter(match="*", count=1000):
        key = raw.decode()
        kind = (await redis.type(raw)).decode()
        value: Any = None
        if kind == "hash":
            fields: dict[bytes, bytes] = await redis.hgetall(raw)  # type: ignore[misc]
            value = {k.decode(): v for k, v in fields.items()}
        elif kind == "list":
            value = await redis.lrange(raw, 0, -1)  # type: ignore[misc]
        elif kind == "string":
            value = await redis.get(raw)
        text = key + repr(value)
        if any(c in text for c in conversation_ids):
            found[key] = value
    return found


def holds_content(cached: dict[str, Any]) -> dict[str, Any]:
    """Keys that are more than a tombstone (a header holding only its version `v` and boot id
    `b`, kept a minute to fence fills that started before the deletion)."""
    return {k: v for k, v in cached.items() if not (isinstance(v, dict) and set(v) <= {"v", "b"})}
