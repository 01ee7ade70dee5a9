"""CRM sync and enrichment.

Sync: closing a conversation (or `syncCrm`) writes a row to the `crm_outbox` table in the same
transaction; after commit a job is asked to deliver it (and a sweep finds any row whose job was
lost). Delivery POSTs the conversation summary to the tenant's webhook, signed with HMAC-SHA256,
with the row id as idempotency key, until the CRM answers 2xx or the tenant's attempts run out.

Enrichment: the customer profile is fetched from the tenant's lookup URL by userId and cached
in Redis. Formats, headers and how to verify a signature: docs/jobs.md.

Tenant settings used here (`tenants.settings` jsonb): `crm_webhook_url`, `crm_webhook_secret`,
`crm_lookup_url`, `crm_max_attempts`, `crm_customer_note`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg
import httpx

from app import codec, tokens
from app.cache import profiles
from app.cache.keys import profile_key
from app.cache.scan import StoreConnection as Redis
from app.errors import BadUserInput, NotFound
from app.models import Conversation, ConversationRef, Message
from app.services import context
from app.services.context import ContextWindow
from app.settings import Settings
from db.repositories import conversations as conversation_repo
from db.repositories import crm as repo
from db.repositories import messages as message_repo
from db.repositories import tenants as tenant_repo
from db.session import Connection, Database, UnitOfWork

log = logging.getLogger("conversation_service.crm")

SIGNATURE_HEADER = "X-CS-Signature"
TIMESTAMP_HEADER = "X-CS-Timestamp"
EVENT_HEADER = "X-CS-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Receivers should refuse a timestamp further than this from their clock (replays).
SIGNATURE_TOLERANCE_S = 300
USER_AGENT = "conversation-service-crm/1"


class CrmSyncStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(slots=True)
class CrmSyncRecord:
    """One delivery of a conversation to the CRM (`Conversation.crmSync` shows the newest)."""

    tenant_id: str
    id: uuid.UUID
    conversation_id: uuid.UUID
    #: 'closed' or 'manual' (syncCrm).
    trigger: str
    status: CrmSyncStatus
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


def _record(row: asyncpg.Record) -> CrmSyncRecord:
    status = CrmSyncStatus(row["status"])
    return CrmSyncRecord(
        tenant_id=row["tenant_id"],
        id=row["id"],
        conversation_id=row["conversation_id"],
        trigger=row["trigger"],
        status=status,
        attempts=row["attempts"],
        last_error=row["last_error"],
        next_attempt_at=row["next_attempt_at"] if status is CrmSyncStatus.PENDING else None,
        delivered_at=row["delivered_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


@dataclass(frozen=True, slots=True)
class CrmOptions:
    """Server-wide CRM settings (tenants override max_attempts)."""

    timeout_s: float = 10.0
    max_attempts: int = 8
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0
    last_messages: int = 10
    profile_ttl_s: int = 300
    #: How long a sender holds a delivery; after that a crashed sender's delivery is taken again.
    lease_s: float = 60.0

    @classmethod
    def from_settings(cls, s: Settings) -> CrmOptions:
        return cls(
            timeout_s=s.crm_timeout_s,
            max_attempts=s.crm_max_attempts,
            retry_base_s=s.crm_retry_base_s,
            retry_max_s=s.crm_retry_max_s,
            last_messages=s.crm_last_messages,
            profile_ttl_s=s.crm_profile_ttl_s,
            lease_s=s.arq_job_timeout_s,
        )

    def backoff_s(self, attempts: int) -> float:
        """Exponential with jitter: ~base, 2·base, 4·base, … capped at retry_max_s."""
        delay = min(self.retry_base_s * (1 << min(max(attempts - 1, 0), 30)), self.retry_max_s)
        return delay * random.uniform(0.8, 1.0)


@dataclass(frozen=True, slots=True)
class CrmConfig:
    """A tenant's CRM settings, read from `tenants.settings`."""

    webhook_url: str | None = None
    webhook_secret: str | None = None
    #: The secret before the last rotation, still signing until its overlap ends (rotateCrmSecret).
    previous_secret: str | None = None
    lookup_url: str | None = None
    max_attempts: int = 8
    #: Include the customer profile in context windows as a system note (get_context may override).
    customer_note: bool = False

    @classmethod
    def of(cls, settings: Mapping[str, Any] | None, options: CrmOptions) -> CrmConfig:
        s = settings or {}

        def text(key: str) -> str | None:
            value = s.get(key)
            return value if isinstance(value, str) and value else None

        attempts = s.get("crm_max_attempts")
        until = text("crm_webhook_secret_previous_until")
        overlapping = until is not None and datetime.fromisoformat(until) > datetime.now(UTC)
        return cls(
            webhook_url=text("crm_webhook_url"),
            webhook_secret=text("crm_webhook_secret"),
            previous_secret=text("crm_webhook_secret_previous") if overlapping else None,
            lookup_url=text("crm_lookup_url"),
            max_attempts=attempts if isinstance(attempts, int) and attempts >= 1 else options.max_attempts,
            customer_note=s.get("crm_customer_note") is True,
        )


async def tenant_config(conn: Connection, tenant_id: str, options: CrmOptions) -> CrmConfig:
    row = await tenant_repo.get_tenant(conn, tenant_id)
    return CrmConfig.of(row["settings"] if row else None, options)


# --------------------------------------------------------------------------------------------------
# Dispatch after commit
# --------------------------------------------------------------------------------------------------

#: Asks a job to deliver (tenant_id, outbox id, attempts so far). The worker registers one at
#: startup (jobs/crm.py); an API process should register one too. Without one, the sweep cron
#: delivers within its period.
Dispatch = Callable[[str, uuid.UUID, int], Awaitable[None]]


class _Registry:
    dispatch: Dispatch | None = None


def set_dispatcher(dispatch: Dispatch | None) -> None:
    """Register (or, with None, remove) how this process asks for a delivery after commit."""
    _Registry.dispatch = dispatch


def _after_commit_dispatch(uow: UnitOfWork, tenant_id: str, outbox_id: uuid.UUID) -> None:
    dispatch = _Registry.dispatch
    if dispatch is None:
        return

    async def hook() -> None:
        # The row is committed: a failure here only delays delivery until the sweep, so it must
        # not fail the work that wrote it.
        try:
            await dispatch(tenant_id, outbox_id, 0)
        except Exception as exc:
            log.warning("could not enqueue CRM delivery %s (the sweep will): %s", outbox_id, exc)

    uow.after_commit(hook)


async def record_close(uow: UnitOfWork, conversation: Conversation) -> CrmSyncRecord | None:
    """In the transaction that closed `conversation`: a pending delivery when the tenant has a
    webhook, sent after commit. Returns it, or None for tenants without a CRM."""
    row = await repo.insert_if_configured(uow.conn, conversation.tenant_id, conversation.id, "closed")
    if row is None:
        return None
    _after_commit_dispatch(uow, conversation.tenant_id, row["id"])
    return _record(row)


async def request_sync(
    uow: UnitOfWork, tenant_id: str, conversation_id: uuid.UUID, options: CrmOptions | None = None
) -> CrmSyncRecord:
    """`syncCrm`: deliver the conversation now. A delivery already pending is returned as is (it
    sends the conversation as it is when it goes out). BAD_USER_INPUT without a webhook."""
    return await request_sync_by_ref(uow, tenant_id, ConversationRef(id=conversation_id), options)


async def request_sync_by_ref(
    uow: UnitOfWork, tenant_id: str, target: ConversationRef, options: CrmOptions | None = None
) -> CrmSyncRecord:
    """`request_sync` on a conversation named by id or sessionId (the sync_crm action): one use
    case, so the edge makes one call and the lookup shares the delivery's transaction."""
    conn = await uow.begin()
    conversation = await conversation_repo.get(conn, tenant_id, id=target.id, session_id=target.session_id)
    if conversation is None:
        raise NotFound("conversation not found", conversationId=str(target.id) if target.id else None)
    conversation_id = conversation.id
    config = await tenant_config(conn, tenant_id, options or CrmOptions())
    if config.webhook_url is None:
        raise BadUserInput("this tenant has no CRM webhook (tenant setting crm_webhook_url)", field="conversationId")
    pending = await repo.latest(conn, tenant_id, conversation_id, pending_only=True)
    if pending is not None:
        return _record(pending)
    row = await repo.insert(conn, tenant_id, conversation_id, "manual")
    _after_commit_dispatch(uow, tenant_id, row["id"])
    return _record(row)


#: For app/services/admin.py (redeliverCrmSync).
record_of = _record
dispatch_after_commit = _after_commit_dispatch


async def crm_sync_status(conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> CrmSyncRecord | None:
    """The conversation's newest CRM delivery (`Conversation.crmSync`); None if it never had one."""
    row = await repo.latest(conn, tenant_id, conversation_id)
    return _record(row) if row else None


# --------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256 over `"<timestamp>." + body` (body: the raw request body; for a
    GET, the request target, e.g. `/customers?userId=u1`)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> bool:
    """What a receiver does: the timestamp is recent and one of the header's comma-separated
    signatures matches (constant time; two during a secret rotation's overlap)."""
    if not timestamp or not signature:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body)
    return any(hmac.compare_digest(expected, candidate.strip()) for candidate in signature.split(","))


def _signed_headers(secret: str | None, body: bytes, previous: str | None = None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if secret:
        ts = int(time.time())
        headers[TIMESTAMP_HEADER] = str(ts)
        headers[SIGNATURE_HEADER] = ", ".join(sign(s, ts, body) for s in (secret, previous) if s)
    return headers


# --------------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------------


#: What the webhook leaves out of the public objects (docs/jobs.md, "Webhook format"); every other
#: field, a new one included, goes out through the codec.
_WEBHOOK_CONVERSATION_HIDES = frozenset({"tenant_id", "last_activity_at"})
_WEBHOOK_MESSAGE_HIDES = frozenset(
    {"tenant_id", "conversation_id", "client_message_id", "metadata", "execution", "sources"}
)


def build_payload(record: CrmSyncRecord, conversation: Conversation, last_messages: list[Message]) -> dict[str, Any]:
    """The webhook body (docs/jobs.md, "CRM webhook")."""
    c = conversation
    duration = (c.closed_at - c.created_at).total_seconds() if c.closed_at else None
    return {
        "event": "conversation.closed" if record.trigger == "closed" else "conversation.sync",
        "delivery_id": str(record.id),
        "attempt": record.attempts,
        "tenant_id": c.tenant_id,
        "conversation": codec.conversation_public(c, _WEBHOOK_CONVERSATION_HIDES) | {"duration_seconds": duration},
        "last_messages": [codec.message_public(m, _WEBHOOK_MESSAGE_HIDES) for m in last_messages],
        "sent_at": datetime.now(UTC).isoformat(),
    }


@dataclass(slots=True)
class DeliveryResult:
    #: The delivery after this attempt; None when there was nothing to send (not due, settled,
    #: held by another sender, or gone with its conversation).
    record: CrmSyncRecord | None
    delivered: bool = False
    #: Set when the delivery failed and will be tried again in this many seconds.
    retry_in_s: float | None = None


async def deliver(
    db: Database, http: httpx.AsyncClient, tenant_id: str, outbox_id: uuid.UUID, options: CrmOptions
) -> DeliveryResult:
    """One attempt: claim the delivery, POST it, record the outcome. Postgres errors propagate
    (the job retries); CRM errors are recorded on the delivery and scheduled with backoff.

    This takes the Database, not a unit of work: the claim must be committed before the POST
    and the outcome after it, and no transaction may stay open across an HTTP call."""
    claimed = await db.run(lambda uow: repo.claim(uow.conn, tenant_id, outbox_id, options.lease_s))
    if claimed is None:
        return DeliveryResult(record=None)
    record = _record(claimed)
    async with db.read() as conn:
        config = await tenant_config(conn, tenant_id, options)
        conversation = await conversation_repo.get(conn, tenant_id, id=record.conversation_id)
        last: list[Message] = []
        if conversation is not None and options.last_messages and conversation.last_seq:
            lo = max(1, conversation.last_seq - options.last_messages + 1)
            last = await message_repo.range_(conn, tenant_id, conversation.id, lo, conversation.last_seq)
    error: str | None
    give_up = False
    if conversation is None:  # purged between the claim and the read
        error, give_up = "the conversation no longer exists", True
    elif config.webhook_url is None or config.webhook_secret is None:
        error, give_up = "the tenant has no crm_webhook_url or no crm_webhook_secret", True
    else:
        body = json.dumps(build_payload(record, conversation, last), separators=(",", ":")).encode()
        headers = {
            **_signed_headers(config.webhook_secret, body, config.previous_secret),
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: str(record.id),
            EVENT_HEADER: "conversation.closed" if record.trigger == "closed" else "conversation.sync",
        }
        try:
            response = await http.post(config.webhook_url, content=body, headers=headers, timeout=options.timeout_s)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        else:
            ok = 200 <= response.status_code < 300
            error = None if ok else f"HTTP {response.status_code}: {response.text[:300]}"
    if error is None:
        row = await db.run(lambda uow: repo.settle(uow.conn, tenant_id, outbox_id, status="delivered", error=None))
        return DeliveryResult(record=_record(row) if row else None, delivered=True)
    if give_up or record.attempts >= config.max_attempts:
        log.warning("CRM delivery %s failed for good after %d attempts: %s", outbox_id, record.attempts, error)
        row = await db.run(lambda uow: repo.settle(uow.conn, tenant_id, outbox_id, status="failed", error=error))
        return DeliveryResult(record=_record(row) if row else None)
    retry_in = options.backoff_s(record.attempts)
    log.info("CRM delivery %s attempt %d failed (%s); next in %.1f s", outbox_id, record.attempts, error, retry_in)
    row = await db.run(
        lambda uow: repo.settle(uow.conn, tenant_id, outbox_id, status="pending", error=error, retry_in_s=retry_in)
    )
    return DeliveryResult(record=_record(row) if row else None, retry_in_s=retry_in)


async def due_deliveries(db: Database, limit: int = 500) -> list[CrmSyncRecord]:
    async with db.read() as conn:
        return [_record(r) for r in await repo.due(conn, limit)]


#: The states delivery_stats reports (every one, zero included, so a gauge never keeps a stale value).
#: Delivered ones are not sampled (they are counted as they happen: crm_deliveries_delivered_total).
DELIVERY_STATES = ("pending", "retrying", "failed")


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    by_state: dict[str, int]
    #: Seconds since the oldest delivery not yet delivered (pending or given up) was created; 0: none.
    oldest_undelivered_s: float


async def delivery_stats(db: Database) -> DeliveryStats:
    async with db.read() as conn:
        rows = await repo.delivery_stats(conn)
    by_state = dict.fromkeys(DELIVERY_STATES, 0)
    oldest = 0.0
    for row in rows:
        by_state[row["state"]] = int(row["deliveries"])
        if row["oldest_undelivered_s"] is not None:
            oldest = max(oldest, float(row["oldest_undelivered_s"]))
    return DeliveryStats(by_state=by_state, oldest_undelivered_s=oldest)


# --------------------------------------------------------------------------------------------------
# Enrichment
# --------------------------------------------------------------------------------------------------


def profile_cache_key(tenant_id: str, user_id: str) -> str:
    return profile_key(tenant_id, user_id)


def lookup_request(lookup_url: str, user_id: str) -> str:
    """`{user_id}` in the URL is replaced (URL-encoded); otherwise `userId=<id>` is appended."""
    quoted = urllib.parse.quote(user_id, safe="")
    if "{user_id}" in lookup_url:
        return lookup_url.replace("{user_id}", quoted)
    return lookup_url + ("&" if "?" in lookup_url else "?") + "userId=" + quoted


async def customer_profile(
    conn: Connection,
    redis: Redis,
    http: httpx.AsyncClient,
    tenant_id: str,
    user_id: str | None,
    options: CrmOptions | None = None,
) -> dict[str, Any] | None:
    """The CRM's profile of `user_id` (`Conversation.customer`), cached in Redis for
    profile_ttl_s (a 404 too). None without a user, a lookup URL, or a profile; a CRM that fails
    or times out gives None too (logged, not cached), so a slow CRM never fails a read."""
    options = options or CrmOptions()
    if not user_id:
        return None
    config = await tenant_config(conn, tenant_id, options)
    if config.lookup_url is None:
        return None
    cached = await profiles.cached_profile(redis, tenant_id, user_id)
    if not isinstance(cached, profiles.Missing):
        return cached
    url = lookup_request(config.lookup_url, user_id)
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        response = await http.get(
            url,
            headers=_signed_headers(config.webhook_secret, target.encode(), config.previous_secret),
            timeout=options.timeout_s,
        )
    except httpx.HTTPError as exc:
        log.warning("customer lookup for tenant %s failed: %s", tenant_id, exc)
        return None
    if response.status_code == 404:
        found = None
    elif response.status_code == 200:
        try:
            body = response.json()
        except ValueError:
            log.warning("customer lookup for tenant %s answered something that is not JSON", tenant_id)
            return None
        found = body if isinstance(body, dict) else None
    else:
        log.warning("customer lookup for tenant %s answered HTTP %s", tenant_id, response.status_code)
        return None
    await profiles.remember_profile(redis, tenant_id, user_id, found, options.profile_ttl_s)
    return found


def customer_note(profile: dict[str, Any]) -> str:
    """The system note a context window carries when it includes the customer."""
    return "Customer profile from the CRM (JSON): " + json.dumps(profile, separators=(",", ":"), ensure_ascii=False)


#: A customer note may take at most this share of a window's budget (max_tokens - reserve_tokens).
CUSTOMER_NOTE_SHARE = 4


@dataclass(slots=True)
class CustomerNote:
    content: str
    token_count: int


async def context_window(
    conn: Connection,
    redis: Redis,
    http: httpx.AsyncClient,
    conversation: Conversation,
    *,
    max_tokens: int,
    model: str | None = None,
    reserve_tokens: int = 0,
    include_system: bool = True,
    include_summary: bool = True,
    include_customer: bool | None = None,
    default_model: str = "gpt-4o",
    options: CrmOptions | None = None,
    source: context.WindowSource | None = None,
) -> tuple[ContextWindow, CustomerNote | None]:
    """`context.build_window`, optionally with the customer profile as a system note after the
    leading system messages. `include_customer` None: the tenant's `crm_customer_note` decides.

    The note's tokens are reserved before the window is built, so `total_tokens` (which counts
    it) still never exceeds max_tokens - reserve_tokens. A note over a quarter of that budget, or
    one that does not fit beside the system prompt, is left out rather than squeezing messages."""
    options = options or CrmOptions()
    tenant_id = conversation.tenant_id

    async def build(reserve: int) -> ContextWindow:
        return await context.build_window(
            conn,
            tenant_id,
            conversation,
            max_tokens=max_tokens,
            model=model,
            reserve_tokens=reserve,
            include_system=include_system,
            include_summary=include_summary,
            default_model=default_model,
            source=source,
        )

    wanted = include_customer
    if wanted is None and conversation.user_id:
        wanted = (await tenant_config(conn, tenant_id, options)).customer_note
    profile = None
    if wanted and conversation.user_id:
        profile = await customer_profile(conn, redis, http, tenant_id, conversation.user_id, options)
    if profile is None:
        return await build(reserve_tokens), None
    text = customer_note(profile)
    note = CustomerNote(
        text, tokens.count_message(text, encoding=tokens.encoding_name_for_model(model or default_model))
    )
    if note.token_count > (max_tokens - reserve_tokens) // CUSTOMER_NOTE_SHARE:
        return await build(reserve_tokens), None
    try:
        window = await build(reserve_tokens + note.token_count)
    except BadUserInput:  # the system prompt and the note do not fit together: no note
        return await build(reserve_tokens), None
    window.reserve_tokens = reserve_tokens
    window.total_tokens += note.token_count
    leading = next(
        (i for i, m in enumerate(window.openai_messages) if m["role"] != "system"), len(window.openai_messages)
    )
    window.openai_messages.insert(leading, {"role": "system", "content": text})
    return window, note
