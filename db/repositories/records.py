"""asyncpg rows → service records. Kept beside the SQL that selects the columns."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.models import Conversation, Message, Role, Source, StateEntry, Status

CONVERSATION_COLUMNS = (
    "tenant_id, id, session_id, user_id, agent_id, channel, title, status, tags, metadata, created_at, "
    "updated_at, last_message_at, last_activity_at, closed_at, close_reason, message_count, token_count, "
    "last_seq"
)
MESSAGE_COLUMNS = (
    "tenant_id, conversation_id, seq, id, client_message_id, role, content, name, tool_call_id, "
    "tool_calls, token_count, metadata, execution, created_at"
)


def prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


_ROLES = {r.value: r for r in Role}
_STATUSES = {s.value: s for s in Status}


def conversation(row: asyncpg.Record | dict[str, Any]) -> Conversation:
    return Conversation(
        tenant_id=row["tenant_id"],
        id=row["id"],
        session_id=row["session_id"],
        user_id=row["user_id"],
        agent_id=row["agent_id"],
        channel=row["channel"],
        title=row["title"],
        status=_STATUSES[row["status"]],
        tags=list(row["tags"]),
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_message_at=row["last_message_at"],
        last_activity_at=row["last_activity_at"],
        closed_at=row["closed_at"],
        close_reason=row["close_reason"],
        message_count=row["message_count"],
        token_count=row["token_count"],
        last_seq=row["last_seq"],
    )


def message(row: asyncpg.Record | dict[str, Any]) -> Message:
    return Message(
        tenant_id=row["tenant_id"],
        conversation_id=row["conversation_id"],
        seq=row["seq"],
        id=row["id"],
        client_message_id=row["client_message_id"],
        role=_ROLES[row["role"]],
        content=row["content"],
        name=row["name"],
        tool_call_id=row["tool_call_id"],
        tool_calls=row["tool_calls"],
        token_count=row["token_count"],
        metadata=row["metadata"],
        execution=row["execution"],
        created_at=row["created_at"],
    )


def source(row: asyncpg.Record) -> Source:
    return Source(
        document_id=row["document_id"],
        chunk_id=row["chunk_id"],
        title=row["title"],
        uri=row["uri"],
        score=row["score"],
        snippet=row["snippet"],
    )


def state(row: asyncpg.Record) -> StateEntry:
    return StateEntry(
        conversation_id=row["conversation_id"],
        key=row["key"],
        value=row["value"],
        version=row["version"],
        updated_at=row["updated_at"],
    )
