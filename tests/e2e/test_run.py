"""`conversation-service run` as a user starts it: embedded servers, migrations, worker, API;
Ctrl-C or SIGKILL leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from app.embedded.process import free_port
from tests.conftest import Servers


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


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60) -> list[str]:
    """stdout lines up to the first one starting with ``prefix``."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"exited ({proc.wait()}) before printing {prefix!r}: {lines}")
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    pytest.fail(f"no {prefix!r} within {timeout} s: {lines}")


def test_run_prints_its_urls_after_binding_on_fixed_ports() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cs-run-"))
    port, pg_port, redis_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DATA_DIR=str(data_dir),
        PORT=str(port),
        LOG_LEVEL="WARNING",
        EMBEDDED_POSTGRES_PORT=str(pg_port),
        EMBEDDED_REDIS_PORT=str(redis_port),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        lines = _wait_for_line(proc, "REDIS_URL=")
        # The banner means it: the port answers at once, no retry.
        assert lines[-3] == f"Conversation Service on http://127.0.0.1:{port}  (health: /readyz)"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        database_url = f"postgresql://postgres@127.0.0.1:{pg_port}/conversations"
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        assert lines[-2] == f"DATABASE_URL={database_url}"
        assert lines[-1].startswith(f"REDIS_URL={redis_url}")
        urls = (data_dir / "urls.env").read_text().splitlines()
        assert f"DATABASE_URL={database_url}" in urls and f"REDIS_URL={redis_url}" in urls
        # What an arq client would read is the service's Redis.
        with socket.create_connection(("127.0.0.1", redis_port), timeout=5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert s.recv(16).startswith(b"+PONG")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert not (data_dir / "urls.env").exists()  # the servers are gone, so are their URLs


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_taken_port_fails_at_once_without_a_banner(command: str) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cs-run-"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(DATA_DIR=str(data_dir), PORT=str(port), LOG_LEVEL="WARNING")
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stdout == ""  # no banner
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert not (data_dir / "postgres").exists()  # nothing was started for an API that cannot listen


def test_serve_prints_its_banner_once_it_answers(servers: Servers) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": servers.database_url, "REDIS_URL": servers.redis_url, "PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        (line,) = _wait_for_line(proc, "Conversation Service on ")
        assert line == f"Conversation Service on http://127.0.0.1:{port}  (health: /readyz)"
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
