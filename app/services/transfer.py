"""Export and import: one JSON line per conversation (docs/jobs.md, "Export and import").

Export writes each conversation with its messages (and their sources) and its state, with ids,
seqs, times and token counts as stored. Import writes them into a tenant as they were:

- the conversation is found by sessionId in the target tenant, or created with the exported
  fields (its id is kept unless the target tenant already uses it);
- a message already there is skipped: the same clientMessageId, or, for a message without one,
  the same id. The same clientMessageId with another payload is IDEMPOTENCY_KEY_REUSED. So importing a file twice adds nothing, and an import that stopped half-way can
  simply be run again;
- new messages are appended after the conversation's last seq, in the file's order, keeping their
  ids, times and counts (a message time earlier than the previous message's is raised to it:
  created_at never decreases along seq);
- state keys the conversation does not have are added with their value and version.

Legacy data (the seeds' Redis store) comes in the same way: write it as these lines.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app import tokens
from app.errors import BadUserInput, NotFound, RetryTransaction
from app.models import (
    Conversation,
    ConversationFilter,
    ConversationOrder,
    DomainEvent,
    EventType,
    Message,
    NewMessage,
    Role,
    Source,
    Status,
)
from app.services import idempotency, messages
from app.services import limits as check
from app.services.actions import conversation_json, message_json, state_json, with_new_message_fields
from app.services.conversations import validate_filter
from app.services.limits import DEFAULT_LIMITS, Limits
from db.repositories import conversations as conversation_repo
from db.repositories import maintenance as maintenance_repo
from db.repositories import messages as message_repo
from db.repositories import state as state_repo
from db.repositories import transfer as repo
from db.repositories.transfer import ImportedMessage
from db.session import Connection, Database, UnitOfWork

FORMAT = "conversation-service/conversation@1"
EXPORT_PAGE = 100
MESSAGE_CHUNK = 1000


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


async def export_tenants(db: Database, tenant_ids: list[str] | None) -> list[str]:
    """The tenants asked for (validated), or every tenant that has conversations."""
    if tenant_ids:
        wanted = [check.tenant_id(t) for t in tenant_ids]
        async with db.read() as conn:
            # A mistyped tenant would export nothing and exit 0: it is an error instead.
            known = await repo.known_tenants(conn, wanted)
        missing = [t for t in wanted if t not in known]
        if missing:
            raise NotFound(f"no such tenant: {', '.join(missing)} (see `conversation-service tenant create`)")
        return wanted
    async with db.read() as conn:
        return await maintenance_repo.tenants_with_rows(conn, "conversations")


def export_filter(created_from: datetime | None, created_to: datetime | None) -> ConversationFilter:
    return validate_filter(ConversationFilter(created_from=created_from, created_to=created_to), DEFAULT_LIMITS)


async def count(db: Database, tenant_ids: list[str], f: ConversationFilter) -> int:
    async with db.read() as conn:
        return sum([await conversation_repo.count(conn, t, f) for t in tenant_ids])


async def export_conversations(
    db: Database, tenant_ids: list[str], f: ConversationFilter
) -> AsyncIterator[dict[str, Any]]:
    """Lines in (tenant, createdAt, id) order; a connection is held per conversation, never
    across a yield."""
    for tenant_id in tenant_ids:
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            async with db.read() as conn:
                page = await conversation_repo.list_page(
                    conn, tenant_id, f, ConversationOrder.CREATED_AT_ASC, EXPORT_PAGE, after
                )
            for conversation in page:
                async with db.read() as conn:
                    line = await export_conversation(conn, conversation)
                yield line
            if len(page) < EXPORT_PAGE:
                break
            after = (page[-1].created_at, page[-1].id)


async def export_conversation(conn: Connection, conversation: Conversation) -> dict[str, Any]:
    tenant_id = conversation.tenant_id
    out_messages: list[dict[str, Any]] = []
    for lo in range(1, conversation.last_seq + 1, MESSAGE_CHUNK):
        chunk = await message_repo.range_(conn, tenant_id, conversation.id, lo, lo + MESSAGE_CHUNK - 1)
        sources = await message_repo.sources_for(conn, tenant_id, [(m.conversation_id, m.seq) for m in chunk])
        for m in chunk:
            m.sources = sources[(m.conversation_id, m.seq)]
            out_messages.append(message_json(m))
    state = await state_repo.list_(conn, tenant_id, conversation.id)
    return {
        "format": FORMAT,
        "tenant_id": tenant_id,
        "conversation": conversation_json(conversation),
        "messages": out_messages,
        "state": [state_json(s) for s in state],
    }


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def as_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # legacy data without an offset is UTC
    return value


class SourceRecord(_Record):
    document_id: str
    chunk_id: str | None = None
    title: str | None = None
    uri: str | None = None
    score: float | None = None
    snippet: str | None = None


class MessageRecord(_Record):
    id: uuid.UUID | None = None
    seq: int | None = None
    client_message_id: str | None = None
    role: Role
    content: str = ""
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: Any = None
    token_count: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    execution: dict[str, Any] | None = None
    created_at: datetime | None = None
    sources: list[SourceRecord] = Field(default_factory=list)

    @field_validator("role", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


if not TYPE_CHECKING:  # a NewMessage field not declared above (a new optional one) is read by name
    MessageRecord = with_new_message_fields(MessageRecord)


class StateRecord(_Record):
    key: str
    value: Any
    version: int = 1
    updated_at: datetime | None = None


class ConversationRecord(_Record):
    id: uuid.UUID | None = None
    session_id: str | None = None
    user_id: str | None = None
    agent_id: str | None = None
    channel: str | None = None
    title: str | None = None
    status: Status = Status.ACTIVE
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    closed_at: datetime | None = None
    close_reason: str | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class ConversationLine(_Record):
    format: str | None = None
    tenant_id: str | None = None
    conversation: ConversationRecord
    messages: list[MessageRecord] = Field(default_factory=list)
    state: list[StateRecord] = Field(default_factory=list)


def parse_line(value: Any) -> ConversationLine:
    try:
        line = ConversationLine.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "line"
        raise BadUserInput(f"{where}: {err['msg']}", field=where) from None
    if line.format is not None and line.format != FORMAT:
        raise BadUserInput(f"unknown format {line.format!r} (this version reads {FORMAT!r})", field="format")
    if line.conversation.session_id is None and line.conversation.id is None:
        raise BadUserInput("conversation needs a session_id or an id", field="conversation.session_id")
    return line


def _check_json_depths(line: ConversationLine, max_depth: int) -> None:
    """The depth rule of every write (limits.json_depth): a deeper value could not be read back."""
    check.json_depth(line.conversation.metadata, "conversation.metadata", max_depth)
    for i, m in enumerate(line.messages):
        check.json_depth(m.metadata, f"messages.{i}.metadata", max_depth)
        check.json_depth(m.tool_calls, f"messages.{i}.tool_calls", max_depth)
    for i, s in enumerate(line.state):
        check.json_depth(s.value, f"state.{i}.value", max_depth)


def checked_session_id(line: ConversationLine, limits: Limits) -> str:
    """The line's sessionId, after the checks every import of it makes before touching the database."""
    session_id = line.conversation.session_id or str(line.conversation.id)
    check.text(session_id, "conversation.session_id", limits.max_id_length, required=True)
    _check_json_depths(line, limits.max_json_depth)
    return session_id


@dataclass(slots=True)
class ImportResult:
    conversation: Conversation
    created: bool
    messages_added: int
    messages_skipped: int
    state_added: int


@dataclass(slots=True)
class ImportReport:
    lines: int = 0
    conversations_created: int = 0
    messages_added: int = 0
    messages_skipped: int = 0
    state_added: int = 0
    tenants: set[str] = field(default_factory=set)

    def add(self, result: ImportResult) -> None:
        self.lines += 1
        self.conversations_created += result.created
        self.messages_added += result.messages_added
        self.messages_skipped += result.messages_skipped
        self.state_added += result.state_added
        self.tenants.add(result.conversation.tenant_id)


async def check_reused_keys(
    conn: Connection, tenant_id: str, conversation_id: uuid.UUID, lines: list[MessageRecord]
) -> None:
    """A line whose clientMessageId is already there is skipped only when it is that message:
    the same key with another payload is IDEMPOTENCY_KEY_REUSED (app/services/idempotency)."""
    if not lines:
        return
    stored = await message_repo.by_client_message_ids(
        conn, tenant_id, conversation_id, [m.client_message_id for m in lines if m.client_message_id is not None]
    )
    by_key = {m.client_message_id: m for m in await messages.with_sources(conn, tenant_id, stored)}
    check_replays(lines, by_key)


def check_replays(lines: list[MessageRecord], by_key: dict[str | None, Message]) -> None:
    """check_reused_keys' comparison, the stored messages (with their sources) given by clientMessageId;
    the first line (in `lines`' order) that differs from its original is refused."""
    for m in lines:
        original = by_key.get(m.client_message_id)
        if original is None:
            continue
        idempotency.check_replay(
            NewMessage(
                role=m.role,
                content=m.content,
                name=m.name,
                tool_call_id=m.tool_call_id,
                tool_calls=m.tool_calls,
                metadata=dict(m.metadata),
                sources=[Source(s.document_id, s.chunk_id, s.title, s.uri, s.score, s.snippet) for s in m.sources],
                execution=m.execution,
                client_message_id=m.client_message_id,
                **messages.extra_of(m),
            ),
            original,
        )


async def import_conversation(
    uow: UnitOfWork, tenant_id: str, line: ConversationLine, limits: Limits = DEFAULT_LIMITS
) -> ImportResult:
    """Write one line into `tenant_id` (rules in the module docstring), in one transaction."""
    check.tenant_id(tenant_id)
    conn = await uow.begin()
    c = line.conversation
    session_id = checked_session_id(line, limits)
    now = datetime.now(UTC)
    conversation = await conversation_repo.get(conn, tenant_id, session_id=session_id, for_update=True)
    created = conversation is None
    if conversation is None:
        wanted = c.id or uuid.uuid4()
        if await repo.id_taken(conn, tenant_id, wanted):
            wanted = uuid.uuid4()
        created_at = as_utc(c.created_at) or now
        conversation = await repo.insert_conversation(
            conn,
            tenant_id,
            id=wanted,
            session_id=session_id,
            user_id=c.user_id,
            agent_id=c.agent_id,
            channel=c.channel,
            title=c.title,
            status=c.status.value,
            tags=list(c.tags),
            metadata=dict(c.metadata),
            created_at=created_at,
            updated_at=as_utc(c.updated_at) or created_at,
            closed_at=as_utc(c.closed_at) if c.status is not Status.ACTIVE else None,
            close_reason=c.close_reason if c.status is not Status.ACTIVE else None,
        )
        if conversation is None:  # another import created this sessionId a moment ago
            raise RetryTransaction
    client_ids, ids = await repo.message_keys(conn, tenant_id, conversation.id)
    ordered = ordered_messages(line)
    await check_reused_keys(conn, tenant_id, conversation.id, [m for m in ordered if m.client_message_id in client_ids])
    new, skipped, previous_at = plan_messages(conversation, ordered, client_ids, ids, now)
    for i in range(0, len(new), MESSAGE_CHUNK):
        await repo.insert_messages(conn, tenant_id, conversation.id, new[i : i + MESSAGE_CHUNK])
    if new:
        assert previous_at is not None
        conversation = await repo.advance(
            conn, tenant_id, conversation.id, len(new), sum(m.token_count for m in new), previous_at
        )
    state_added = await repo.insert_state(
        conn,
        tenant_id,
        conversation.id,
        [(s.key, s.value, s.version, as_utc(s.updated_at) or now) for s in line.state],
    )
    if created or new or state_added:
        # Caches drop their copy (an import can insert below a cached tail); subscribers ignore UPDATED.
        uow.emit(DomainEvent(EventType.UPDATED, tenant_id, conversation.id, now, conversation=conversation))
    return ImportResult(
        conversation=conversation,
        created=created,
        messages_added=len(new),
        messages_skipped=skipped,
        state_added=state_added,
    )


def ordered_messages(line: ConversationLine) -> list[MessageRecord]:
    """The file's order, or seq order when every message has one."""
    if all(m.seq is not None for m in line.messages):
        return sorted(line.messages, key=lambda m: m.seq or 0)
    return list(line.messages)


def plan_messages(
    conversation: Conversation,
    ordered: list[MessageRecord],
    client_ids: set[str],
    ids: set[uuid.UUID],
    now: datetime,
) -> tuple[list[ImportedMessage], int, datetime | None]:
    """The messages to add after the conversation's last seq (the rules in the module docstring),
    how many are already there, and the last new message's time. Shared by the per-line and the
    batched import so that both write exactly the same rows."""
    new: list[ImportedMessage] = []
    skipped = 0
    seq = conversation.last_seq
    previous_at = conversation.last_message_at
    for m in ordered:
        if (m.client_message_id is not None and m.client_message_id in client_ids) or (
            m.id is not None and m.id in ids
        ):
            skipped += 1
            continue
        message_id = m.id or uuid.uuid4()
        ids.add(message_id)
        if m.client_message_id is not None:
            client_ids.add(m.client_message_id)
        at = as_utc(m.created_at) or now
        if previous_at is not None and at < previous_at:
            at = previous_at
        previous_at = at
        seq += 1
        new.append(
            ImportedMessage(
                id=message_id,
                seq=seq,
                client_message_id=m.client_message_id,
                role=m.role.value,
                content=m.content,
                name=m.name,
                tool_call_id=m.tool_call_id,
                tool_calls=m.tool_calls,
                token_count=m.token_count
                if m.token_count is not None
                else tokens.count_message(m.content, name=m.name, tool_calls=m.tool_calls),
                metadata=dict(m.metadata),
                execution=m.execution,
                created_at=at,
                sources=[Source(s.document_id, s.chunk_id, s.title, s.uri, s.score, s.snippet) for s in m.sources],
                extra=messages.extra_of(m),
            )
        )
    return new, skipped, previous_at
