"""Plain async factories for test data, through the service layer."""

from __future__ import annotations

from typing import Any

from app.models import AppendResult, Conversation, ConversationRef, Role
from app.services import conversations, messages
from db.session import Database


async def create_conversation(db: Database, tenant: str, **fields: Any) -> Conversation:
    return await db.run(lambda uow: conversations.create(uow, tenant, **fields))


async def add_message(
    db: Database,
    tenant: str,
    conversation: Conversation | None = None,
    *,
    session_id: str | None = None,
    role: Role = Role.USER,
    content: str = "hello",
    expected_seq: int | None = None,
    **fields: Any,
) -> AppendResult:
    target = ConversationRef(id=conversation.id) if conversation else ConversationRef(session_id=session_id)
    msg = messages.new_message(role=role, content=content, **fields)
    return await db.run(lambda uow: messages.append(uow, tenant, target, msg, expected_seq=expected_seq))


async def count_rows(db: Database, table: str, tenant: str) -> int:
    async with db.read() as conn:
        value = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant)
        return int(value)
