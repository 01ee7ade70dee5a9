"""The Lua scripts (app/cache/lua/*.lua, loaded once at import) and how they are run.

Every script is lua/common.lua followed by its own file, byte for byte: the concatenation's SHA1 is
what EVALSHA names. Every script takes KEYS = (hdr, msgs, state) of one conversation and
ARGV[1] = boot id."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from app import metrics
from app.cache.keys import TOMBSTONE_TTL_S, conversation_keys

_LUA = resources.files("app.cache") / "lua"


def _read(name: str) -> str:
    """The text of lua/<name>.lua, exactly (no newline translation)."""
    return (_LUA / f"{name}.lua").read_bytes().decode()


_LUA_COMMON = _read("common")


@dataclass(frozen=True, slots=True)
class _Script:
    name: str
    source: str
    sha: str

    @classmethod
    def of(cls, name: str, body: str) -> _Script:
        source = _LUA_COMMON + body
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())


#: ARGV: boot, expected sessionId or ''. → {1, header} | {3} (not this session) | {0} (not cached)
READ_HEADER = _Script.of("read_header", _read("read_header"))

#: ARGV: boot, expected sessionId or '', forward (1/0), lower, upper cap (-1: none), size.
#: → {1, last_seq, {messages}} | {2} (older than the cached suffix) | {3} (not this session)
#:   | {0, v, now_ms} (miss: the fill ticket). Bounds mirror messages.PageRequest.bounds.
READ_PAGE = _Script.of("read_page", _read("read_page"))

#: ARGV: boot, expected sessionId or '', how many newest messages.
#: → {1, header, last_seq, n, first_system, system_prompt, summary, {messages}} | {3} | {0, v, now_ms}
READ_WINDOW = _Script.of("read_window", _read("read_window"))

#: ARGV: boot, lo, hi. → the messages lo..hi, or false when not all cached.
READ_RANGE = _Script.of("read_range", _read("read_range"))

#: ARGV: boot. → the state hash as a flat list (LOADED included), or false.
READ_STATE = _Script.of("read_state", _read("read_state"))

#: A message appended. ARGV: boot, seq, message, header, is SYSTEM (1/0), max messages, ttl ms,
#: tombstone ttl ms, max bytes. Applies only on top of the cached tail seq-1 (dropping the oldest
#: messages past the count or byte limit); otherwise invalidates.
APPLY_APPEND = _Script.of("apply_append", _read("apply_append"))

#: A conversation created. ARGV: boot, header, sessionId, ttl ms. Written only when nothing at
#: all is cached for it (anything there came from a later event or a fill: leave it).
APPLY_CREATED = _Script.of("apply_created", _read("apply_created"))

#: A state key overwritten. ARGV: boot, key, stored value, version, updated_at µs, ttl ms,
#: tombstone ttl ms. Applies only over the previous version with an older timestamp.
APPLY_STATE = _Script.of("apply_state", _read("apply_state"))

#: ARGV: boot, tombstone ttl ms.
INVALIDATE = _Script.of("invalidate", _read("invalidate"))

#: ARGV: boot, ticket v, ticket ms, deadline ms, header, last_seq, first SYSTEM message or '',
#: sessionId, active (1/0), ttl ms, number of state ARGVs (2 per key), state key/value pairs...,
#: messages oldest first... → 1 written, 0 someone changed it since the ticket, -1 too late.
FILL = _Script.of("fill", _read("fill"))

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
        if hasattr(redis, "get_node_from_key"):
            # Redis Cluster (REDIS_CLUSTER_NODES): redis-py refuses EVALSHA in cluster pipelines;
            # concurrent calls, each routed to its slot's node, keep it to about one round trip.
            cluster: Any = redis  # a RedisCluster, typed as the Redis it stands in for
            answers = await asyncio.gather(
                *(cluster.evalsha(calls[i][0].sha, len(calls[i][1]), *calls[i][1], *calls[i][2]) for i in pending),
                return_exceptions=True,
            )
        else:
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
