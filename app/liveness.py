"""The worker's heartbeat in Redis: the worker writes it as it polls, /readyz reads its age.

arq's own health-check key (`<queue>:health-check`) holds a local time without a date, so its
age cannot be read reliably by another process; this key holds a Unix timestamp. With several
workers on a queue the freshest one wins, which is what "is anybody running the jobs" asks.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from redis.asyncio import Redis

#: Kept a day: long after any stale threshold, short enough not to linger for ever.
HEARTBEAT_TTL_MS = 24 * 3600 * 1000


def heartbeat_key(queue_name: str) -> str:
    return f"{queue_name}:worker-heartbeat"


async def beat(redis: Redis, queue_name: str, *, now: float | None = None) -> None:
    value = {"at": time.time() if now is None else now, "pid": os.getpid(), "host": socket.gethostname()}
    await redis.set(heartbeat_key(queue_name), json.dumps(value, separators=(",", ":")), px=HEARTBEAT_TTL_MS)


async def check(redis: Redis, queue_name: str, stale_after_s: float) -> dict[str, Any]:
    """The /readyz entry: ok while some worker polled within `stale_after_s` seconds."""
    raw = await redis.get(heartbeat_key(queue_name))
    if raw is None:
        return {"ok": False, "error": f"no worker heartbeat on queue {queue_name!r}"}
    try:
        at = float(json.loads(raw)["at"])
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "error": "unreadable worker heartbeat"}
    age = max(time.time() - at, 0.0)
    report: dict[str, Any] = {"ok": age <= stale_after_s, "ageS": round(age, 1)}
    if not report["ok"]:
        report["error"] = f"the last worker heartbeat is {age:.0f} s old (limit {stale_after_s:g} s)"
    return report
