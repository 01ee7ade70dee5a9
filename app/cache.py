"""The Redis hot cache: write-through after commit, and never a state Postgres does not have.

What is cached, per conversation: its header (the `conversations` row), its last
`CACHE_RECENT_MESSAGES` messages (a gap-free suffix: seqs s-n+1..s, with token counts and
sources), all its state keys, and its first SYSTEM message (for context windows); per tenant, the
sessionId → conversation mapping. Reads of the recent history, the header, state and context
windows are served from here when hot and filled from Postgres on a miss.

Keys. Redis Cluster needs every key one script touches in one slot, so a conversation's keys
share the hash tag `{<tenant_id>:<conversation_id>}` (tenant ids never contain braces):

    cs:{<tenant>:<conversation>}:hdr    HASH   v  version: +1 on every change, the fence fills check
                                               b  boot id of the Redis server that wrote the entry
                                               c  the header (JSON)          s  its last_seq
                                               n  messages in :msgs          z  their bytes
                                               q  the sessionId              a  "1" while ACTIVE
                                               y  first SYSTEM message (JSON), "" = none in 1..s
    cs:{<tenant>:<conversation>}:msgs   LIST   the last n messages, oldest first (JSON arrays):
                                               at most CACHE_RECENT_MESSAGES and MAX_ENTRY_BYTES
    cs:{<tenant>:<conversation>}:state  HASH   "\\0" → "1" (loaded; Postgres text never holds NUL)
                                               key → "<version>:<updated_at µs>:<entry JSON>"
    cs:{<tenant>}:sess:<sha256(sessionId)[:32]>   STRING  conversation id (immutable; every read
                                               checks it against the header's `q`)

An entry is valid when `c` is present and `b` is the boot id of the server answering: all three
keys are then consistent (each script below runs atomically). A *tombstone* is a header holding
only `v` and `b`: it keeps the version counter alive for a minute after an invalidation.

Never wrong (docs/decisions.md, "Hot cache" has the full argument):

- The cache is a Database listener: it hears each committed unit of work's events, in order,
  after commit. Nothing in the services or inside a transaction talks to Redis.
- Every event is applied by a Lua script only when it provably follows what is cached, otherwise
  the script drops the entry and bumps `v` (an invalidation): an append only when the cached tail
  is seq-1; a state write only when the cached key is the previous version and older; creating a
  conversation only when nothing is cached for it. Closes, other header changes, new state keys
  and deletes always invalidate (their order is not provable from what Postgres returns).
- A fill reads `v` (and Redis' clock) before reading Postgres and writes only if `v` is unchanged
  and the read is under FILL_DEADLINE_S old: any event committed meanwhile has bumped `v`, so a
  fill never overwrites newer data; a fill slower than the deadline is dropped (tombstones outlive
  it, so an expired tombstone cannot let an old fill in).
- A Redis write that fails after commit marks the conversation dirty in this process: its reads
  go to Postgres and a background task retries the invalidation until Redis acknowledges it.
  While Redis is unreachable (a failure opens a breaker for CACHE_RETRY_S) every read and write
  goes to Postgres only.
- A restarted Redis (which may come back from its append-only file with entries older than
  writes that failed, or without writes it had acknowledged) has a new `run_id`: entries carry the
  boot id they were written under, so everything from before the restart reads as a miss.
- Entries of ACTIVE conversations live CACHE_TTL_S after their last write or fill (reads do not
  extend them: a stale entry cannot be kept alive by readers); others CACHE_CLOSED_GRACE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from app import metrics
from app.decoded_messages import DecodedMessages
from app.models import Conversation, ConversationRef, DomainEvent, EventType, Message, Role, Source, StateEntry, Status
from app.services import context
from app.services.context import PostgresWindowSource, Prelude
from app.settings import Settings
from db.repositories import context as context_repo
from db.repositories import conversations as conversation_repo
from db.repositories import messages as message_repo
from db.repositories import state as state_repo
from db.session import Connection, Database

log = logging.getLogger("conversation_service.cache")

#: A fill whose read of `v` is older than this (by Redis' clock) is not written.
FILL_DEADLINE_S = 10.0
#: How long an invalidated entry's version counter is kept; must exceed FILL_DEADLINE_S.
TOMBSTONE_TTL_S = 60.0
#: The state hash's "loaded" marker: Postgres text cannot hold NUL, so no state key is this.
LOADED = b"\x00"
#: Where a request's sessionId → conversation id is remembered in process (the mapping never
#: changes while the conversation exists; every read checks it against the header).
SESSION_LRU_SIZE = 65_536
#: Messages cached per conversation stop at this many bytes too (the newest always stays).
MAX_ENTRY_BYTES = 2 * 1024 * 1024

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ROLES = {r.value: r for r in Role}
_STATUSES = {s.value: s for s in Status}


@dataclass(frozen=True, slots=True)
class CacheOptions:
    recent_messages: int = 200
    ttl_s: float = 1800.0
    closed_grace_s: float = 300.0
    timeout_s: float = 0.5
    retry_s: float = 1.0
    #: Decoded messages kept in process (app/decoded_messages.py), in approximate bytes.
    decoded_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheOptions:
        return cls(
            recent_messages=settings.cache_recent_messages,
            ttl_s=settings.cache_ttl_s,
            closed_grace_s=settings.cache_closed_grace_s,
            timeout_s=settings.cache_timeout_s,
            retry_s=settings.cache_retry_s,
            decoded_bytes=settings.decoded_cache_bytes,
        )


# --------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------


def conversation_keys(tenant_id: str, conversation_id: uuid.UUID) -> tuple[str, str, str]:
    """(hdr, msgs, state) keys of one conversation: one hash tag, one Cluster slot."""
    tag = f"cs:{{{tenant_id}:{conversation_id}}}:"
    return tag + "hdr", tag + "msgs", tag + "state"


def session_key(tenant_id: str, session_id: str) -> str:
    """The sessionId → conversation id mapping (hashed: session ids are free text up to 200 chars)."""
    return f"cs:{{{tenant_id}}}:sess:{hashlib.sha256(session_id.encode()).hexdigest()[:32]}"


# --------------------------------------------------------------------------------------------------
# Lua. Every script takes KEYS = (hdr, msgs, state) of one conversation and ARGV[1] = boot id.
# --------------------------------------------------------------------------------------------------

_LUA_COMMON = r"""
local LOADED = '\0'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function tombstone(v, boot, ttl)
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'v', v + 1, 'b', boot)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local function expire_all(ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
"""

#: ARGV: boot, expected sessionId or ''. → {1, header} | {3} (not this session) | {0} (not cached)
_READ_HEADER = r"""
local h = redis.call('HMGET', KEYS[1], 'b', 'c', 'q')
if not h[2] or h[1] ~= ARGV[1] then return {0} end
if ARGV[2] ~= '' and h[3] ~= ARGV[2] then return {3} end
return {1, h[2]}
"""

#: ARGV: boot, expected sessionId or '', forward (1/0), lower, upper cap (-1: none), size.
#: → {1, last_seq, {messages}} | {2} (older than the cached suffix) | {3} (not this session)
#:   | {0, v, now_ms} (miss: the fill ticket). Bounds mirror messages.PageRequest.bounds.
_READ_PAGE = r"""
local h = redis.call('HMGET', KEYS[1], 'v', 'b', 'c', 's', 'n', 'q')
if not h[3] or h[2] ~= ARGV[1] then return {0, tonumber(h[1]) or 0, now_ms()} end
if ARGV[2] ~= '' and h[6] ~= ARGV[2] then return {3} end
local s = tonumber(h[4])
local n = tonumber(h[5])
local upper = s + 1
local cap = tonumber(ARGV[5])
if cap >= 0 and cap < upper then upper = cap end
local lower = tonumber(ARGV[4])
local size = tonumber(ARGV[6])
local lo, hi
if ARGV[3] == '1' then
  lo = lower + 1
  hi = math.min(upper - 1, lower + size)
else
  lo = math.max(lower + 1, upper - size)
  hi = upper - 1
end
if hi < lo then return {1, s, {}} end
local head = s - n + 1
if lo < head then return {2} end
local items = redis.call('LRANGE', KEYS[2], lo - head, hi - head)
if #items ~= hi - lo + 1 then return {0, tonumber(h[1]) or 0, now_ms()} end
return {1, s, items}
"""

#: ARGV: boot, expected sessionId or '', how many newest messages.
#: → {1, header, last_seq, n, first_system, system_prompt, summary, {messages}} | {3} | {0, v, now_ms}
_READ_WINDOW = r"""
local h = redis.call('HMGET', KEYS[1], 'v', 'b', 'c', 's', 'n', 'y', 'q')
if not h[3] or h[2] ~= ARGV[1] then return {0, tonumber(h[1]) or 0, now_ms()} end
if ARGV[2] ~= '' and h[7] ~= ARGV[2] then return {3} end
local st = redis.call('HMGET', KEYS[3], LOADED, 'system_prompt', 'summary')
local n = tonumber(h[5])
local m = math.min(tonumber(ARGV[3]), n)
local items = {}
if m > 0 then items = redis.call('LRANGE', KEYS[2], -m, -1) end
if not st[1] or #items ~= m then return {0, tonumber(h[1]) or 0, now_ms()} end
return {1, h[3], tonumber(h[4]), n, h[6], st[2], st[3], items}
"""

#: ARGV: boot, lo, hi. → the messages lo..hi, or false when not all cached.
_READ_RANGE = r"""
local h = redis.call('HMGET', KEYS[1], 'b', 'c', 's', 'n')
if not h[2] or h[1] ~= ARGV[1] then return false end
local s = tonumber(h[3])
local head = s - tonumber(h[4]) + 1
local lo = tonumber(ARGV[2])
local hi = tonumber(ARGV[3])
if hi < lo then return {} end
if lo < head or hi > s then return false end
local items = redis.call('LRANGE', KEYS[2], lo - head, hi - head)
if #items ~= hi - lo + 1 then return false end
return items
"""

#: ARGV: boot. → the state hash as a flat list (LOADED included), or false.
_READ_STATE = r"""
local h = redis.call('HMGET', KEYS[1], 'b', 'c')
if not h[2] or h[1] ~= ARGV[1] then return false end
local all = redis.call('HGETALL', KEYS[3])
if #all == 0 then return false end
return all
"""

#: A message appended. ARGV: boot, seq, message, header, is SYSTEM (1/0), max messages, ttl ms,
#: tombstone ttl ms, max bytes. Applies only on top of the cached tail seq-1 (dropping the oldest
#: messages past the count or byte limit); otherwise invalidates.
_APPLY_APPEND = r"""
local h = redis.call('HMGET', KEYS[1], 'v', 'b', 'c', 's', 'n', 'y', 'z')
local v = tonumber(h[1]) or 0
local seq = tonumber(ARGV[2])
if h[3] and h[2] == ARGV[1] and tonumber(h[4]) == seq - 1
   and redis.call('LLEN', KEYS[2]) == tonumber(h[5]) then
  local n = redis.call('RPUSH', KEYS[2], ARGV[3])
  local z = (tonumber(h[7]) or 0) + #ARGV[3]
  local max = tonumber(ARGV[6])
  local max_bytes = tonumber(ARGV[9])
  while n > 1 and (n > max or z > max_bytes) do
    z = z - #redis.call('LPOP', KEYS[2])
    n = n - 1
  end
  redis.call('HSET', KEYS[1], 'v', v + 1, 'c', ARGV[4], 's', seq, 'n', n, 'z', z, 'a', '1')
  if ARGV[5] == '1' and h[6] == '' then redis.call('HSET', KEYS[1], 'y', ARGV[3]) end
  expire_all(tonumber(ARGV[7]))
  return 1
end
tombstone(v, ARGV[1], tonumber(ARGV[8]))
return 0
"""

#: A conversation created. ARGV: boot, header, sessionId, ttl ms. Written only when nothing at
#: all is cached for it (anything there came from a later event or a fill: leave it).
_APPLY_CREATED = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'v', 1, 'b', ARGV[1], 'c', ARGV[2], 's', 0, 'n', 0, 'y', '', 'q', ARGV[3], 'a', '1')
redis.call('HSET', KEYS[3], LOADED, '1')
expire_all(tonumber(ARGV[4]))
return 1
"""

#: A state key overwritten. ARGV: boot, key, stored value, version, updated_at µs, ttl ms,
#: tombstone ttl ms. Applies only over the previous version with an older timestamp.
_APPLY_STATE = r"""
local h = redis.call('HMGET', KEYS[1], 'v', 'b', 'c', 'a')
local v = tonumber(h[1]) or 0
if h[3] and h[2] == ARGV[1] then
  local cur = redis.call('HMGET', KEYS[3], LOADED, ARGV[2])
  if cur[1] and cur[2] then
    local cv, cu = string.match(cur[2], '^(%d+):(%d+):')
    if tonumber(cv) == tonumber(ARGV[4]) - 1 and tonumber(cu) < tonumber(ARGV[5]) then
      redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
      redis.call('HSET', KEYS[1], 'v', v + 1)
      if h[4] == '1' then expire_all(tonumber(ARGV[6])) end
      return 1
    end
  end
end
tombstone(v, ARGV[1], tonumber(ARGV[7]))
return 0
"""

#: ARGV: boot, tombstone ttl ms.
_INVALIDATE = r"""
tombstone(tonumber(redis.call('HGET', KEYS[1], 'v')) or 0, ARGV[1], tonumber(ARGV[2]))
return 1
"""

#: ARGV: boot, ticket v, ticket ms, deadline ms, header, last_seq, first SYSTEM message or '',
#: sessionId, active (1/0), ttl ms, number of state ARGVs (2 per key), state key/value pairs...,
#: messages oldest first... → 1 written, 0 someone changed it since the ticket, -1 too late.
_FILL = r"""
local v = tonumber(redis.call('HGET', KEYS[1], 'v')) or 0
if v ~= tonumber(ARGV[2]) then return 0 end
if now_ms() - tonumber(ARGV[3]) > tonumber(ARGV[4]) then return -1 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local ns = tonumber(ARGV[11])
local first = 12 + ns
local z = 0
for k = first, #ARGV do z = z + #ARGV[k] end
redis.call('HSET', KEYS[1], 'v', v + 1, 'b', ARGV[1], 'c', ARGV[5], 's', ARGV[6], 'n', #ARGV - first + 1,
           'y', ARGV[7], 'q', ARGV[8], 'a', ARGV[9], 'z', z)
redis.call('HSET', KEYS[3], LOADED, '1')
for i = 12, first - 1, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
local j = first
while j <= #ARGV do
  local last = math.min(j + 99, #ARGV)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, j, last))
  j = last + 1
end
expire_all(tonumber(ARGV[10]))
return 1
"""


@dataclass(frozen=True, slots=True)
class _Script:
    name: str
    source: str
    sha: str

    @classmethod
    def of(cls, name: str, body: str) -> _Script:
        source = _LUA_COMMON + body
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())


READ_HEADER = _Script.of("read_header", _READ_HEADER)
READ_PAGE = _Script.of("read_page", _READ_PAGE)
READ_WINDOW = _Script.of("read_window", _READ_WINDOW)
READ_RANGE = _Script.of("read_range", _READ_RANGE)
READ_STATE = _Script.of("read_state", _READ_STATE)
APPLY_APPEND = _Script.of("apply_append", _APPLY_APPEND)
APPLY_CREATED = _Script.of("apply_created", _APPLY_CREATED)
APPLY_STATE = _Script.of("apply_state", _APPLY_STATE)
INVALIDATE = _Script.of("invalidate", _INVALIDATE)
FILL = _Script.of("fill", _FILL)
SCRIPTS = (
    READ_HEADER,
    READ_PAGE,
    READ_WINDOW,
    READ_RANGE,
    READ_STATE,
    APPLY_APPEND,
    APPLY_CREATED,
    APPLY_STATE,
    INVALIDATE,
    FILL,
)

Call = tuple[_Script, Sequence[str], Sequence[Any]]


async def _load_scripts(redis: Redis) -> None:
    for script in SCRIPTS:
        await redis.script_load(script.source)


async def _run_calls(redis: Redis, calls: Sequence[Call]) -> list[Any]:
    """EVALSHA each call in one pipeline (one round trip); NOSCRIPT (a flushed or restarted
    server) loads the scripts and runs those calls again. Errors come back as values."""
    results: list[Any] = [None] * len(calls)
    pending = list(range(len(calls)))
    for attempt in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            for i in pending:
                script, keys, args = calls[i]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            answers = await pipe.execute(raise_on_error=False)
        missing = []
        for i, answer in zip(pending, answers, strict=True):
            results[i] = answer
            if isinstance(answer, NoScriptError):
                missing.append(i)
        if not missing or attempt:
            break
        await _load_scripts(redis)
        pending = missing
    return results


async def evict(redis: Redis, targets: Iterable[tuple[str, uuid.UUID]]) -> int:
    """Drop these (tenant_id, conversation_id)s' entries and fence in-flight fills (the version
    is bumped and kept for TOMBSTONE_TTL_S, unlike a plain DEL). For crons and tools holding
    any Redis client; raises RedisError when Redis cannot be reached. Returns entries dropped."""
    calls: list[Call] = [
        (INVALIDATE, conversation_keys(tenant_id, cid), ("", int(TOMBSTONE_TTL_S * 1000))) for tenant_id, cid in targets
    ]
    done = 0
    for i in range(0, len(calls), 500):
        results = await _run_calls(redis, calls[i : i + 500])
        for result in results:
            if isinstance(result, Exception):
                raise result
        done += len(results)
    metrics.CACHE_INVALIDATIONS.inc(done)
    return done


# --------------------------------------------------------------------------------------------------
# Encoding: orjson; messages as arrays (a third of the bytes of objects, and faster to decode)
# --------------------------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):  # asyncpg's UUID subclass: orjson takes exact types only
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)


def encode_message(m: Message) -> bytes:
    sources = (
        None
        if m.sources is None
        else [[s.document_id, s.chunk_id, s.title, s.uri, s.score, s.snippet] for s in m.sources]
    )
    return _dumps(
        [
            m.seq,
            m.id,
            m.client_message_id,
            m.role,
            m.content,
            m.name,
            m.tool_call_id,
            m.tool_calls,
            m.token_count,
            m.metadata,
            m.execution,
            m.created_at,
            sources,
        ]
    )


def _message(tenant_id: str, conversation_id: uuid.UUID, a: list[Any]) -> Message:
    sources = a[12]
    return Message(
        tenant_id,
        conversation_id,
        a[0],
        uuid.UUID(a[1]),
        a[2],
        _ROLES[a[3]],
        a[4],
        a[5],
        a[6],
        a[7],
        a[8],
        a[9],
        a[10],
        datetime.fromisoformat(a[11]),
        None if sources is None else [Source(*s) for s in sources],
    )


def decode_messages(tenant_id: str, conversation_id: uuid.UUID, raw: Sequence[bytes]) -> list[Message]:
    if not raw:
        return []
    arrays = orjson.loads(b"[" + b",".join(raw) + b"]")
    return [_message(tenant_id, conversation_id, a) for a in arrays]


def encode_conversation(c: Conversation) -> bytes:
    return _dumps(c)


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def decode_conversation(raw: bytes) -> Conversation:
    return conversation_from_dict(orjson.loads(raw))


def conversation_from_dict(d: dict[str, Any]) -> Conversation:
    """A Conversation from its orjson form (the cache's header and the live events' payload)."""
    return Conversation(
        tenant_id=d["tenant_id"],
        id=uuid.UUID(d["id"]),
        session_id=d["session_id"],
        user_id=d["user_id"],
        agent_id=d["agent_id"],
        channel=d["channel"],
        title=d["title"],
        status=_STATUSES[d["status"]],
        tags=d["tags"],
        metadata=d["metadata"],
        created_at=datetime.fromisoformat(d["created_at"]),
        updated_at=datetime.fromisoformat(d["updated_at"]),
        last_message_at=_dt(d["last_message_at"]),
        last_activity_at=datetime.fromisoformat(d["last_activity_at"]),
        closed_at=_dt(d["closed_at"]),
        close_reason=d["close_reason"],
        message_count=d["message_count"],
        token_count=d["token_count"],
        last_seq=d["last_seq"],
    )


def _micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_state(entry: StateEntry) -> bytes:
    return f"{entry.version}:{_micros(entry.updated_at)}:".encode() + _dumps(entry.value)


def decode_state(conversation_id: uuid.UUID, key: bytes, raw: bytes) -> StateEntry:
    version, micros, value = raw.split(b":", 2)
    return StateEntry(
        conversation_id=conversation_id,
        key=key.decode(),
        value=orjson.loads(value),
        version=int(version),
        updated_at=_EPOCH + timedelta(microseconds=int(micros)),
    )


def _run_id(info: Any) -> bytes:
    text = info if isinstance(info, bytes) else str(info).encode()
    for line in text.splitlines():
        if line.startswith(b"run_id:"):
            return line[7:].strip()
    raise ValueError("INFO server has no run_id")


# --------------------------------------------------------------------------------------------------
# Snapshots: what one read brought back
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Snapshot:
    """A consistent view of one entry (from one Redis call, or from the Postgres reads of a fill)."""

    conversation: Conversation
    #: The first SYSTEM message among seqs 1..last_seq (None: there is none).
    first_system: Message | None
    system_prompt: StateEntry | None
    summary: StateEntry | None
    #: The newest cached messages in hand, oldest first; they end at conversation.last_seq.
    messages: list[Message]
    #: The oldest seq the Redis list holds (messages older than `messages` may still be there).
    head: int

    @property
    def last_seq(self) -> int:
        return self.conversation.last_seq

    @property
    def in_hand(self) -> int:
        """The oldest seq in `messages` (last_seq + 1 when there are none)."""
        return self.last_seq - len(self.messages) + 1


class _Ticket:
    __slots__ = ("ms", "v")

    def __init__(self, v: int, ms: int) -> None:
        self.v = v
        self.ms = ms


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------


class HotCache:
    """One per process. `attach(db)` makes it hear every committed unit of work; the read seams in
    app/services take it as `cache=` and fall back to Postgres whenever it answers None."""

    def __init__(self, redis_url: str, options: CacheOptions | None = None) -> None:
        self.options = options or CacheOptions()
        self.redis = Redis.from_url(
            redis_url,
            socket_timeout=self.options.timeout_s,
            socket_connect_timeout=self.options.timeout_s,
            redis_connect_func=self._on_connect,
        )
        self._boot: bytes | None = None
        self._down_until = 0.0
        self._last_warning = 0.0
        #: (tenant, conversation) → mark number: writes of this process that Redis may not have.
        self._dirty: dict[tuple[str, uuid.UUID], int] = {}
        self._marks = 0
        self._recovery: asyncio.Task[None] | None = None
        self._closed = False
        self.sessions: OrderedDict[tuple[str, str], uuid.UUID] = OrderedDict()
        self.decoded = DecodedMessages(self.options.decoded_bytes)
        self._ttl_ms = int(self.options.ttl_s * 1000)
        self._grace_ms = int(self.options.closed_grace_s * 1000)
        self._tomb_ms = int(TOMBSTONE_TTL_S * 1000)

    # lifecycle --------------------------------------------------------------------------------

    def attach(self, db: Database) -> None:
        """Hear every committed unit of work of `db` (register before any other listener that
        tells clients about the change, so what they read next is already here)."""
        db.listen(self.on_events)

    async def start(self) -> None:
        """Connect (not required: a cache that starts with Redis down connects later)."""
        await self._ready()

    async def close(self) -> None:
        self._closed = True
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recovery
        if self._dirty:
            # Last chance: a stopping process that leaves dirty entries relies on their TTLs.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._invalidate_dirty(), self.options.timeout_s)
        await self.redis.aclose()

    @property
    def dirty(self) -> set[tuple[str, uuid.UUID]]:
        return set(self._dirty)

    async def _on_connect(self, conn: Any) -> None:
        """Every new connection learns the server's boot id (and loads the scripts): an entry
        written under another boot id is from before a restart and reads as a miss."""
        await conn.on_connect()
        try:
            await conn.send_command("INFO", "server")
            boot = _run_id(await conn.read_response())
        except (ResponseError, ValueError):  # INFO renamed away: restarts are not detected
            boot = b"unknown"
        for script in SCRIPTS:
            await conn.send_command("SCRIPT", "LOAD", script.source)
            await conn.read_response()
        if self._boot is not None and boot != self._boot:
            log.warning(
                "Redis restarted (run_id %s → %s): entries from before read as misses",
                self._boot.decode(errors="replace"),
                boot.decode(errors="replace"),
            )
        self._boot = boot

    async def _ready(self) -> bool:
        if self._closed or time.monotonic() < self._down_until:
            return False
        if self._boot is None:
            try:
                await self.redis.ping()
            except Exception as exc:
                self._failed(exc)
                return False
        return self._boot is not None

    def _failed(self, exc: BaseException) -> None:
        """Redis failed us: count it, and skip Redis for CACHE_RETRY_S (a breaker: a Redis that
        times out must not add its timeout to every request)."""
        metrics.CACHE_ERRORS.inc()
        now = time.monotonic()
        self._down_until = now + self.options.retry_s
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("hot cache: Redis failed (%s: %s); serving from Postgres", type(exc).__name__, exc)

    def _read_failed(self, exc: BaseException, kind: str) -> None:
        if isinstance(exc, RedisError | OSError):
            self._failed(exc)
        else:  # a bug here must not fail the read: Postgres answers it
            metrics.CACHE_ERRORS.inc()
            log.exception("hot cache: %s read failed; serving from Postgres", kind)

    # writes: the Database listener ------------------------------------------------------------

    async def on_events(self, events: list[DomainEvent]) -> None:
        """After commit: apply each event in order (one pipeline), or invalidate."""
        if not events:
            return
        touched = list(dict.fromkeys((e.tenant_id, e.conversation_id) for e in events))
        if not await self._ready():
            self._mark_dirty(touched)
            return
        assert self._boot is not None
        boot = self._boot
        calls: list[Call] = []
        owners: list[tuple[str, uuid.UUID]] = []
        sessions: list[tuple[str, str, uuid.UUID]] = []
        for event in events:
            owner = (event.tenant_id, event.conversation_id)
            keys = conversation_keys(*owner)
            try:
                call = None if owner in self._dirty else self._event_call(event, keys, boot)
            except Exception:  # a value orjson cannot encode, say: invalidate instead
                log.exception("hot cache: could not encode %s; invalidating", event.type)
                call = None
            calls.append(call or (INVALIDATE, keys, (boot, self._tomb_ms)))
            owners.append(owner)
            if event.type is EventType.CREATED and event.conversation is not None:
                sessions.append((event.tenant_id, event.conversation.session_id, event.conversation_id))
                self._remember((event.tenant_id, event.conversation.session_id), event.conversation_id)
        marks = {owner: self._dirty.get(owner) for owner in touched}
        try:
            results = await _run_calls(self.redis, calls)
            if sessions:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for tenant_id, session_id, cid in sessions:
                        pipe.set(session_key(tenant_id, session_id), str(cid), px=self._ttl_ms)
                    await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            self._mark_dirty(touched)
            return
        failed = []
        for owner, (script, _, _), result in zip(owners, calls, results, strict=True):
            if isinstance(result, Exception):
                log.warning("hot cache: %s failed for %s: %s", script.name, owner, result)
                failed.append(owner)
            elif script is INVALIDATE or result == 0:
                metrics.CACHE_INVALIDATIONS.inc()
        for owner in set(owners) - set(failed):
            # Invalidated (or applied on a clean entry) after the failure that marked it: clean.
            if owner in self._dirty and self._dirty[owner] == marks.get(owner):
                del self._dirty[owner]
        if failed:
            self._mark_dirty(failed)

    def _event_call(self, event: DomainEvent, keys: Sequence[str], boot: bytes) -> Call | None:
        """The script applying `event`, or None to invalidate."""
        if event.type is EventType.MESSAGE_ADDED and event.message is not None and event.conversation is not None:
            m = event.message
            return (
                APPLY_APPEND,
                keys,
                (
                    boot,
                    m.seq,
                    encode_message(m),
                    encode_conversation(event.conversation),
                    1 if m.role is Role.SYSTEM else 0,
                    self.options.recent_messages,
                    self._ttl_ms,
                    self._tomb_ms,
                    MAX_ENTRY_BYTES,
                ),
            )
        if event.type is EventType.STATE_CHANGED and event.state is not None and event.state.version > 1:
            return (
                APPLY_STATE,
                keys,
                (
                    boot,
                    event.state.key,
                    encode_state(event.state),
                    event.state.version,
                    _micros(event.state.updated_at),
                    self._ttl_ms,
                    self._tomb_ms,
                ),
            )
        if (
            event.type is EventType.CREATED
            and event.conversation is not None
            and event.conversation.status is Status.ACTIVE
        ):
            c = event.conversation
            return (APPLY_CREATED, keys, (boot, encode_conversation(c), c.session_id, self._ttl_ms))
        return None  # closes, other header changes, new keys, deletes: order unprovable

    # dirty entries ------------------------------------------------------------------------------

    def _mark_dirty(self, owners: Iterable[tuple[str, uuid.UUID]]) -> None:
        for owner in owners:
            self._marks += 1
            self._dirty[owner] = self._marks
        if self._dirty and not self._closed and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.get_running_loop().create_task(self._recover(), name="hot-cache-recovery")

    async def _recover(self) -> None:
        """Invalidate this process's dirty entries as soon as Redis answers again."""
        while self._dirty and not self._closed:
            await asyncio.sleep(max(self._down_until - time.monotonic(), 0.0) + min(0.25, self.options.retry_s))
            if await self._ready():
                with contextlib.suppress(Exception):  # _invalidate_dirty counts and logs
                    await self._invalidate_dirty()

    async def _invalidate_dirty(self) -> None:
        batch = dict(self._dirty)
        boot = self._boot or b""
        calls: list[Call] = [(INVALIDATE, conversation_keys(*owner), (boot, self._tomb_ms)) for owner in batch]
        try:
            results = await _run_calls(self.redis, calls)
        except Exception as exc:
            self._failed(exc)
            raise
        for (owner, mark), result in zip(batch.items(), results, strict=True):
            if not isinstance(result, Exception) and self._dirty.get(owner) == mark:
                del self._dirty[owner]
                metrics.CACHE_INVALIDATIONS.inc()
        if self._dirty and batch.keys() & self._dirty.keys():
            log.warning("hot cache: %d entries still dirty", len(self._dirty))

    async def evict(self, tenant_id: str, conversation_id: uuid.UUID) -> None:
        """Drop one conversation's entry (fencing in-flight fills). Raises RedisError when Redis
        cannot be reached (the entry then expires by its TTL)."""
        await evict(self.redis, [(tenant_id, conversation_id)])

    # reads ---------------------------------------------------------------------------------------

    async def _resolve(self, conn: Connection | None, tenant_id: str, target: ConversationRef) -> uuid.UUID | None:
        """The conversation id of `target`: given, remembered, from Redis, or (with a connection)
        from Postgres. None when it cannot be known cheaply or does not exist."""
        if target.id is not None:
            return target.id
        assert target.session_id is not None
        name = (tenant_id, target.session_id)
        known = self.sessions.get(name)
        if known is not None:
            self.sessions.move_to_end(name)
            return known
        raw = await self.redis.get(session_key(*name))
        if raw is not None:
            with contextlib.suppress(ValueError):
                return self._remember(name, uuid.UUID(raw.decode()))
        if conn is None:
            return None
        header = await conversation_repo.get(conn, tenant_id, session_id=target.session_id)
        return None if header is None else self._remember(name, header.id)

    def _remember(self, name: tuple[str, str], conversation_id: uuid.UUID) -> uuid.UUID:
        self.sessions[name] = conversation_id
        if len(self.sessions) > SESSION_LRU_SIZE:
            self.sessions.popitem(last=False)
        return conversation_id

    async def _forget_session(self, tenant_id: str, target: ConversationRef) -> None:
        """A sessionId that led to no (or another) conversation: forget where it led, here and in
        Redis (a conversation purged and its sessionId taken again while Redis was down)."""
        if target.session_id is None:
            return
        self.sessions.pop((tenant_id, target.session_id), None)
        with contextlib.suppress(Exception):
            await self.redis.delete(session_key(tenant_id, target.session_id))

    async def conversation(self, tenant_id: str, target: ConversationRef) -> Conversation | None:
        """The cached header of `target`, or None (not cached: ask Postgres)."""
        if not await self._ready():
            metrics.CACHE_MISSES.labels("header").inc()
            return None
        boot = self._boot
        try:
            cid = await self._resolve(None, tenant_id, target)
            if cid is None or (tenant_id, cid) in self._dirty:
                metrics.CACHE_MISSES.labels("header").inc()
                return None
            reply = await self._eval(READ_HEADER, conversation_keys(tenant_id, cid), (boot, target.session_id or ""))
            if reply[0] == 3:
                await self._forget_session(tenant_id, target)
            if reply[0] != 1 or self._boot != boot:
                metrics.CACHE_MISSES.labels("header").inc()
                return None
            conversation = decode_conversation(reply[1])
        except Exception as exc:
            self._read_failed(exc, "header")
            return None
        metrics.CACHE_HITS.labels("header").inc()
        return conversation

    async def page(
        self, conn: Connection, tenant_id: str, target: ConversationRef, request: Any
    ) -> tuple[int, list[Message]] | None:
        """A history page as (last_seq, messages lo..hi), like db.repositories.messages.page_by_ref:
        one round trip when hot; a miss fills the entry from Postgres and answers from the fill
        when the page is recent. None: ask Postgres. `request` is a messages.PageRequest."""
        if not await self._ready():
            metrics.CACHE_MISSES.labels("history").inc()
            return None
        boot = self._boot
        try:
            cid = await self._resolve(conn, tenant_id, target)
            if cid is None or (tenant_id, cid) in self._dirty:
                metrics.CACHE_MISSES.labels("history").inc()
                return None
            reply = await self._eval(
                READ_PAGE,
                conversation_keys(tenant_id, cid),
                (
                    boot,
                    target.session_id or "",
                    1 if request.forward else 0,
                    request.lower,
                    -1 if request.upper_cap is None else max(request.upper_cap, 0),  # (-1 means none)
                    request.size,
                ),
            )
            if self._boot != boot:
                metrics.CACHE_MISSES.labels("history").inc()
                return None
            status = reply[0]
            if status == 1:
                metrics.CACHE_HITS.labels("history").inc()
                last_seq = int(reply[1])
                lo, _ = request.bounds(last_seq)
                return last_seq, self._decode(tenant_id, cid, lo, reply[2])
            metrics.CACHE_MISSES.labels("history").inc()
            if status != 0:  # 2: older than the cached suffix; 3: a stale sessionId mapping
                if status == 3:
                    await self._forget_session(tenant_id, target)
                return None
            snapshot = await self._fill(conn, tenant_id, cid, _Ticket(int(reply[1]), int(reply[2])), boot)
        except Exception as exc:
            self._read_failed(exc, "history")
            return None
        if snapshot is None:
            await self._forget_session(tenant_id, target)
            return None
        if target.session_id is not None and snapshot.conversation.session_id != target.session_id:
            await self._forget_session(tenant_id, target)
            return None
        lo, hi = request.bounds(snapshot.last_seq)
        if hi < lo:
            return snapshot.last_seq, []
        if lo < snapshot.in_hand:
            return None
        start = lo - snapshot.in_hand
        return snapshot.last_seq, snapshot.messages[start : start + hi - lo + 1]

    async def ranges(
        self, tenant_id: str, wanted: Sequence[tuple[uuid.UUID, int, int]]
    ) -> dict[tuple[uuid.UUID, int, int], list[Message]]:
        """The (conversation, lo, hi) seq ranges the cache holds (messages are immutable, so any
        cached message in range is right); the others are left out."""
        found: dict[tuple[uuid.UUID, int, int], list[Message]] = {}
        if not wanted:
            return found
        if not await self._ready():
            metrics.CACHE_MISSES.labels("range").inc(len(wanted))
            return found
        boot = self._boot
        try:
            results = await _run_calls(
                self.redis, [(READ_RANGE, conversation_keys(tenant_id, cid), (boot, lo, hi)) for cid, lo, hi in wanted]
            )
            if self._boot != boot:
                results = [None] * len(wanted)
            for key, result in zip(wanted, results, strict=True):
                if isinstance(result, list):
                    found[key] = self._decode(tenant_id, key[0], key[1], result)
        except Exception as exc:
            self._read_failed(exc, "range")
            found.clear()
        metrics.CACHE_HITS.labels("range").inc(len(found))
        metrics.CACHE_MISSES.labels("range").inc(len(wanted) - len(found))
        return found

    async def states(self, tenant_id: str, conversation_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[StateEntry]]:
        """All state entries (sorted by key) of the conversations the cache holds; others left out."""
        found: dict[uuid.UUID, list[StateEntry]] = {}
        if not conversation_ids:
            return found
        if not await self._ready():
            metrics.CACHE_MISSES.labels("state").inc(len(conversation_ids))
            return found
        boot = self._boot
        wanted = [cid for cid in conversation_ids if (tenant_id, cid) not in self._dirty]
        try:
            results = await _run_calls(
                self.redis, [(READ_STATE, conversation_keys(tenant_id, cid), (boot,)) for cid in wanted]
            )
            if self._boot != boot:
                results = [None] * len(wanted)
            for cid, result in zip(wanted, results, strict=True):
                if isinstance(result, list):
                    entries = self._decode_states(cid, result)
                    if entries is not None:
                        found[cid] = entries
        except Exception as exc:
            self._read_failed(exc, "state")
            found.clear()
        metrics.CACHE_HITS.labels("state").inc(len(found))
        metrics.CACHE_MISSES.labels("state").inc(len(conversation_ids) - len(found))
        return found

    async def state_entries(self, tenant_id: str, conversation_id: uuid.UUID) -> list[StateEntry] | None:
        """One conversation's state entries sorted by key, or None (not cached)."""
        return (await self.states(tenant_id, [conversation_id])).get(conversation_id)

    @staticmethod
    def _decode_states(conversation_id: uuid.UUID, flat: list[bytes]) -> list[StateEntry] | None:
        pairs = dict(zip(flat[::2], flat[1::2], strict=True))
        if pairs.pop(LOADED, None) is None:
            return None
        # Sorted by code point: Postgres' ORDER BY key under the C collation (docs/decisions.md).
        return [decode_state(conversation_id, k, pairs[k]) for k in sorted(pairs, key=lambda k: k.decode())]

    def window_source(
        self, conn: Connection, tenant_id: str, conversation: Conversation, *, max_tokens: int, reserve_tokens: int = 0
    ) -> CachedWindowSource:
        """A context.WindowSource over this cache for `build_window(source=...)`."""
        average = conversation.token_count / max(conversation.message_count, 1)
        budget = max(max_tokens - reserve_tokens, 0)
        wanted = math.ceil(budget / max(average, 1.0) * context.CHUNK_SLACK) + context.CHUNK_EXTRA
        prefetch = min(self.options.recent_messages, max(context.MIN_CHUNK, wanted))
        return CachedWindowSource(self, conn, tenant_id, conversation, prefetch)

    async def _window(self, conn: Connection, tenant_id: str, cid: uuid.UUID, prefetch: int) -> Snapshot | None:
        """The window's prelude and newest messages in one round trip, or a fill; None: Postgres."""
        if not await self._ready() or (tenant_id, cid) in self._dirty:
            metrics.CACHE_MISSES.labels("window").inc()
            return None
        boot = self._boot
        try:
            reply = await self._eval(READ_WINDOW, conversation_keys(tenant_id, cid), (boot, "", prefetch))
            if self._boot != boot:
                metrics.CACHE_MISSES.labels("window").inc()
                return None
            if reply[0] == 1:
                _, header, last_seq, n, first_system, system_prompt, summary, items = reply
                metrics.CACHE_HITS.labels("window").inc()
                conversation = decode_conversation(header)
                if conversation.last_seq != int(last_seq):  # cannot happen: one script wrote both
                    return None
                return Snapshot(
                    conversation=conversation,
                    first_system=decode_messages(tenant_id, cid, [first_system])[0] if first_system else None,
                    system_prompt=decode_state(cid, b"system_prompt", system_prompt) if system_prompt else None,
                    summary=decode_state(cid, b"summary", summary) if summary else None,
                    messages=self._decode(tenant_id, cid, int(last_seq) - len(items) + 1, items),
                    head=int(last_seq) - int(n) + 1,
                )
            metrics.CACHE_MISSES.labels("window").inc()
            return await self._fill(conn, tenant_id, cid, _Ticket(int(reply[1]), int(reply[2])), boot)
        except Exception as exc:
            self._read_failed(exc, "window")
            return None

    def _decode(self, tenant_id: str, cid: uuid.UUID, first_seq: int, items: Sequence[bytes]) -> list[Message]:
        """Messages first_seq, first_seq+1, … from their cached bytes. Messages never change, so a
        message decoded before from the very same bytes is reused (decoding is most of a hot
        read's CPU). The objects are shared: readers must not mutate them (none does)."""
        memo = self.decoded
        out: list[Message | None] = []
        todo: list[int] = []
        for i, raw in enumerate(items):
            known = memo.get((tenant_id, cid, first_seq + i), raw)
            out.append(known)
            if known is None:
                todo.append(i)
        if todo:
            decoded = decode_messages(tenant_id, cid, [items[i] for i in todo])
            for i, m in zip(todo, decoded, strict=True):
                if m.seq != first_seq + i:
                    raise ValueError(f"cached message {m.seq} where {first_seq + i} belongs")
                out[i] = m
                memo.put((tenant_id, cid, m.seq), items[i], m)
        return out  # type: ignore[return-value]

    async def _range(self, tenant_id: str, cid: uuid.UUID, lo: int, hi: int) -> list[Message] | None:
        return (await self.ranges(tenant_id, [(cid, lo, hi)])).get((cid, lo, hi))

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await _load_scripts(self.redis)
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    # fills ---------------------------------------------------------------------------------------

    async def _fill(
        self, conn: Connection, tenant_id: str, cid: uuid.UUID, ticket: _Ticket, boot: bytes | None
    ) -> Snapshot | None:
        """Read the entry from Postgres and write it if nothing changed since `ticket`. Returns
        what was read (valid Postgres data whether or not it was written); None: no such
        conversation."""
        conversation = await conversation_repo.get(conn, tenant_id, id=cid)
        if conversation is None:
            return None
        self._remember((tenant_id, conversation.session_id), cid)
        last_seq = conversation.last_seq
        newest = await context_repo.newest(
            conn, tenant_id, cid, after_seq=0, before_seq=last_seq + 1, limit=self.options.recent_messages
        )
        newest.reverse()
        if newest:
            loaded = await message_repo.sources_for(conn, tenant_id, [(cid, m.seq) for m in newest])
            for m in newest:
                m.sources = loaded[(cid, m.seq)]
        entries = await state_repo.list_(conn, tenant_id, cid)
        head = last_seq - len(newest) + 1
        first_system = await self._first_system(conn, tenant_id, conversation, newest, head)
        by_key = {e.key: e for e in entries}
        snapshot = Snapshot(
            conversation=conversation,
            first_system=first_system,
            system_prompt=by_key.get(context_repo.SYSTEM_PROMPT_KEY),
            summary=by_key.get(context_repo.SUMMARY_KEY),
            messages=newest,
            head=head,
        )
        active = conversation.status is Status.ACTIVE
        args: list[Any] = [
            boot,
            ticket.v,
            ticket.ms,
            int(FILL_DEADLINE_S * 1000),
            encode_conversation(conversation),
            last_seq,
            encode_message(first_system) if first_system is not None else b"",
            conversation.session_id,
            1 if active else 0,
            self._ttl_ms if active else self._grace_ms,
            len(entries) * 2,
        ]
        for e in entries:
            args += [e.key, encode_state(e)]
        blobs = [encode_message(m) for m in newest]
        kept, size = 0, 0
        for blob in reversed(blobs):  # the newest that fit MAX_ENTRY_BYTES (at least one)
            if kept and size + len(blob) > MAX_ENTRY_BYTES:
                break
            kept, size = kept + 1, size + len(blob)
        args += blobs[len(blobs) - kept :]
        snapshot.head = last_seq - kept + 1
        try:
            written = await self._eval(FILL, conversation_keys(tenant_id, cid), args)
            if written == 1:
                metrics.CACHE_FILLS.inc()
                await self.redis.set(session_key(tenant_id, conversation.session_id), str(cid), px=self._ttl_ms)
        except Exception as exc:  # the data read is still right: serve it
            self._read_failed(exc, "fill")
        return snapshot

    @staticmethod
    async def _first_system(
        conn: Connection, tenant_id: str, conversation: Conversation, newest: list[Message], head: int
    ) -> Message | None:
        """The first SYSTEM message up to last_seq, from what is in hand when possible (the context
        service remembers where it is, or how far there is none)."""
        known = context.system_seqs.get((tenant_id, conversation.id))
        if head == 1 or (known is not None and known[0] == "found" and known[1] >= head):
            for m in newest:
                if m.role is Role.SYSTEM:
                    return m
            if head == 1:
                return None
        if known is not None and known[0] == "none" and known[1] >= conversation.last_seq:
            return None
        source = PostgresWindowSource(conn, tenant_id, conversation.id)
        prelude = await context._prelude(source, tenant_id, conversation)
        return prelude.first_system


class CachedWindowSource:
    """A context.WindowSource from the hot cache: the prelude (state keys, first SYSTEM message) and
    the newest messages come from one Redis call made on first use; messages older than the cached
    suffix, or newer than it (a cache behind the header the window was asked for), from Postgres."""

    __slots__ = ("_loaded", "cache", "conn", "conversation", "pg", "prefetch", "snapshot", "tenant_id")

    def __init__(
        self, cache: HotCache, conn: Connection, tenant_id: str, conversation: Conversation, prefetch: int
    ) -> None:
        self.cache = cache
        self.conn = conn
        self.tenant_id = tenant_id
        self.conversation = conversation
        self.prefetch = prefetch
        self.pg = PostgresWindowSource(conn, tenant_id, conversation.id)
        self.snapshot: Snapshot | None = None
        self._loaded = False

    async def _snapshot(self) -> Snapshot | None:
        if not self._loaded:
            self._loaded = True
            self.snapshot = await self.cache._window(self.conn, self.tenant_id, self.conversation.id, self.prefetch)
        return self.snapshot

    async def prelude(self, *, from_seq: int, up_to_seq: int) -> Prelude:
        snap = await self._snapshot()
        if snap is None or up_to_seq > snap.last_seq:
            return await self.pg.prelude(from_seq=from_seq, up_to_seq=up_to_seq)
        first = snap.first_system
        if first is not None and first.seq < from_seq:
            # The service remembers a prompt after the first one: disagree → ask the truth.
            return await self.pg.prelude(from_seq=from_seq, up_to_seq=up_to_seq)
        if first is not None and first.seq > up_to_seq:
            first = None
        return Prelude(system_prompt=snap.system_prompt, summary=snap.summary, first_system=first)

    async def newest(self, before_seq: int, limit: int, *, after_seq: int = 0) -> list[Message]:
        if limit < 1 or before_seq - after_seq <= 1:
            return []
        snap = await self._snapshot()
        hi = before_seq - 1
        if snap is None or hi > snap.last_seq:
            return await self.pg.newest(before_seq, limit, after_seq=after_seq)
        lo = max(after_seq + 1, hi - limit + 1)
        out: list[Message] = []
        top = hi
        if top >= snap.in_hand:
            bottom = max(lo, snap.in_hand)
            base = snap.in_hand
            out.extend(snap.messages[i - base] for i in range(top, bottom - 1, -1))
            top = bottom - 1
        if top >= lo and top >= snap.head:
            bottom = max(lo, snap.head)
            cached = await self.cache._range(self.tenant_id, self.conversation.id, bottom, top)
            if cached is not None:
                out.extend(reversed(cached))
                top = bottom - 1
        if top >= lo:
            out.extend(await self.pg.newest(top + 1, top - lo + 1, after_seq=after_seq))
        return out
