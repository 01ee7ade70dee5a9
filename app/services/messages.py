"""Messages: idempotent, gap-free appends and keyset history pages."""

from __future__ import annotations

import contextlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from app import codec, tokens
from app.errors import BadUserInput, Conflict, ConversationClosed, NotFound, RetryTransaction
from app.models import (
    AppendResult,
    BatchAppendResult,
    Conversation,
    ConversationDefaults,
    ConversationRef,
    DomainEvent,
    EventType,
    Message,
    NewMessage,
    Page,
    Role,
    Source,
    Status,
)
from app.services import conversations, cursors, idempotency
from app.services import limits as check
from app.services.hot_fill import PostgresEntries
from app.services.limits import DEFAULT_LIMITS, Limits
from db.repositories import conversations as conversation_repo
from db.repositories import messages as repo
from db.repositories import records
from db.session import Connection, UnitOfWork

if TYPE_CHECKING:
    from app.cache.client import HotCache

DEFAULT_HISTORY_PAGE = 50
_CLIENT_ID_CONSTRAINT = "uq_messages_client_message_id"
_CONSTRAINT_IN_TEXT = re.compile(r'unique constraint "([^"]+)"')


def _violated_constraint(exc: asyncpg.UniqueViolationError) -> str:
    """The constraint's name. A delegated call on Citus (append_message run on the tenant's worker)
    reaches us with the worker's message text but without the constraint field, so it is read from
    the text then (tests/test_citus_processes.py: the same clientMessageId on two APIs at once)."""
    if exc.constraint_name:
        return exc.constraint_name
    match = _CONSTRAINT_IN_TEXT.search(str(exc))
    return match.group(1) if match else ""


_EXECUTION_FIELDS: dict[str, type[str] | type[int]] = {
    "run_id": str,
    "model": str,
    "latency_ms": int,
    "prompt_tokens": int,
    "completion_tokens": int,
    "status": str,
    "error": str,
}


#: The NewMessage fields new_message takes by name and checks. Any other field of the record (a new
#: optional one, docs/architecture.md "Recipe: a new Message field") is an *extra* field: edges copy
#: it from their input by name (`extra_of`) and new_message passes it through.
_CHECKED = (
    "role", "content", "name", "tool_call_id", "tool_calls", "metadata", "sources", "execution",
    "client_message_id", "token_count",
)  # fmt: skip
EXTRA_FIELDS: tuple[str, ...] = tuple(codec.extra_fields(NewMessage, _CHECKED))


def extra_of(source: object) -> dict[str, Any]:
    """The extra fields (EXTRA_FIELDS) an input object carries (a GraphQL input, an action's data,
    an import line), by name; those it lacks are left to the record's default."""
    return {name: getattr(source, name) for name in EXTRA_FIELDS if hasattr(source, name)}


def new_message(
    *,
    role: Role,
    content: str,
    name: str | None = None,
    tool_call_id: str | None = None,
    tool_calls: Any = None,
    metadata: dict[str, Any] | None = None,
    sources: list[Source] | None = None,
    execution: dict[str, Any] | None = None,
    client_message_id: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    **extra: Any,
) -> NewMessage:
    """Validate one message and count its tokens (once, at write time, with the default encoding).
    `extra`: the record's EXTRA_FIELDS; their types were checked by the edge's input model, and a
    text value is bounded like other short texts."""
    unknown = extra.keys() - set(EXTRA_FIELDS)
    if unknown:
        raise TypeError(f"NewMessage has no field {', '.join(sorted(unknown))}")
    for key, value in extra.items():
        if isinstance(value, str):
            check.text(value, _camel(key), limits.max_title_length * 4)
    if not isinstance(role, Role):
        raise BadUserInput("role must be one of system, user, assistant, tool", field="role")
    check.content(content, limits)
    if tool_calls is not None:
        if role is not Role.ASSISTANT:
            raise BadUserInput("toolCalls are only allowed on ASSISTANT messages", field="toolCalls")
        _check_tool_calls(tool_calls, limits)
    if not content and not (role is Role.ASSISTANT and tool_calls):
        raise BadUserInput("content may be empty only for an ASSISTANT message with toolCalls", field="content")
    if role is Role.TOOL and not tool_call_id:
        raise BadUserInput("a TOOL message needs the toolCallId of the call it answers", field="toolCallId")
    if tool_call_id is not None and role is not Role.TOOL:
        raise BadUserInput("toolCallId is only allowed on TOOL messages", field="toolCallId")
    check.text(tool_call_id, "toolCallId", limits.max_id_length)
    check.text(name, "name", limits.max_id_length)
    check.text(client_message_id, "clientMessageId", limits.max_id_length)
    if client_message_id == "":
        raise BadUserInput("clientMessageId must not be empty", field="clientMessageId")
    sources = sources or []
    if len(sources) > limits.max_sources:
        raise BadUserInput(f"at most {limits.max_sources} sources per message", field="sources")
    for s in sources:
        check.text(s.document_id, "sources.documentId", limits.max_id_length, required=True)
        for value, field in ((s.chunk_id, "chunkId"), (s.title, "title"), (s.uri, "uri")):
            check.text(value, f"sources.{field}", limits.max_title_length * 4)
        check.text(s.snippet, "sources.snippet", limits.max_content_bytes)
    if execution is not None:
        execution = _check_execution(execution, limits)
    return NewMessage(
        role=role,
        content=content,
        name=name,
        tool_call_id=tool_call_id,
        tool_calls=tool_calls,
        metadata=check.metadata(metadata, limits),
        sources=sources,
        execution=execution,
        client_message_id=client_message_id,
        token_count=tokens.count_message(content, name=name, tool_calls=tool_calls),
        **extra,
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _check_tool_calls(tool_calls: Any, limits: Limits) -> None:
    if not isinstance(tool_calls, list) or not tool_calls:
        raise BadUserInput("toolCalls must be a non-empty list", field="toolCalls")
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or not call["id"]
            or call.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments", ""), str)
        ):
            raise BadUserInput(
                'each tool call must be {id, type: "function", function: {name, arguments: string}}',
                field="toolCalls",
            )
    check.json_value(tool_calls, "toolCalls", limits.max_content_bytes, limits.max_json_depth)


def _check_execution(execution: dict[str, Any], limits: Limits) -> dict[str, Any]:
    if not isinstance(execution, dict):
        raise BadUserInput("execution must be an object", field="execution")
    clean: dict[str, Any] = {}
    for key, value in execution.items():
        kind = _EXECUTION_FIELDS.get(key)
        if kind is None:
            raise BadUserInput(f"unknown execution field {key!r}", field="execution")
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadUserInput(f"execution.{key} must be {kind.__name__}", field="execution")
        if isinstance(value, str):
            check.text(value, f"execution.{key}", limits.max_title_length * 4)
        elif isinstance(value, int) and value < 0:
            raise BadUserInput(f"execution.{key} must not be negative", field="execution")
        clean[key] = value
    return clean


async def append(
    uow: UnitOfWork,
    tenant_id: str,
    target: ConversationRef,
    message: NewMessage,
    *,
    expected_seq: int | None = None,
    defaults: ConversationDefaults | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> AppendResult:
    """Append one message (one SQL statement on the common path).

    A new sessionId creates the conversation in the same transaction. A
    clientMessageId seen before returns the original message (created=False) when the
    payload is the same, and is IDEMPOTENCY_KEY_REUSED otherwise (app/services/idempotency).
    """
    check.tenant_id(tenant_id)
    if expected_seq is not None and expected_seq < 1:
        raise BadUserInput("expectedSeq must be at least 1", field="expectedSeq")
    try:
        row = await repo.append(
            uow.conn,
            tenant_id,
            conversation_id=target.id,
            session_id=target.session_id,
            message=message,
            expected_seq=expected_seq,
        )
    except asyncpg.UniqueViolationError as exc:
        # startswith: on Citus the shard's constraint carries the shard id as a suffix.
        if _violated_constraint(exc).startswith(_CLIENT_ID_CONSTRAINT):
            raise RetryTransaction from exc  # the same key committed a moment ago: a rerun returns it
        raise
    if row is not None:
        msg, header = repo.split_append_row(row)
        msg.sources = list(message.sources)
        conversation = records.conversation(header)
        uow.emit(DomainEvent(EventType.MESSAGE_ADDED, tenant_id, conversation.id, msg.created_at, conversation, msg))
        return AppendResult(message=msg, conversation=conversation, created=True)
    return await _append_slow_path(uow, tenant_id, target, message, expected_seq, defaults, limits)


async def _append_slow_path(
    uow: UnitOfWork,
    tenant_id: str,
    target: ConversationRef,
    message: NewMessage,
    expected_seq: int | None,
    defaults: ConversationDefaults | None,
    limits: Limits,
) -> AppendResult:
    """Nothing was written: tell why, return the original of a retry, or create the session."""
    conversation = await conversations.find(uow.conn, tenant_id, target)
    if conversation is None:
        if target.session_id is None:
            raise NotFound("conversation not found", conversationId=str(target.id))
        # Create and append in one transaction, so a failing append leaves no empty conversation.
        await uow.begin()
        d = defaults or ConversationDefaults()
        with contextlib.suppress(Conflict):  # created concurrently by another writer: append to theirs
            await conversations.create(
                uow,
                tenant_id,
                session_id=target.session_id,
                user_id=d.user_id,
                agent_id=d.agent_id,
                channel=d.channel,
                limits=limits,
            )
        return await append(uow, tenant_id, target, message, expected_seq=expected_seq, limits=limits)
    if message.client_message_id is not None:
        seq = await repo.seq_of_client_message(uow.conn, tenant_id, conversation.id, message.client_message_id)
        if seq is not None:
            (original,) = await with_sources(
                uow.conn, tenant_id, await repo.by_seqs(uow.conn, tenant_id, conversation.id, [seq])
            )
            idempotency.check_replay(message, original)
            return AppendResult(message=original, conversation=conversation, created=False)
    if conversation.status is not Status.ACTIVE:
        raise ConversationClosed(f"conversation is {conversation.status.value}", conversationId=str(conversation.id))
    if expected_seq is not None and expected_seq != conversation.last_seq + 1:
        raise Conflict(
            f"expectedSeq {expected_seq} is stale: the next seq is {conversation.last_seq + 1}",
            expectedSeq=expected_seq,
            nextSeq=conversation.last_seq + 1,
        )
    # The row changed between our statement and this read (a concurrent append or close): try again.
    raise RetryTransaction


async def append_batch(
    uow: UnitOfWork,
    tenant_id: str,
    target: ConversationRef,
    messages: list[NewMessage],
    *,
    defaults: ConversationDefaults | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> BatchAppendResult:
    """Append 1..max_batch_messages messages atomically, in order; retried clientMessageIds return originals."""
    check.tenant_id(tenant_id)
    if not 1 <= len(messages) <= limits.max_batch_messages:
        raise BadUserInput(f"a batch holds 1 to {limits.max_batch_messages} messages", field="messages")
    client_ids = [m.client_message_id for m in messages if m.client_message_id is not None]
    if len(set(client_ids)) != len(client_ids):
        raise BadUserInput("clientMessageId repeats within the batch", field="messages")
    conn = await uow.begin()
    conversation = await conversation_repo.get(
        conn, tenant_id, id=target.id, session_id=target.session_id, for_update=True
    )
    if conversation is None:
        if target.session_id is None:
            raise NotFound("conversation not found", conversationId=str(target.id))
        d = defaults or ConversationDefaults()
        await conversations.create(
            uow,
            tenant_id,
            session_id=target.session_id,
            user_id=d.user_id,
            agent_id=d.agent_id,
            channel=d.channel,
            limits=limits,
        )
        conversation = await conversation_repo.get(conn, tenant_id, session_id=target.session_id, for_update=True)
        assert conversation is not None
    existing = await repo.seqs_of_client_messages(conn, tenant_id, conversation.id, client_ids) if client_ids else {}
    originals = (
        {
            m.client_message_id: m
            for m in await with_sources(
                conn, tenant_id, await repo.by_seqs(conn, tenant_id, conversation.id, list(existing.values()))
            )
        }
        if existing
        else {}
    )
    # A key reused for another message fails the whole batch before anything is written.
    for m in messages:
        if m.client_message_id in originals:
            idempotency.check_replay(m, originals[m.client_message_id])
    fresh = [m for m in messages if m.client_message_id not in existing]
    inserted: list[Message] = []
    if fresh:
        if conversation.status is not Status.ACTIVE:
            raise ConversationClosed(
                f"conversation is {conversation.status.value}", conversationId=str(conversation.id)
            )
        first_seq = conversation.last_seq + 1
        conversation = await conversation_repo.advance(
            conn, tenant_id, conversation.id, len(fresh), sum(m.token_count for m in fresh)
        )
        assert conversation.last_message_at is not None
        inserted = await repo.insert_many(
            conn, tenant_id, conversation.id, first_seq, fresh, conversation.last_message_at
        )
    for msg in inserted:
        uow.emit(DomainEvent(EventType.MESSAGE_ADDED, tenant_id, conversation.id, msg.created_at, conversation, msg))
    fresh_iter = iter(inserted)
    ordered = [
        originals[m.client_message_id] if m.client_message_id in existing else next(fresh_iter) for m in messages
    ]
    return BatchAppendResult(messages=ordered, conversation=conversation, created_count=len(inserted))


async def with_sources(conn: Connection, tenant_id: str, messages: list[Message]) -> list[Message]:
    loaded = await repo.sources_for(conn, tenant_id, [(m.conversation_id, m.seq) for m in messages])
    for m in messages:
        m.sources = loaded[(m.conversation_id, m.seq)]
    return messages


async def sources_for(
    conn: Connection, tenant_id: str, keys: list[tuple[uuid.UUID, int]]
) -> dict[tuple[uuid.UUID, int], list[Source]]:
    return await repo.sources_for(conn, tenant_id, keys)


@dataclass(slots=True, frozen=True)
class HistoryPlan:
    """Which seqs a history page holds (lo..hi) and its flags: pure arithmetic, since seqs
    are gap-free (1..lastSeq). Many plans can be fetched in one statement (DataLoader)."""

    lo: int
    hi: int
    has_next_page: bool
    has_previous_page: bool
    total_count: int

    @property
    def empty(self) -> bool:
        return self.hi < self.lo


@dataclass(slots=True, frozen=True)
class PageRequest:
    """A validated history page request: everything but the conversation's lastSeq.

    The page holds seqs in (lower, upper) with upper = min(lastSeq + 1, upper_cap), `size` of
    them from the low end (forward) or the high end (backward); the connection is all seqs
    above range_lower (afterSeq / since)."""

    forward: bool
    lower: int
    range_lower: int
    upper_cap: int | None
    size: int

    def bounds(self, last_seq: int) -> tuple[int, int]:
        """(lo, hi) of the page; the SQL of db.repositories.messages.page_by_ref mirrors this."""
        upper = last_seq + 1 if self.upper_cap is None else min(last_seq + 1, self.upper_cap)
        if self.forward:
            return self.lower + 1, min(upper - 1, self.lower + self.size)
        return max(self.lower + 1, upper - self.size), upper - 1

    def plan(self, last_seq: int) -> HistoryPlan:
        upper = last_seq + 1 if self.upper_cap is None else min(last_seq + 1, self.upper_cap)
        lo, hi = self.bounds(last_seq)
        if hi < lo:  # an empty page still answers the flags from where it stands
            lo, hi = (self.lower + 1, self.lower) if self.forward else (upper, upper - 1)
        return HistoryPlan(
            lo=lo,
            hi=hi,
            has_next_page=hi < (upper - 1 if self.forward else last_seq),
            has_previous_page=lo > self.range_lower + 1,
            total_count=max(0, last_seq - self.range_lower),
        )


def page_request(
    *,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    after_seq: int | None = None,
    since_seq: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> PageRequest:
    """first/after page forward from the oldest (or from afterSeq, or from `since_seq`, the first
    seq created at or after `since`); last/before backward from the newest; neither: the last 50."""
    first = check.page_size(first, limits, "first")
    last = check.page_size(last, limits, "last")
    if first is not None and last is not None:
        raise BadUserInput("give first or last, not both", field="first")
    if after_seq is not None and after_seq < 0:
        raise BadUserInput("afterSeq must not be negative", field="afterSeq")
    range_lower = max(after_seq or 0, (since_seq - 1) if since_seq is not None else 0)
    lower = range_lower if after is None else max(range_lower, cursors.parse_seq_cursor(after))
    forward = first is not None or (
        last is None and (after is not None or after_seq is not None or since_seq is not None)
    )
    size = (first if forward else last) if (first if forward else last) is not None else DEFAULT_HISTORY_PAGE
    return PageRequest(
        forward=forward,
        lower=lower,
        range_lower=range_lower,
        upper_cap=cursors.parse_seq_cursor(before) if before is not None else None,
        size=size or 0,
    )


@dataclass(frozen=True, slots=True)
class HistoryArgs:
    """A history page as an edge asks for it (GraphQL `history` / `Conversation.messages`, the
    get_history action), passed whole to the one history path below."""

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None
    after_seq: int | None = None
    since: datetime | None = None

    def request(self, limits: Limits = DEFAULT_LIMITS, since_seq: int | None = None) -> PageRequest:
        """The validated request (BAD_USER_INPUT otherwise); `since` must be resolved to since_seq."""
        return page_request(
            first=self.first,
            after=self.after,
            last=self.last,
            before=self.before,
            after_seq=self.after_seq,
            since_seq=since_seq,
            limits=limits,
        )


async def plan_page(
    conn: Connection, tenant_id: str, conversation: Conversation, args: HistoryArgs, limits: Limits = DEFAULT_LIMITS
) -> HistoryPlan:
    """Which seqs the page of `args` holds (a `since` costs one lookup)."""
    found = await since_seq(conn, tenant_id, conversation, args.since) if args.since is not None else None
    return args.request(limits, found).plan(conversation.last_seq)


def plan_page_at_once(conversation: Conversation, args: HistoryArgs, limits: Limits = DEFAULT_LIMITS) -> HistoryPlan:
    """plan_page for arguments without `since`: nothing to look up, so no connection is needed
    (a CRM list's 20 nested pages took 20 pool connections for nothing)."""
    if args.since is not None:
        raise ValueError("since needs plan_page")
    return args.request(limits).plan(conversation.last_seq)


def _seq_cursor_of(message: Message) -> str:
    return cursors.seq_cursor(message.seq)


def page_of(plan: HistoryPlan, items: list[Message]) -> Page[Message]:
    return Page(
        items=items,
        cursor_of=_seq_cursor_of,
        has_next_page=plan.has_next_page,
        has_previous_page=plan.has_previous_page,
        total_count=plan.total_count,
    )


async def since_seq(conn: Connection, tenant_id: str, conversation: Conversation, since: datetime) -> int:
    """The first seq created at or after `since` (lastSeq + 1 when there is none)."""
    start = await repo.first_seq_since(conn, tenant_id, conversation.id, since)
    return start if start is not None else conversation.last_seq + 1


async def history(
    conn: Connection,
    tenant_id: str,
    conversation: Conversation,
    args: HistoryArgs = HistoryArgs(),
    *,
    limits: Limits = DEFAULT_LIMITS,
    cache: HotCache | None = None,
) -> Page[Message]:
    """A page of one conversation's messages, in seq order: plan_page, then `ranges` (the
    DataLoader of app/api/context.py does the same two steps batched)."""
    plan = await plan_page(conn, tenant_id, conversation, args, limits)
    if plan.empty:
        return page_of(plan, [])
    key = (conversation.id, plan.lo, plan.hi)
    return page_of(plan, (await ranges(conn, tenant_id, [key], cache=cache))[key])


async def history_with_sources(
    conn: Connection,
    tenant_id: str,
    target: ConversationRef,
    args: HistoryArgs,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> Page[Message]:
    """A page of the conversation `target` names, each message with its sources (get_history)."""
    conversation = await conversations.get(conn, tenant_id, target)
    page = await history(conn, tenant_id, conversation, args, limits=limits)
    page.items = await with_sources(conn, tenant_id, page.items)
    return page


async def history_by_ref(
    conn: Connection,
    tenant_id: str,
    target: ConversationRef,
    args: HistoryArgs = HistoryArgs(),
    *,
    limits: Limits = DEFAULT_LIMITS,
    cache: HotCache | None = None,
) -> Page[Message]:
    """A history page by conversation id or sessionId: one statement finds the conversation
    and reads the page (the hottest read; `since` needs a lookup first and takes two). With a
    `cache`, a recent page of a cached conversation is one Redis round trip instead."""
    if args.since is not None:
        conversation = await conversations.get(conn, tenant_id, target)
        return await history(conn, tenant_id, conversation, args, limits=limits)
    request = args.request(limits)
    found = await cache.page(PostgresEntries(conn), tenant_id, target, request) if cache is not None else None
    if found is None:
        found = await repo.page_by_ref(conn, tenant_id, target.id, target.session_id, request)
    if found is None:
        raise NotFound("conversation not found", conversationId=str(target.id) if target.id else None)
    last_seq, rows = found
    plan = request.plan(last_seq)
    return page_of(plan, [m for m in rows if plan.lo <= m.seq <= plan.hi])


async def ranges(
    conn: Connection,
    tenant_id: str,
    wanted: list[tuple[uuid.UUID, int, int]],
    *,
    cache: HotCache | None = None,
) -> dict[tuple[uuid.UUID, int, int], list[Message]]:
    """Many (conversation, lo, hi) seq ranges in one statement (those a `cache` holds from
    Redis, in one round trip: messages never change, so a cached one is always right)."""
    found = await cache.ranges(tenant_id, wanted) if cache is not None else {}
    missing = [key for key in wanted if key not in found]
    if len(missing) == 1:  # the plainer statement (no unnest) for the common single page
        cid, lo, hi = missing[0]
        found[missing[0]] = await repo.range_(conn, tenant_id, cid, lo, hi)
    elif missing:
        found.update(await repo.ranges(conn, tenant_id, missing))
    return found
