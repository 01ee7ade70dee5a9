"""`conversation-service run` as a user starts it: embedded servers, migrations, worker, API;
Ctrl-C or SIGKILL leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from app.embedded.process import free_port


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(data_dir: Path, port: int, **extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATA_DIR=str(data_dir), PORT=str(port), LOG_LEVEL="WARNING", **extra)
    log = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "run"], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            if r.status_code == 200 and r.json()["status"] == "ok":
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("run did not become ready within 60 s")
    return proc, log


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_run_comes_up_ready_and_leaves_nothing_behind(how: signal.Signals) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cs-run-"))
    port = free_port()
    proc, log = _start(data_dir, port)
    family = _descendants(proc.pid)
    assert len(family) >= 3  # postgres (+ its workers), redis, the worker
    key_file = data_dir / "dev-api-key"
    assert key_file.read_text().startswith("csk_")
    proc.send_signal(how)
    proc.wait(timeout=30)
    output = log.read_text()
    if how is signal.SIGINT:
        assert "dev API key: csk_" in output and f"http://127.0.0.1:{port}" in output
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        time.sleep(0.2)
    assert not [p for p in family if _alive(p)], "processes outlived `run`"
    # A second start reuses the data and the dev key.
    proc2, _ = _start(data_dir, port)
    try:
        assert key_file.read_text().startswith("csk_")
    finally:
        proc2.send_signal(signal.SIGINT)
        proc2.wait(timeout=30)


def _workers(pid: int) -> set[int]:
    found = set()
    for child in _descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"app.cli" in cmdline and b"worker" in cmdline and _alive(child):
            found.add(child)
    return found


def test_run_restarts_a_killed_worker_and_readyz_follows_it() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cs-run-"))
    port = free_port()
    # With the worker check on, "ok" needs the worker's heartbeat (fresh within 3 s).
    proc, log = _start(data_dir, port, WORKER_STALE_S="3", WORKER_HEARTBEAT_S="0.5")
    try:
        (first,) = _workers(proc.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (_workers(proc.pid) - {first}):
            time.sleep(0.2)
        assert _workers(proc.pid) - {first}, f"no new worker within 30 s:\n{log.read_text()}"
        assert proc.poll() is None
        # The new worker polls: /readyz is ok again (the heartbeat is fresh).
        deadline = time.monotonic() + 30
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
            if body["status"] == "ok":
                break
            time.sleep(0.3)
        assert body["status"] == "ok", body
        assert "restarting" in log.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
