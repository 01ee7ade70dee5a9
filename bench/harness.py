"""What the benchmarks share: the servers they measure against, and process accounting
(bench/docs.py writes the results). More moves here as each benchmark is folded onto it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.embedded.postgres import start_postgres
from app.embedded.process import EmbeddedServer
from app.embedded.redis import start_redis
from db.migrate import upgrade


@dataclass(frozen=True, slots=True)
class Servers:
    root: Path
    pg: EmbeddedServer
    redis: EmbeddedServer


@contextmanager
def servers(prefix: str) -> Iterator[Servers]:
    """Postgres (fsync on, as in production) migrated to head and Redis (no persistence) in a
    fresh directory; both stopped and the directory removed on exit."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        pg = start_postgres(root / "pg", fsync=True)
        try:
            rd = start_redis(root / "redis", persist=False)
            try:
                upgrade(pg.url)
                yield Servers(root, pg, rd)
            finally:
                rd.stop()
        finally:
            pg.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (Linux), 0 when it cannot be read."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
