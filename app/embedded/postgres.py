"""The embedded Postgres: start it (initdb on first use, fsync options) or attach to a running one."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

from app.embedded.binaries import _grant_traverse, _postgres_install, _postgres_run_as
from app.embedded.process import (
    _BIND_RETRIES,
    STARTUP_TIMEOUT,
    EmbeddedServer,
    _BindError,
    _child_setup,
    _clean_env,
    _file_size,
    _is_zombie,
    _kill,
    _looks_like,
    _pid_alive,
    _remember,
    _require_main_thread,
    _spawn,
    _wait_until,
    free_port,
)

__all__ = ["running_postgres", "start_postgres"]

log = logging.getLogger(__name__)

_PG_SUPERUSER = "postgres"
_PG_LOG = "postgres.log"
# sun_path is 108 bytes including the NUL; postgres appends "/.s.PGSQL.NNNNN" (+ ".lock").
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535.lock")


def start_postgres(
    data_dir: Path,
    *,
    fsync: bool = True,
    dbname: str = "conversations",
    port: int | None = None,
    install: Path | None = None,
    options: list[str] | None = None,
) -> EmbeddedServer:
    """Start postgres on ``data_dir`` (initialising it on first use) and ensure ``dbname`` exists.

    ``fsync=False`` trades crash safety for speed; meant for throwaway test clusters only.
    ``install`` runs another pginstall (the Citus copy, app/embedded/citus.py); ``options`` are extra
    ``-c name=value`` server settings, applied last (they override what ``fsync=False`` sets).
    """
    _require_main_thread()
    data_dir = data_dir.resolve()
    run_as = _postgres_run_as()
    bin_dir = (install if install is not None else _postgres_install(run_as)) / "bin"

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
        # After the fsync trio, so a caller's option overrides it (the Citus nodes keep synchronous_commit).
        for option in options or []:
            args += ["-c", option]
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


# --------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------


def _pg_url(port: int, dbname: str) -> str:
    return f"postgresql://{_PG_SUPERUSER}@127.0.0.1:{port}/{dbname}"


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
