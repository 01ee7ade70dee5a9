"""What the benchmarks share (bench/docs.py writes the results):

- `servers`: a fresh embedded Postgres (fsync on) migrated to head and a Redis, removed on exit;
- `start` / `stop` / `wait_http`: a server under test in its own process, once it answers;
- `lua_script` / `run_wrk`: HTTP load with wrk; `ensure_postgraphile`: the peer server;
- `alternating`: the order of interleaved rounds (A B, B A, …) so machine drift hits every form alike;
- `cpu_seconds` / `rss_kib`: process accounting from /proc."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from app.embedded.postgres import start_postgres
from app.embedded.process import EmbeddedServer
from app.embedded.redis import start_redis
from db.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
PG_DIR = ROOT / "bench" / "postgraphile"

T = TypeVar("T")


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


def alternating(forms: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    """(round, form) in interleaved order: forward in even rounds, reversed in odd ones, so no
    form always runs first (after a checkpoint) or last (on a warmer machine)."""
    for k in range(rounds):
        for form in forms if k % 2 == 0 else list(reversed(forms)):
            yield k, form


def wait_http(port: int, path: str = "/", timeout: float = 60, *, ok_only: bool = False) -> None:
    """Until something answers on the port (with 200 when `ok_only`), or RuntimeError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1)
            if not ok_only or response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def start(
    cmd: list[str], port: int, path: str, env: dict[str, str] | None = None, *, ok_only: bool = False
) -> subprocess.Popen[bytes]:
    """A server under test in its own process (its CPU and RSS are its own), once it answers."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_http(port, path, ok_only=ok_only)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def lua_script(path: Path, url_path: str, headers: dict[str, str], bodies: list[str]) -> Path:
    """A wrk script POSTing the bodies in turn."""
    header_lines = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items())
    body_table = ",\n".join(json.dumps(b) for b in bodies)
    path.write_text(
        f"""wrk.method = "POST"
wrk.path = {json.dumps(url_path)}
wrk.headers["Content-Type"] = "application/json"
{header_lines}local bodies = {{
{body_table}
}}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
end
"""
    )
    return path


def run_wrk(script: Path, port: int, seconds: int, connections: int) -> tuple[float, float, float, int]:
    """req/s, p50 ms, p99 ms and errors (non-2xx and socket errors) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return rps, ms("50%"), ms("99%"), errors


def ensure_postgraphile() -> Path | None:
    """PostGraphile's binary (npm install in bench/postgraphile on first use), None without npm."""
    binary = PG_DIR / "node_modules" / ".bin" / "postgraphile"
    if not binary.exists():
        if not shutil.which("npm"):
            return None
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PG_DIR, check=True)
    return binary
