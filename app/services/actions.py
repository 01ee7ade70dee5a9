"""Domain actions (DESIGN.md, "Domain actions (arq)"): the envelope, each action's `data`, the JSON
of results, and the action log that makes a repeated action answer like the first.

The arq adapter (jobs/actions.py) calls these; nothing here knows about arq.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from app import codec
from app.errors import BadUserInput, DomainError, IdempotencyKeyReused, NotFound, RetryTransaction
from app.models import (
    AppendResult,
    Conversation,
    ConversationDefaults,
    ConversationRef,
    Message,
    NewMessage,
    Source,
    StateEntry,
)
from app.services import limits as check
from app.services import messages, tenants
from app.services.crm import CrmSyncRecord
from app.services.limits import DEFAULT_LIMITS, Limits
from db.repositories import actions as repo
from db.repositories import deletion as deletion_repo
from db.session import Connection, Database, UnitOfWork

CREATE = "conversation.create"
SAVE_MESSAGE = "conversation.save_message"
ADD_MESSAGE = "conversation.add_message"
GET_CONTEXT = "conversation.get_context"
GET_HISTORY = "conversation.get_history"
UPDATE_STATE = "conversation.update_state"
SESSION_CLOSED = "conversation.session_closed"
SYNC_CRM = "conversation.sync_crm"

ALIASES = {ADD_MESSAGE: SAVE_MESSAGE}

MAX_ID = 200
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID)]


def canonical(action_type: str) -> str:
    return ALIASES.get(action_type, action_type)


# --------------------------------------------------------------------------------------------------
# Envelope
# --------------------------------------------------------------------------------------------------


class Envelope(BaseModel):
    """`{action_id, action_type, tenant_id, session_id?, conversation_id?, data, correlation_id?,
    callback_queue_name?, created_at}`. Unknown envelope keys are ignored (other services add
    their own); unknown `data` keys are BAD_USER_INPUT."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    action_id: Id
    action_type: Id
    tenant_id: str
    session_id: str | None = None
    conversation_id: str | None = None
    data: dict[str, Any] = {}
    correlation_id: Annotated[str, StringConstraints(max_length=MAX_ID)] | None = None
    callback_queue_name: str | None = None
    created_at: str | None = None


def target(env: Envelope, limits: Limits = DEFAULT_LIMITS) -> ConversationRef:
    """The envelope's conversation_id, else its session_id (DESIGN.md); neither is BAD_USER_INPUT."""
    if env.conversation_id is not None:
        try:
            return ConversationRef(id=uuid.UUID(env.conversation_id))
        except ValueError:
            raise BadUserInput("conversation_id is not a valid UUID", field="conversation_id") from None
    if env.session_id is not None:
        check.text(env.session_id, "session_id", limits.max_id_length, required=True)
        return ConversationRef(session_id=env.session_id)
    raise BadUserInput("give conversation_id or session_id", field="conversation_id")


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where and how to answer, read leniently so that even a broken envelope gets its answer."""

    action_id: str | None = None
    correlation_id: str | None = None
    callback_queue_name: str | None = None


def callback_queue_problem(name: str, queue_name: str) -> str | None:
    """Why `name` may not receive answers, or None. Answers never go into the service's own
    keys (`cs:…` cache and events, `arq:…` jobs, the queue itself and its dead letters)."""
    if not name or len(name) > MAX_ID:
        return f"callback_queue_name must be 1-{MAX_ID} characters"
    if name.startswith(("arq:", "cs:")) or name in (queue_name, dead_letter_key(queue_name)):
        return "callback_queue_name may not name one of the service's own keys (arq:…, cs:…, the queue)"
    return None


def dead_letter_key(queue_name: str) -> str:
    return f"{queue_name}:dead-letters"


def reply_to(raw: Any, queue_name: str) -> ReplyTo:
    if not isinstance(raw, dict):
        return ReplyTo()

    def text(key: str) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) and len(value) <= MAX_ID else None

    queue = text("callback_queue_name")
    if queue is not None and callback_queue_problem(queue, queue_name):
        queue = None
    return ReplyTo(action_id=text("action_id"), correlation_id=text("correlation_id"), callback_queue_name=queue)


def _first_error(exc: ValidationError, prefix: str = "") -> BadUserInput:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    field = f"{prefix}{where}" if where else prefix.rstrip(".") or "envelope"
    return BadUserInput(f"{field}: {err['msg']}", field=field)


def parse_envelope(
    args: tuple[Any, ...], kwargs: dict[str, Any], function: str, job_id: str, queue_name: str
) -> Envelope:
    """Validate a job's arguments as one envelope for `function` (an action type)."""
    if len(args) != 1 or kwargs:
        raise BadUserInput("an action job takes exactly one argument, the envelope", field="envelope")
    raw = args[0]
    if not isinstance(raw, dict):
        raise BadUserInput("the envelope must be a JSON object", field="envelope")
    try:
        env = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from None
    check.tenant_id(env.tenant_id)
    if canonical(env.action_type) != canonical(function):
        raise BadUserInput(f"action_type {env.action_type!r} was sent to {function!r}", field="action_type")
    if env.action_id != job_id:
        raise BadUserInput("action_id must be the arq job id (enqueue with _job_id=action_id)", field="action_id")
    if env.callback_queue_name is not None and (problem := callback_queue_problem(env.callback_queue_name, queue_name)):
        raise BadUserInput(problem, field="callback_queue_name")
    if env.created_at is not None:
        try:
            datetime.fromisoformat(env.created_at)
        except ValueError:
            raise BadUserInput("created_at is not an ISO-8601 date-time", field="created_at") from None
    return env


# --------------------------------------------------------------------------------------------------
# Data of each action
# --------------------------------------------------------------------------------------------------


class ActionData(BaseModel):
    """An action's `data`: strict types, unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class CreateData(ActionData):
    user_id: str | None = None
    agent_id: str | None = None
    channel: str | None = None
    title: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None


_Model = TypeVar("_Model", bound=BaseModel)


def with_new_message_fields(base: type[_Model], *, exclude: Collection[str] = ()) -> type[_Model]:
    """`base` plus every NewMessage field it neither declares nor excludes, typed and defaulted as
    on the record: an input model (an action's data, an import line) built from the record's fields,
    so a new optional Message field is accepted without an edit. `base` itself when there is none."""
    extra = codec.extra_fields(NewMessage, {*base.model_fields, *exclude})
    if not extra:
        return base
    definitions: dict[str, Any] = {}
    for name, (hint, f) in extra.items():
        if f.default is not dataclasses.MISSING:
            definitions[name] = (hint, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            definitions[name] = (hint, Field(default_factory=f.default_factory))
        else:
            definitions[name] = (hint, ...)
    model: type[_Model] = create_model(base.__name__, __base__=base, __module__=base.__module__, **definitions)
    return model


class SourceData(ActionData):
    document_id: str
    chunk_id: str | None = None
    title: str | None = None
    uri: str | None = None
    score: float | None = None
    snippet: str | None = None

    def to_source(self) -> Source:
        return Source(self.document_id, self.chunk_id, self.title, self.uri, self.score, self.snippet)


class SaveMessageData(ActionData):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: Any = None
    metadata: dict[str, Any] | None = None
    sources: list[SourceData] | None = None
    execution: dict[str, Any] | None = None
    agent_id: str | None = None
    user_id: str | None = None
    channel: str | None = None


if not TYPE_CHECKING:  # the type checker sees the declared fields; a new record field is accessed by name
    # The clientMessageId is the action_id and the token count is computed: not part of the data.
    SaveMessageData = with_new_message_fields(SaveMessageData, exclude=("client_message_id", "token_count"))


class GetContextData(ActionData):
    max_tokens: int
    model: str | None = None
    reserve_tokens: int = 0
    include_system: bool = True
    include_summary: bool = True
    #: The customer profile as a system note; absent: the tenant's `crm_customer_note` setting.
    include_customer: bool | None = None


class GetHistoryData(ActionData):
    limit: int = 50
    after_seq: int | None = None


class UpdateStateData(ActionData):
    key: str
    value: Any
    expected_version: int | None = None


class SessionClosedData(ActionData):
    reason: str | None = None


class SyncCrmData(ActionData):
    pass


D = TypeVar("D", bound=ActionData)


def parse_data(model: type[D], data: dict[str, Any]) -> D:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, "data.") from None


# --------------------------------------------------------------------------------------------------
# Result JSON: snake_case mirrors of the GraphQL types, lowercase enums
# --------------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# The records' public form comes from app/codec.py (derived from the dataclasses: a new Message
# field reaches results, export lines and webhooks without an edit here).


def conversation_json(c: Conversation) -> dict[str, Any]:
    return codec.conversation_public(c)


def source_json(s: Source) -> dict[str, Any]:
    return codec.source_public(s)


def message_json(m: Message) -> dict[str, Any]:
    return codec.message_public(m)


def state_json(s: StateEntry) -> dict[str, Any]:
    # Names its conversation, so deleting that conversation finds this answer in the action log.
    return codec.state_public(s, exclude=frozenset())


def crm_sync_json(r: CrmSyncRecord) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "conversation_id": str(r.conversation_id),
        "trigger": r.trigger,
        "status": r.status.value,
        "attempts": r.attempts,
        "last_error": r.last_error,
        "next_attempt_at": _iso(r.next_attempt_at),
        "delivered_at": _iso(r.delivered_at),
        "created_at": _iso(r.created_at),
        "updated_at": _iso(r.updated_at),
    }


# --------------------------------------------------------------------------------------------------
# Responses and the action log
# --------------------------------------------------------------------------------------------------


def success(reply: ReplyTo, data: dict[str, Any]) -> dict[str, Any]:
    return {"correlation_id": reply.correlation_id, "action_id": reply.action_id, "success": True, "data": data}


def failure(reply: ReplyTo, code: str, message: str) -> dict[str, Any]:
    return {
        "correlation_id": reply.correlation_id,
        "action_id": reply.action_id,
        "success": False,
        "error": {"code": code, "message": message},
    }


def payload_hash(env: Envelope) -> str:
    """What an action_id is bound to: its action type, tenant, target and data (not its
    correlation id, callback queue, timestamp or signature, which a retry may change)."""
    body = {
        "action_type": canonical(env.action_type),
        "tenant_id": env.tenant_id,
        "conversation_id": env.conversation_id,
        "session_id": env.session_id,
        "data": env.data,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """The action log's say on an action about to run."""

    #: True: nobody ran this action_id before (this run's transaction now holds it).
    first: bool
    #: A prior run's logged answer (None for actions that answer from their own rows).
    response: Any = None


def _reused(env: Envelope) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"action_id {env.action_id!r} was already used with a different payload "
        "(action type, tenant, target or data); use a new action_id for a new action",
        field="action_id",
    )


async def claim(uow: UnitOfWork, env: Envelope) -> Claim:
    """Bind the action_id to this payload, in the transaction of the action's write. A replay
    with the same payload gets the first run's answer; another payload is IDEMPOTENCY_KEY_REUSED.
    A concurrent run of the same action waits here until the first commits."""
    conn = await uow.begin()
    digest = payload_hash(env)
    if await repo.claim(conn, env.tenant_id, env.action_id, canonical(env.action_type), digest):
        return Claim(first=True)
    row = await repo.get(conn, env.tenant_id, env.action_id)
    if row is None:  # pruned between the two statements
        raise RetryTransaction
    if row["payload_hash"] is not None and row["payload_hash"] != digest:
        raise _reused(env)
    _refuse_deleted(env, row["response"])
    return Claim(first=False, response=row["response"])


async def answered(conn: Connection, env: Envelope) -> dict[str, Any] | None:
    """The `data` a logged run of this action answered with, if any (another payload: refused)."""
    row = await repo.get(conn, env.tenant_id, env.action_id)
    if row is None:
        return None
    if row["payload_hash"] is not None and row["payload_hash"] != payload_hash(env):
        raise _reused(env)
    _refuse_deleted(env, row["response"])
    response: dict[str, Any] | None = row["response"]
    return response


def _refuse_deleted(env: Envelope, response: Any) -> None:
    """The conversation this action acted on was deleted (db/repositories/deletion.py scrubbed
    its answer): a replay must neither re-create what was erased nor answer with it."""
    if response == deletion_repo.DELETED_RESPONSE:
        raise NotFound(f"the conversation action_id {env.action_id!r} acted on was deleted", field="action_id")


async def remember(uow: UnitOfWork, env: Envelope, data: dict[str, Any]) -> None:
    """Log the answer of a claimed action, in the transaction of its write."""
    await repo.set_response(uow.conn, env.tenant_id, env.action_id, data)


class KnownTenants:
    """Tenants seen to exist, remembered for a while so that an action costs no tenant lookup
    (tenants are created by admins and never deleted under running actions). Bounded."""

    def __init__(self, ttl_s: float = 60.0, max_size: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_size = max_size
        self._seen: dict[str, float] = {}

    def fresh(self, tenant_id: str) -> bool:
        seen = self._seen.get(tenant_id)
        return seen is not None and time.monotonic() - seen < self.ttl_s

    def add(self, tenant_id: str) -> None:
        if len(self._seen) >= self.max_size:
            self._seen.clear()
        self._seen[tenant_id] = time.monotonic()


async def require_tenant(conn: Connection, tenant_id: str, known: KnownTenants | None = None) -> None:
    """Actions act only for tenants that exist: anyone who can write to the queue could
    otherwise create data under any name (issue 9)."""
    if known is not None and known.fresh(tenant_id):
        return
    if await tenants.get_tenant(conn, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id!r} does not exist", field="tenant_id")
    if known is not None:
        known.add(tenant_id)


async def run_once(
    db: Database, env: Envelope, work: Callable[[UnitOfWork], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run a writing action once per action_id: its answer is logged with its write, a repeated
    action gets the logged answer, the same action_id with another payload is refused."""

    async def run(uow: UnitOfWork) -> dict[str, Any]:
        found = await claim(uow, env)
        if not found.first and found.response is not None:
            prior: dict[str, Any] = found.response
            return prior
        data = await work(uow)
        await remember(uow, env, data)
        return data

    try:
        return await db.run(run)
    except IdempotencyKeyReused:
        raise
    except DomainError:
        # A concurrent run of this same action may have committed first (its conversation took
        # the sessionId we wanted): then its answer is ours.
        async with db.read() as conn:
            answer = await answered(conn, env)
        if answer is not None:
            return answer
        raise


async def save_message(
    db: Database,
    env: Envelope,
    target: ConversationRef,
    message: NewMessage,
    *,
    defaults: ConversationDefaults,
    limits: Limits = DEFAULT_LIMITS,
) -> AppendResult:
    """The save_message action: one append, once per action_id. The log binds the action_id to
    this payload; a replay then finds its message by clientMessageId (= the action_id), so the
    log keeps no answer: the message is the answer."""

    async def work(uow: UnitOfWork) -> AppendResult:
        await claim(uow, env)
        return await messages.append(uow, env.tenant_id, target, message, defaults=defaults, limits=limits)

    return await db.run(work)
