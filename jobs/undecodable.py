"""The worker's job deserializer: a job it cannot read becomes a call of the dead-letter function.

arq calls the deserializer when it reads a job (`run_job`); when that raises, arq logs it and
drops the job, leaving no trace a producer could find. This deserializer never raises: pickled
bytes, invalid JSON, JSON nested deeper than MAX_JOB_DEPTH, JSON that is not an arq job and jobs
naming a function this worker does not have come back as a job of UNDECODABLE, which records a
dead letter (jobs/actions.py `undecodable_job`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

#: The arq function name of the dead-letter recorder (not an action type: no dots).
UNDECODABLE = "cs-undecodable-job"
#: Deeper than any envelope needs (metadata and state have their own, smaller limit).
MAX_JOB_DEPTH = 100
#: The start of the raw job kept in the dead letter.
RAW_PREVIEW_BYTES = 4096


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests containers deeper than `limit` (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _problem(data: bytes, known: frozenset[str]) -> tuple[str, Any]:
    """(why the job cannot run, its function name if read) or ("", the job)."""
    try:
        job = json.loads(data)
    except RecursionError:
        return f"JSON nested deeper than {MAX_JOB_DEPTH} levels", None
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not JSON ({type(exc).__name__}: {exc})"[:300], None
    if not isinstance(job, dict):
        return "not a JSON object", None
    function = job.get("f")
    if not isinstance(function, str) or not isinstance(job.get("a"), list) or not isinstance(job.get("k"), dict):
        return "not an arq job (needs f, a and k)", None
    if function not in known:
        return f"no function {function[:200]!r} on this worker", function[:200]
    if depth_exceeds(job, MAX_JOB_DEPTH):
        return f"JSON nested deeper than {MAX_JOB_DEPTH} levels", function
    return "", job


def worker_deserializer(function_names: Iterable[str]) -> Callable[[bytes], Any]:
    known = frozenset(function_names) | {UNDECODABLE}

    def load(data: bytes) -> Any:
        reason, found = _problem(data, known)
        if not reason:
            return found
        info = {
            "reason": reason,
            "function": found,
            "raw_bytes": len(data),
            "raw_base64": base64.b64encode(data[:RAW_PREVIEW_BYTES]).decode(),
        }
        return {"f": UNDECODABLE, "a": [info], "k": {}, "t": None, "et": int(time.time() * 1000)}

    return load
