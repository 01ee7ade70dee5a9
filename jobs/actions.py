"""Domain actions as arq jobs (DESIGN.md, "Domain actions (arq)"; docs/jobs.md).

The arq function name is the action type; each job takes one argument, the envelope. A job:

1. validates the envelope (app/services/actions.py);
2. runs the action: a thin call into app/services inside `Database.run`;
3. answers: the response `{correlation_id, action_id, success, data | error}` is the job result
   and, with `callback_queue_name`, is LPUSHed to that Redis list (which then expires after
   CALLBACK_TTL_S).

Transient failures (Postgres or Redis unreachable, timeouts) raise arq's `Retry` with backoff
until ARQ_MAX_TRIES; then, like invalid envelopes, domain errors and bugs, they are answered
with an error and recorded in the dead-letter list `<ARQ_QUEUE>:dead-letters` — never retried.
Every action is idempotent by `action_id`, so a retried or re-run job never acts twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from arq import Retry
from arq.typing import WorkerCoroutine
from arq.worker import Function, func
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import tracing
from app.errors import BadUserInput, DomainError, ErrorCode, Unauthenticated
from app.logs import LOG_CONTEXT
from app.models import ConversationDefaults, ConversationRef, Role
from app.services import actions as act
from app.services import admin, conversations, crm, messages, windows
from app.services import state as state_service
from app.services.actions import Envelope, ReplyTo
from db.session import UnitOfWork
from jobs import metrics as job_metrics
from jobs import signing
from jobs.context import WorkerState, is_transient, retry_later, state

log = logging.getLogger("conversation_service.actions")

#: Largest envelope copy kept in a dead letter.
DEAD_LETTER_ENVELOPE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Action:
    """An action's data model and its call into app/services (given the parsed data and target)."""

    data: type[act.ActionData]
    run: Callable[[WorkerState, Envelope, Any, ConversationRef], Awaitable[dict[str, Any]]]
    #: False for conversation.create, which makes its conversation instead of naming one.
    needs_target: bool = True


# --------------------------------------------------------------------------------------------------
# The actions: thin calls into app/services
# --------------------------------------------------------------------------------------------------


async def create(st: WorkerState, env: Envelope, d: act.CreateData, target: ConversationRef) -> dict[str, Any]:

    async def work(uow: UnitOfWork) -> dict[str, Any]:
        created = await conversations.create(
            uow,
            env.tenant_id,
            session_id=env.session_id,
            user_id=d.user_id,
            agent_id=d.agent_id,
            channel=d.channel,
            title=d.title,
            tags=d.tags,
            metadata=d.metadata,
            limits=st.limits,
        )
        return {"conversation": act.conversation_json(created)}

    return await act.run_once(st.db, env, work)


async def save_message(
    st: WorkerState, env: Envelope, d: act.SaveMessageData, target: ConversationRef
) -> dict[str, Any]:
    message = messages.new_message(
        role=Role(d.role),
        content=d.content,
        name=d.name,
        tool_call_id=d.tool_call_id,
        tool_calls=d.tool_calls,
        metadata=d.metadata,
        sources=[s.to_source() for s in d.sources or []],
        execution=d.execution,
        client_message_id=env.action_id,
        limits=st.limits,
        **messages.extra_of(d),
    )
    defaults = ConversationDefaults(user_id=d.user_id, agent_id=d.agent_id, channel=d.channel)
    result = await act.save_message(st.db, env, target, message, defaults=defaults, limits=st.limits)
    return {"message": act.message_json(result.message), "created": result.created}


async def get_context(st: WorkerState, env: Envelope, d: act.GetContextData, target: ConversationRef) -> dict[str, Any]:
    async with st.db.read() as conn:
        window, note = await windows.context_window_of(
            conn,
            env.tenant_id,
            target,
            cache=st.resources.cache if st.resources is not None else None,
            redis=st.redis,
            http=st.http,
            max_tokens=d.max_tokens,
            model=d.model,
            reserve_tokens=d.reserve_tokens,
            include_system=d.include_system,
            include_summary=d.include_summary,
            include_customer=d.include_customer,
            default_model=st.settings.default_model,
            options=st.crm,
        )
    return {
        "conversation_id": str(window.conversation_id),
        "messages": [act.message_json(m) for m in window.messages],
        "total_tokens": window.total_tokens,
        "max_tokens": window.max_tokens,
        "reserve_tokens": window.reserve_tokens,
        "model": window.model,
        "encoding": window.encoding,
        "approximate": window.approximate,
        "dropped_messages": window.dropped_messages,
        "truncated": window.truncated,
        "first_seq": window.first_seq,
        "last_seq": window.last_seq,
        "summary": window.summary,
        "openai_messages": window.openai_messages,
        "customer_note": {"content": note.content, "token_count": note.token_count} if note else None,
    }


async def get_history(st: WorkerState, env: Envelope, d: act.GetHistoryData, target: ConversationRef) -> dict[str, Any]:
    if not 0 <= d.limit <= st.limits.max_page_size:
        raise BadUserInput(f"data.limit must be between 0 and {st.limits.max_page_size}", field="data.limit")
    forward = d.after_seq is not None
    args = messages.HistoryArgs(first=d.limit, after_seq=d.after_seq) if forward else messages.HistoryArgs(last=d.limit)
    async with st.db.read() as conn:
        page = await messages.history_with_sources(conn, env.tenant_id, target, args, limits=st.limits)
    has_more = page.has_next_page if forward else page.has_previous_page
    items = page.items
    return {"messages": [act.message_json(m) for m in items], "has_more": has_more}


async def update_state(
    st: WorkerState, env: Envelope, d: act.UpdateStateData, target: ConversationRef
) -> dict[str, Any]:

    async def work(uow: UnitOfWork) -> dict[str, Any]:
        entry = await state_service.set_by_ref(
            uow, env.tenant_id, target, d.key, d.value, expected_version=d.expected_version, limits=st.limits
        )
        return {"state": act.state_json(entry)}

    return await act.run_once(st.db, env, work)


async def session_closed(
    st: WorkerState, env: Envelope, d: act.SessionClosedData, target: ConversationRef
) -> dict[str, Any]:

    async def work(uow: UnitOfWork) -> dict[str, Any]:
        conversation, _ = await conversations.close(uow, env.tenant_id, target, d.reason, st.limits)
        return {"conversation": act.conversation_json(conversation)}

    return await act.run_once(st.db, env, work)


async def sync_crm(st: WorkerState, env: Envelope, d: act.SyncCrmData, target: ConversationRef) -> dict[str, Any]:

    async def work(uow: UnitOfWork) -> dict[str, Any]:
        record = await crm.request_sync_by_ref(uow, env.tenant_id, target, st.crm)
        return {"crm_sync": act.crm_sync_json(record)}

    return await act.run_once(st.db, env, work)


ACTIONS: dict[str, Action] = {
    act.CREATE: Action(act.CreateData, create, needs_target=False),
    act.SAVE_MESSAGE: Action(act.SaveMessageData, save_message),
    act.GET_CONTEXT: Action(act.GetContextData, get_context),
    act.GET_HISTORY: Action(act.GetHistoryData, get_history),
    act.UPDATE_STATE: Action(act.UpdateStateData, update_state),
    act.SESSION_CLOSED: Action(act.SessionClosedData, session_closed),
    act.SYNC_CRM: Action(act.SyncCrmData, sync_crm),
}


def _validate(
    st: WorkerState, args: tuple[Any, ...], kwargs: dict[str, Any], function: str, job_id: str
) -> tuple[Action, Envelope, Any, ConversationRef]:
    """Everything an action takes from its envelope, or BAD_USER_INPUT: the envelope, its data,
    and the conversation it names."""
    env = act.parse_envelope(args, kwargs, function, job_id, st.queue_name)
    action = ACTIONS[act.canonical(function)]
    data = act.parse_data(action.data, env.data)
    if action.needs_target:
        target = act.target(env, st.limits)
    elif env.conversation_id is not None:
        raise BadUserInput(
            "conversation.create takes session_id; the conversation id is generated", field="conversation_id"
        )
    else:
        target = ConversationRef(session_id=env.session_id)
    return action, env, data, target


# --------------------------------------------------------------------------------------------------
# The job wrapper: validate, run, answer, dead-letter, retry
# --------------------------------------------------------------------------------------------------


async def run_action(
    ctx: dict[str, Any], function: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """One try of an action, timed and counted by outcome (ok, retry, or its dead-letter kind),
    with the action's correlation_id on every log record made while it runs."""
    started = time.perf_counter()
    envelope = args[0] if len(args) == 1 and isinstance(args[0], dict) else {}
    correlation_id = envelope.get("correlation_id")
    token = LOG_CONTEXT.set(
        {
            "action_type": function,
            "action_id": str(ctx.get("job_id", ""))[:200],
            "correlation_id": correlation_id[:200] if isinstance(correlation_id, str) else None,
            "tenant": envelope.get("tenant_id") if isinstance(envelope.get("tenant_id"), str) else None,
        }
    )
    outcome = "internal"  # a bug that escapes below
    span_attributes = {"conversation_service.action_type": function, "messaging.message.id": str(ctx.get("job_id", ""))}
    try:
        with tracing.job_span(f"action {function}", envelope.get("traceparent"), span_attributes):
            response, dead_kind = await _run_action(ctx, function, args, kwargs)
        outcome = dead_kind or "ok"
        return response
    except Retry:
        outcome = "retry"
        job_metrics.RETRIES.labels(function).inc()
        raise
    finally:
        job_metrics.ACTIONS.labels(function, outcome).inc()
        job_metrics.ACTION_LATENCY.labels(function).observe(time.perf_counter() - started)
        LOG_CONTEXT.reset(token)


async def _run_action(
    ctx: dict[str, Any], function: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    st = state(ctx)
    job_id = str(ctx.get("job_id", ""))
    reply = act.reply_to(args[0] if len(args) == 1 else None, st.queue_name)
    if reply.action_id is None:
        reply = replace(reply, action_id=job_id)
    dead: dict[str, Any] | None = None
    try:
        if st.signing_keys:
            signing.verify(args[0] if len(args) == 1 else None, st.signing_keys)
        action, env, data, target = _validate(st, args, kwargs, function, job_id)
    except Unauthenticated as exc:
        # Whoever forged it chose the callback list too: write nothing there.
        reply = replace(reply, callback_queue_name=None)
        response = act.failure(reply, exc.code.value, exc.message)
        dead = {"kind": "unauthenticated"}
    except DomainError as exc:
        response = act.failure(reply, exc.code.value, exc.message)
        dead = {"kind": "invalid_envelope"}
    else:
        try:
            async with asyncio.timeout(st.settings.arq_job_timeout_s * 0.9):
                async with st.db.read() as conn:
                    await act.require_tenant(conn, env.tenant_id, st.known_tenants)
                result = await action.run(st, env, data, target)
            response = act.success(reply, result)
        except DomainError as exc:
            response = act.failure(reply, exc.code.value, exc.message)
            dead = {"kind": "domain_error"}
        except Exception as exc:
            if is_transient(exc):
                retry = retry_later(ctx)
                if retry is not None:
                    log.warning("action %s (%s) try %s: %r; retrying", job_id, function, ctx.get("job_try"), exc)
                    raise retry from exc
                message = f"gave up after {ctx.get('job_try')} tries: {type(exc).__name__}: {exc}"[:500]
                dead = {"kind": "gave_up", "exception": repr(exc)[:2000]}
            else:
                log.exception("action %s (%s) failed", job_id, function)
                message = f"internal error in action {job_id}; the worker log has the details"
                dead = {"kind": "internal", "exception": repr(exc)[:2000]}
            response = act.failure(reply, ErrorCode.INTERNAL.value, message)
    letter = _dead_letter(ctx, function, args, reply, response, dead) if dead is not None else None
    try:
        await _answer(st, reply, response, letter)
    except Exception as exc:
        if is_transient(exc) and (retry := retry_later(ctx)) is not None:
            log.warning("action %s: could not answer (%r); retrying", job_id, exc)
            raise retry from exc
        raise
    if letter is not None:
        # The tenant's listable, replayable copy (admin API); after the Redis list, best effort.
        await admin.record_dead_letter(st.db, letter, admin.dead_letter_id(job_id, ctx.get("enqueue_time")))
    if dead is not None:
        log.info("action %s (%s) dead-lettered as %s: %s", job_id, function, dead["kind"], response["error"]["code"])
    return response, dead["kind"] if dead is not None else None


def _dead_letter(
    ctx: dict[str, Any],
    function: str,
    args: tuple[Any, ...],
    reply: ReplyTo,
    response: dict[str, Any],
    dead: dict[str, Any],
) -> dict[str, Any]:
    raw = args[0] if len(args) == 1 else list(args)
    envelope = json.dumps(raw, separators=(",", ":"), default=str)
    return {
        **dead,
        "action_type": function,
        "action_id": reply.action_id,
        "correlation_id": reply.correlation_id,
        "tenant_id": raw.get("tenant_id") if isinstance(raw, dict) else None,
        "job_id": ctx.get("job_id"),
        "job_try": ctx.get("job_try"),
        "error": response["error"],
        "failed_at": datetime.now(UTC).isoformat(),
        "envelope": envelope if len(envelope) <= DEAD_LETTER_ENVELOPE_BYTES else None,
    }


async def _answer(st: WorkerState, reply: ReplyTo, response: dict[str, Any], letter: dict[str, Any] | None) -> None:
    """The dead letter (if any) and the callback, in one MULTI: a retry never records twice."""
    if letter is None and reply.callback_queue_name is None:
        return
    async with st.redis.pipeline(transaction=True) as pipe:
        if letter is not None:
            key = act.dead_letter_key(st.queue_name)
            pipe.lpush(key, json.dumps(letter, separators=(",", ":")))
            pipe.ltrim(key, 0, st.settings.dead_letter_max - 1)
        if reply.callback_queue_name is not None:
            pipe.lpush(reply.callback_queue_name, json.dumps(response, separators=(",", ":")))
            pipe.expire(reply.callback_queue_name, st.settings.callback_ttl_s)
        try:
            await pipe.execute()
        except ResponseError as exc:  # e.g. the callback key holds something that is not a list
            log.error("action %s: could not answer on %r: %s", reply.action_id, reply.callback_queue_name, exc)
    if letter is not None:
        job_metrics.DEAD_LETTERS.labels(letter["kind"]).inc()


# --------------------------------------------------------------------------------------------------
# Jobs that cannot be decoded (jobs/undecodable.py turns them into calls of this function)
# --------------------------------------------------------------------------------------------------


async def undecodable_job(ctx: dict[str, Any], problem: Any = None) -> dict[str, Any]:
    """A dead letter for a job the worker could not read (not JSON, pickled, too deep, not an
    arq job, an unknown function): recorded instead of vanishing."""
    st = state(ctx)
    info = problem if isinstance(problem, dict) else {}
    job_id = str(ctx.get("job_id", ""))
    reason = str(info.get("reason", "undecodable job"))
    reply = ReplyTo(action_id=job_id)
    response = act.failure(reply, ErrorCode.BAD_USER_INPUT.value, f"the job could not be decoded: {reason}")
    letter = {
        "kind": "undecodable",
        "action_type": info.get("function"),
        "action_id": job_id,
        "correlation_id": None,
        "tenant_id": None,
        "job_id": job_id,
        "job_try": ctx.get("job_try"),
        "error": response["error"],
        "failed_at": datetime.now(UTC).isoformat(),
        "envelope": None,
        "raw_base64": info.get("raw_base64"),
        "raw_bytes": info.get("raw_bytes"),
    }
    log.warning("job %s could not be decoded (%s); dead-lettered", job_id, reason)
    try:
        await _answer(st, reply, response, letter)
    except Exception as exc:
        if is_transient(exc) and (retry := retry_later(ctx)) is not None:
            raise retry from exc
        raise
    return response


async def read_dead_letters(redis: Redis, queue_name: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters first (what `conversation-service dead-letters` prints)."""
    raw: list[bytes] = await redis.lrange(act.dead_letter_key(queue_name), 0, max(limit, 1) - 1)  # type: ignore[misc]
    return [json.loads(r) for r in raw]


# --------------------------------------------------------------------------------------------------
# arq functions: made from ACTIONS, named by action type
# --------------------------------------------------------------------------------------------------


def _job(action_type: str) -> WorkerCoroutine:
    """The arq coroutine of one action type: the envelope is its one argument."""

    async def job(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await run_action(ctx, action_type, args, kwargs)

    job.__name__ = job.__qualname__ = action_type.replace(".", "_")
    return job


def functions(keep_result_s: int) -> list[Function]:
    """One arq function per action of ACTIONS, and per alias of one (the registration table)."""
    names = [*ACTIONS, *(alias for alias, action in act.ALIASES.items() if action in ACTIONS)]
    return [func(_job(name), name=name, keep_result=keep_result_s) for name in names]
