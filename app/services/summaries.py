"""Automatic, readable summaries: the rules (README, "Summaries").

A conversation's running summary is plain text in the `summary` state key,
`{"text", "upToSeq", "model", "generatedAt"}`: the context window reads it as it always has
(it stands for messages 1..upToSeq). `conversation_summaries` holds what the key cannot say:
status, model, the last error, failed attempts and a lease.

- **Triggers.** After commit (a `Database` listener, `Trigger`): a conversation whose
  unsummarized tokens (stored counts) reach the tenant's `summary_threshold_tokens` (default
  SUMMARY_THRESHOLD_TOKENS), a conversation closing (the idle cron closes through the same path),
  and `summarizeConversation`. The check on append is arithmetic on the header the append already
  returned, against an in-process memory of what was already asked for; only a crossing costs a
  Redis round trip (the enqueue, deduplicated by a deterministic job id).
- **Incremental.** A run sends the previous summary plus only the messages after its upToSeq, at
  most SUMMARIZER_MAX_INPUT_TOKENS of them per call (a longer backlog takes several calls).
- **One at a time.** A run holds the conversation's lease (`claim`); a second run meanwhile does
  nothing. The job id makes concurrent triggers one job.
- **Tool calls are never split.** The range is cut where every covered tool call has its answers
  and every covered TOOL message its call: before an unanswered call, and before an orphan tool
  result (one whose call is not in the range); an orphan therefore stops summaries before it.
- **Failures.** The LLM's error (status, timeout, malformed answer) is recorded (status FAILED,
  `error`), the previous summary stays in the key untouched, and the job retries with backoff up
  to SUMMARIZER_MAX_ATTEMPTS; the next trigger starts over.
- **CAS.** The key is written with the version read before the call: a client that wrote the
  key meanwhile wins, and the next round summarizes from its text.

No transaction is open during the LLM call. Services never commit: `summarize` runs several
short units of work through the `Database`, as `crm.deliver` does.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from app import tokens
from app.errors import BadUserInput, Conflict, NotFound
from app.models import Conversation, DomainEvent, EventType, Message, Role, StateEntry, Status
from app.services import messages as message_service
from app.services import state as state_service
from app.services.context import LRU, tool_call_ids
from app.settings import Settings
from db.repositories import conversations as conversation_repo
from db.repositories import state as state_repo
from db.repositories import summaries as repo
from db.repositories import tenants as tenant_repo
from db.session import Connection, Database, UnitOfWork

log = logging.getLogger("conversation_service.summaries")

SUMMARY_KEY = "summary"
#: Tenant setting overriding SUMMARY_THRESHOLD_TOKENS.
THRESHOLD_SETTING = "summary_threshold_tokens"
#: Rounds one run may make (a long backlog, appends while it runs) before it leaves the rest.
MAX_ROUNDS = 20
#: Messages read per chunk while building a range.
READ_CHUNK = 200
#: Characters of one message sent at most (a huge paste is cut in the prompt, never in storage).
MAX_MESSAGE_CHARS = 8000
#: How long a tenant's threshold is remembered per process.
THRESHOLD_TTL_S = 60.0

INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an AI agent. You get "
    "the previous summary (possibly empty) and the messages that came after it. Answer with the "
    "updated summary only: plain text, third person, keeping facts, names, numbers, decisions, open "
    "questions and what tools returned; drop pleasantries. Never invent anything."
)


class SummaryStatus(enum.StrEnum):
    NONE = "NONE"
    PENDING = "PENDING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass(slots=True)
class SummaryInfo:
    """`Conversation.summaryInfo`: the key's text and range, the bookkeeping's status."""

    status: SummaryStatus
    text: str | None = None
    up_to_seq: int | None = None
    token_count: int | None = None
    model: str | None = None
    updated_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SummarizerOptions:
    url: str | None = None
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 30.0
    threshold_tokens: int = 4000
    max_input_tokens: int = 8000
    reply_tokens: int = 600
    max_attempts: int = 5
    retry_base_s: float = 5.0
    retry_max_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.model)

    @property
    def endpoint(self) -> str:
        assert self.url is not None
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def backoff_s(self, attempts: int) -> float:
        return float(min(self.retry_base_s * (1 << min(max(attempts - 1, 0), 30)), self.retry_max_s))

    @classmethod
    def from_settings(cls, s: Settings) -> SummarizerOptions:
        return cls(
            url=s.summarizer_url or None,
            model=s.summarizer_model or None,
            api_key=s.summarizer_api_key or None,
            timeout_s=s.summarizer_timeout_s,
            threshold_tokens=s.summary_threshold_tokens,
            max_input_tokens=s.summarizer_max_input_tokens,
            reply_tokens=s.summarizer_reply_tokens,
            max_attempts=s.summarizer_max_attempts,
            retry_base_s=s.summarizer_retry_base_s,
            retry_max_s=s.summarizer_retry_max_s,
        )


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def parse_summary(entry: StateEntry | None) -> tuple[str, int] | None:
    """(text, upToSeq) of a `summary` key the context window would use, else None."""
    value = entry.value if entry is not None else None
    if not isinstance(value, dict):
        return None
    text, up_to = value.get("text"), value.get("upToSeq", value.get("up_to_seq"))
    if not isinstance(text, str) or not text:
        return None
    if not isinstance(up_to, int) or isinstance(up_to, bool) or up_to < 0:
        return None
    return text, up_to


async def info(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> SummaryInfo:
    """The conversation's summary as a reader sees it. A summary a client wrote into the key
    itself is READY with no model."""
    row = await repo.get(conn, tenant_id, conversation_id)
    entry = await state_repo.get(conn, tenant_id, conversation_id, SUMMARY_KEY)
    parsed = parse_summary(entry)
    status = SummaryStatus.NONE if row is None else SummaryStatus[str(row["status"]).upper()]
    if status is SummaryStatus.NONE and parsed is not None:
        status = SummaryStatus.READY
    if parsed is None:
        return SummaryInfo(status, updated_at=row["updated_at"] if row else None, error=row["error"] if row else None)
    text, up_to = parsed
    ours = row is not None and row["up_to_seq"] == up_to and row["model"] is not None
    assert entry is not None
    return SummaryInfo(
        status,
        text=text,
        up_to_seq=up_to,
        token_count=tokens.count_message(text),
        model=row["model"] if ours and row is not None else None,
        updated_at=row["updated_at"] if row is not None and row["updated_at"] > entry.updated_at else entry.updated_at,
        error=row["error"] if row is not None else None,
    )


async def tenant_threshold(conn: Connection, tenant_id: str, options: SummarizerOptions) -> int:
    row = await tenant_repo.get_tenant(conn, tenant_id)
    value = (row["settings"] or {}).get(THRESHOLD_SETTING) if row is not None else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return options.threshold_tokens


# --------------------------------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------------------------------

#: Queues a summarization job for (tenant_id, conversation_id); deduplicated by the job id.
Enqueue = Callable[[str, uuid.UUID], Awaitable[None]]


class _Registry:
    enqueue: Enqueue | None = None


def set_enqueuer(enqueue: Enqueue | None) -> None:
    """Register (or remove) how this process queues a summarization (jobs/summaries.py)."""
    _Registry.enqueue = enqueue


async def request(
    uow: UnitOfWork, tenant_id: str, conversation_id: uuid.UUID, options: SummarizerOptions
) -> SummaryInfo:
    """`summarizeConversation`: status PENDING now, the job after commit. BAD_USER_INPUT when no
    summarizer is configured; NOT_FOUND for another tenant's conversation."""
    if not options.enabled:
        raise BadUserInput(
            "summaries are off on this server: set SUMMARIZER_URL and SUMMARIZER_MODEL to enable them",
            field="conversationId",
        )
    conn = await uow.begin()
    if await conversation_repo.get(conn, tenant_id, id=conversation_id) is None:
        raise NotFound("conversation not found", conversationId=str(conversation_id))
    await repo.mark_pending(conn, tenant_id, conversation_id)
    enqueue = _Registry.enqueue
    if enqueue is not None:

        async def hook() -> None:
            try:
                await enqueue(tenant_id, conversation_id)
            except Exception as exc:  # the row says PENDING; the next trigger queues it
                log.warning("could not queue the summary of %s: %s", conversation_id, exc)

        uow.after_commit(hook)
    return await info(conn, tenant_id, conversation_id)


class Trigger:
    """A `Database` listener: queues a summarization when an append crosses the tenant's
    threshold or a conversation closes. Costs a dict lookup per append; the tenant's threshold
    is read once a minute per process; only a crossing enqueues."""

    def __init__(self, db: Database, options: SummarizerOptions, enqueue: Enqueue) -> None:
        self.db = db
        self.options = options
        self.enqueue = enqueue
        #: (tenant, conversation) → its token_count when a summary was last asked for. Missing
        #: means 0: after a restart a long conversation is asked for once, and the job sees the
        #: real coverage and does nothing if there is nothing to do.
        self.asked_at: LRU[tuple[str, uuid.UUID], int] = LRU(65_536)
        self.thresholds: dict[str, tuple[int, float]] = {}

    async def threshold(self, tenant_id: str) -> int:
        cached = self.thresholds.get(tenant_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.db.read() as conn:
            value = await tenant_threshold(conn, tenant_id, self.options)
        if len(self.thresholds) > 10_000:
            self.thresholds.clear()
        self.thresholds[tenant_id] = (value, now + THRESHOLD_TTL_S)
        return value

    async def __call__(self, events: list[DomainEvent]) -> None:
        latest: dict[tuple[str, uuid.UUID], tuple[EventType, Conversation]] = {}
        for event in events:
            if event.conversation is not None and event.type in (EventType.MESSAGE_ADDED, EventType.CLOSED):
                key = (event.tenant_id, event.conversation_id)
                closed = event.type is EventType.CLOSED or (key in latest and latest[key][0] is EventType.CLOSED)
                latest[key] = (EventType.CLOSED if closed else event.type, event.conversation)
        for key, (kind, conversation) in latest.items():
            try:
                if kind is EventType.CLOSED:
                    if conversation.message_count > 0:
                        await self.enqueue(*key)
                    continue
                asked = self.asked_at.get(key) or 0
                grown = conversation.token_count - asked
                if grown < 1 or grown < await self.threshold(key[0]):
                    continue
                self.asked_at.put(key, conversation.token_count)
                await self.enqueue(*key)
            except Exception as exc:  # never fails the write it follows; the next append asks again
                self.asked_at.put(key, 0)
                log.warning("could not queue the summary of %s: %s", key[1], exc)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class SummarizerError(Exception):
    """The LLM endpoint failed: status, timeout, connection, malformed answer."""


@dataclass(slots=True)
class Outcome:
    #: LLM calls that produced a stored summary.
    summarized: int = 0
    up_to_seq: int | None = None
    #: Another run holds the lease.
    busy: bool = False
    error: str | None = None
    #: Retry after this long (a failure with attempts left).
    retry_in_s: float | None = None


def cut_range(candidates: list[Message], max_tokens: int) -> list[Message]:
    """The longest prefix of `candidates` (oldest first, contiguous from the summary's end) that
    splits no tool call and fits `max_tokens` (at least one valid stretch when any exists)."""
    open_calls: set[str] = set()
    seen_calls: set[str] = set()
    cut = total = 0
    for i, message in enumerate(candidates):
        if message.role is Role.TOOL:
            call = message.tool_call_id or ""
            if call not in seen_calls:  # an orphan: its call is not in this range
                break
            open_calls.discard(call)
        ids = tool_call_ids(message)
        open_calls |= ids
        seen_calls |= ids
        total += message.token_count
        if total > max_tokens and cut > 0:
            break
        if not open_calls:
            cut = i + 1
    return candidates[:cut]


def _line(message: Message) -> str:
    content = (
        message.content if len(message.content) <= MAX_MESSAGE_CHARS else message.content[:MAX_MESSAGE_CHARS] + " […]"
    )
    who = message.role.value + (f" ({message.name})" if message.name else "")
    if message.role is Role.TOOL:
        who = f"tool result for {message.tool_call_id}"
    calls = ""
    if message.tool_calls:
        calls = " [tool calls: " + tokens.compact_json(message.tool_calls)[:MAX_MESSAGE_CHARS] + "]"
    return f"[{message.seq}] {who}: {content}{calls}"


def prompt(previous: str | None, new: list[Message]) -> list[dict[str, str]]:
    body = "Previous summary:\n" + (previous or "(none)") + "\n\nNew messages:\n" + "\n".join(_line(m) for m in new)
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": body}]


async def call_llm(
    http: httpx.AsyncClient, options: SummarizerOptions, messages: list[dict[str, str]]
) -> tuple[str, str]:
    """(summary text, model) from the chat-completions endpoint; SummarizerError otherwise."""
    assert options.model is not None
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    body = {"model": options.model, "messages": messages, "max_tokens": options.reply_tokens, "temperature": 0}
    try:
        response = await http.post(options.endpoint, json=body, headers=headers, timeout=options.timeout_s)
    except httpx.TimeoutException:
        raise SummarizerError(f"the summarizer did not answer within {options.timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise SummarizerError(f"the summarizer could not be reached: {type(exc).__name__}: {exc}"[:500]) from None
    if response.status_code // 100 != 2:
        raise SummarizerError(f"the summarizer answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        answer = response.json()
        text = answer["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise SummarizerError(
            f"the summarizer's answer is not a chat completion (choices[0].message.content): {response.text[:200]}"
        ) from None
    if not isinstance(text, str) or not text.strip():
        raise SummarizerError("the summarizer answered an empty summary")
    model = answer.get("model") if isinstance(answer, dict) else None
    return text.strip(), model if isinstance(model, str) and model else options.model


@dataclass(slots=True)
class _Plan:
    entry: StateEntry | None
    previous: str | None
    up_to_seq: int
    covered_tokens: int
    batch: list[Message]
    more: bool


async def _plan(
    conn: Connection,
    tenant_id: str,
    conversation_id: uuid.UUID,
    row_covered: tuple[int, int],
    options: SummarizerOptions,
    forced: bool,
) -> _Plan | None:
    """What the next call covers, or None when there is nothing (or not enough) to summarize."""
    conversation = await conversation_repo.get(conn, tenant_id, id=conversation_id)
    if conversation is None:
        return None
    entry = await state_repo.get(conn, tenant_id, conversation_id, SUMMARY_KEY)
    parsed = parse_summary(entry)
    previous, up_to = parsed if parsed is not None else (None, 0)
    up_to = min(up_to, conversation.last_seq)
    if row_covered[0] == up_to:
        covered = row_covered[1]
    else:  # the key was written by someone else: count what it covers
        covered = sum(m.token_count for m in await _between(conn, tenant_id, conversation_id, 1, up_to)) if up_to else 0
    pending = conversation.token_count - covered
    if pending <= 0 or conversation.last_seq <= up_to:
        return None
    if (
        not forced
        and conversation.status is Status.ACTIVE
        and pending < await tenant_threshold(conn, tenant_id, options)
    ):
        return None
    candidates: list[Message] = []
    size = 0
    lo = up_to + 1
    while lo <= conversation.last_seq and size <= options.max_input_tokens:
        chunk = await _between(conn, tenant_id, conversation_id, lo, min(lo + READ_CHUNK - 1, conversation.last_seq))
        if not chunk:
            break
        candidates += chunk
        size += sum(m.token_count for m in chunk)
        lo = chunk[-1].seq + 1
    batch = cut_range(candidates, options.max_input_tokens)
    if not batch:
        return None
    return _Plan(entry, previous, up_to, covered, batch, batch[-1].seq < conversation.last_seq)


async def summarize(
    db: Database, http: httpx.AsyncClient, tenant_id: str, conversation_id: uuid.UUID, options: SummarizerOptions
) -> Outcome:
    """One job's work: rounds of claim → plan → call → store, until nothing is left to do."""
    outcome = Outcome()
    if not options.enabled:
        outcome.error = "summaries are off"
        return outcome
    async with db.read() as conn:
        if await conversation_repo.get(conn, tenant_id, id=conversation_id) is None:
            outcome.error = "conversation not found"  # purged meanwhile, or not this tenant's
            return outcome
    lease_s = options.timeout_s + 10
    forced = False
    for _ in range(MAX_ROUNDS):
        row = await db.run(lambda uow: repo.claim(uow.conn, tenant_id, conversation_id, lease_s))
        if row is None:
            outcome.busy = outcome.summarized == 0
            return outcome
        status = str(row["status"])
        forced = forced or status == "pending"
        try:
            async with db.read() as conn:
                plan = await _plan(
                    conn, tenant_id, conversation_id, (row["up_to_seq"], row["covered_tokens"]), options, forced
                )
        except Exception:
            await _release(db, tenant_id, conversation_id, status)
            raise
        if plan is None:
            final = status if status != "pending" else "ready" if row["up_to_seq"] > 0 else "none"
            await _release(db, tenant_id, conversation_id, final)
            return outcome
        try:
            text, model = await call_llm(http, options, prompt(plan.previous, plan.batch))
        except SummarizerError as exc:
            error = str(exc)
            attempts = await _fail(db, tenant_id, conversation_id, error)
            outcome.error = error
            if attempts < options.max_attempts:
                outcome.retry_in_s = options.backoff_s(attempts)
            return outcome
        if not await _store(db, tenant_id, conversation_id, plan, text, model):
            continue  # a client wrote the key meanwhile: plan again from its text
        outcome.summarized += 1
        outcome.up_to_seq = plan.batch[-1].seq
        forced = forced and plan.more
    return outcome


async def _release(db: Database, tenant_id: str, conversation_id: uuid.UUID, status: str) -> None:
    await db.run(lambda uow: repo.release(uow.conn, tenant_id, conversation_id, status))


async def _fail(db: Database, tenant_id: str, conversation_id: uuid.UUID, error: str) -> int:
    return await db.run(lambda uow: repo.fail(uow.conn, tenant_id, conversation_id, error))


async def _store(db: Database, tenant_id: str, conversation_id: uuid.UUID, plan: _Plan, text: str, model: str) -> bool:
    up_to = plan.batch[-1].seq
    value: dict[str, Any] = {
        "text": text,
        "upToSeq": up_to,
        "model": model,
        "generatedAt": datetime.now(UTC).isoformat(),
    }
    covered = plan.covered_tokens + sum(m.token_count for m in plan.batch)

    async def work(uow: UnitOfWork) -> None:
        await uow.begin()
        await state_service.set_(
            uow,
            tenant_id,
            conversation_id,
            SUMMARY_KEY,
            value,
            expected_version=plan.entry.version if plan.entry else 0,
        )
        await repo.succeed(
            uow.conn,
            tenant_id,
            conversation_id,
            up_to_seq=up_to,
            covered_tokens=covered,
            token_count=tokens.count_message(text),
            model=model,
        )

    try:
        await db.run(work)
    except Conflict:
        await _release(db, tenant_id, conversation_id, "pending")
        return False
    return True


def describe(outcome: Outcome) -> dict[str, Any]:
    """The job's result (JSON)."""
    return {
        "summarized": outcome.summarized,
        "up_to_seq": outcome.up_to_seq,
        "busy": outcome.busy,
        "error": outcome.error,
        "retry_in_s": outcome.retry_in_s,
    }


async def _between(conn: Connection, tenant_id: str, conversation_id: uuid.UUID, lo: int, hi: int) -> list[Message]:
    """Messages lo..hi, seq ascending, through the one history-reading path."""
    key = (conversation_id, lo, hi)
    return (await message_service.ranges(conn, tenant_id, [key]))[key]
