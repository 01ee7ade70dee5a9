"""Writing a benchmark's section into docs/benchmarks.md, between its own markers."""

from __future__ import annotations

import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def write_section(marker: str, body: str) -> None:
    """Replace the text between `<!-- marker:start -->` and `<!-- marker:end -->` (appended the
    first time); everything else in the file stays as it is."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    section = f"<!-- {marker}:start -->\n{body.rstrip()}\n<!-- {marker}:end -->\n"
    pattern = rf"<!-- {re.escape(marker)}:start -->.*<!-- {re.escape(marker)}:end -->\n"
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section
    DOC.write_text(text)
