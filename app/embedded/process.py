"""Child processes of the embedded servers: the ``EmbeddedServer`` handle and their supervision.

Spawning (as another user when asked, armed with PR_SET_PDEATHSIG so children die with us), waiting for
a server to be ready, stopping the ones this process started at exit, probing pids, ``free_port``.
See the package docstring for the threading contract.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EmbeddedServer", "die_with_parent", "free_port"]

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 30.0
# Ports from free_port() are released before the server binds them, so a parallel test process can
# grab the same one; a few retries with a fresh port make that race harmless.
_BIND_RETRIES = 4
_PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


@dataclass
class EmbeddedServer:
    """A running server. ``process`` is None when we attached to a server some other process started."""

    name: str
    url: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None
    # Attached servers have no Popen, but alive() still needs something to probe.
    pid: int | None = None
    # Extra directory to remove on stop (postgres socket dir when data_dir is too long for a socket path).
    _cleanup_dir: Path | None = field(default=None, repr=False)
    # What the server's own module cleans up after a stop (redis: its state file), given (data_dir, pid).
    _on_stop: Callable[[Path, int], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pid is None and self.process is not None:
            self.pid = self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully, then SIGKILL after ``timeout`` seconds. No-op for attached servers.

        Postgres gets SIGINT ("fast" shutdown: abort open transactions, checkpoint, exit) rather than
        SIGTERM ("smart": waits for every client to disconnect, which a leaked pool would make
        infinite). Redis gets SIGTERM, on which it flushes the AOF before exiting.
        """
        proc = self.process
        if proc is None:
            return
        _forget(self)
        if proc.poll() is None:
            graceful = signal.SIGINT if self.name == "postgres" else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(graceful)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) ignored shutdown for %.1fs; killing", self.name, proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._on_stop is not None:
            self._on_stop(self.data_dir, proc.pid)
        if self._cleanup_dir is not None:
            shutil.rmtree(self._cleanup_dir, ignore_errors=True)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and _pid_alive(self.pid)


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller must tolerate losing a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn for any child process (the worker `run` starts) that must not outlive us."""
    return _child_setup(os.getpid(), None)


# --------------------------------------------------------------------------------------------------
# Child processes: run as the right user, die with the parent
# --------------------------------------------------------------------------------------------------


def _require_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "start embedded servers from the main thread: PR_SET_PDEATHSIG fires when the forking "
            "thread exits, so a server started from a worker thread would die with that thread"
        )


def _child_setup(parent_pid: int, run_as: tuple[int, int] | None) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the forked child before exec. Order matters: a credential change clears the
        # parent-death signal, so drop privileges first and arm PDEATHSIG last.
        if run_as is not None:
            uid, gid = run_as
            os.setgroups([])  # otherwise root's supplementary groups would survive setuid
            os.setgid(gid)
            os.setuid(uid)
        if _libc is not None:
            if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
            # If the parent died between fork() and prctl() the signal will never come: we have
            # already been re-parented. Leave instead of becoming an orphan server.
            if os.getppid() != parent_pid:
                os._exit(1)

    return setup


def _clean_env() -> dict[str, str]:
    # Inherited PGHOST/PGPORT/PGDATA/PGOPTIONS... would silently redirect or reconfigure our tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _spawn(args: list[str], log_path: Path, run_as: tuple[int, int] | None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log_file:
        if run_as is not None:
            os.chown(log_path, *run_as)
        # The child keeps its own copy of the fd; the parent's is closed on leaving the block.
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
            cwd="/",
            # A terminal Ctrl-C must reach only us; we then stop the servers in order (atexit) instead
            # of every process in the foreground group dying at once mid-write.
            start_new_session=True,
            # preexec_fn is the only hook that runs after CPython's setuid and before exec; ours makes
            # no imports and takes no locks, so a fork from a threaded parent cannot deadlock in it.
            preexec_fn=_child_setup(os.getpid(), run_as),  # noqa: PLW1509
        )


# Servers started by this process and not yet stopped: stopped gracefully, newest first, at exit.
_started: list[EmbeddedServer] = []
_owner_pid = os.getpid()


def _remember(server: EmbeddedServer) -> None:
    _started.append(server)


def _forget(server: EmbeddedServer) -> None:
    with contextlib.suppress(ValueError):
        _started.remove(server)


@atexit.register
def _stop_all_at_exit() -> None:
    # A fork()ed child (multiprocessing, xdist) inherits this list but does not own the servers.
    if os.getpid() != _owner_pid:
        return
    for server in reversed(list(_started)):
        try:
            server.stop()
        except Exception:
            log.exception("could not stop embedded %s", server.name)


class _BindError(RuntimeError):
    """The server exited because its port was taken."""


class _ServerExited(RuntimeError):
    pass


def _log_tail(log_path: Path, offset: int = 0, lines: int = 30) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    name: str,
    log_path: Path,
    log_offset: int,
    *,
    bind_markers: tuple[str, ...],
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    delay = 0.005
    while True:
        if proc.poll() is not None:
            tail = _log_tail(log_path, log_offset)
            error = _BindError if any(m in tail for m in bind_markers) else _ServerExited
            raise error(f"{name} exited with code {proc.returncode} during startup; log {log_path}:\n{tail}")
        if ready():
            return
        if time.monotonic() > deadline:
            _kill(proc)
            tail = _log_tail(log_path, log_offset)
            raise TimeoutError(f"{name} not ready after {STARTUP_TIMEOUT:.0f}s; log {log_path}:\n{tail}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # Not yet handed to the caller (startup failed or was interrupted): nobody else would stop it.
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _is_zombie(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # gone, or no procfs
    return stat_line.rsplit(")", 1)[-1].split()[0] == "Z"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A zombie (dead, not yet reaped by its init) answers kill(0) but serves nothing.
    return not _is_zombie(pid)


def _looks_like(pid: int, program: str) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return True  # no procfs (or hidepid): cannot tell, assume it is ours
    return program in argv0
