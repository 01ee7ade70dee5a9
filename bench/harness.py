"""What every benchmark shares: process accounting (more moves here as benchmarks are folded
onto one harness; bench/docs.py writes the results)."""

from __future__ import annotations

from pathlib import Path


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (Linux), 0 when it cannot be read."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
