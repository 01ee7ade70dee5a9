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

from app.embedded import free_port


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


def _start(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATA_DIR=str(data_dir), PORT=str(port), LOG_LEVEL="WARNING")
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
