"""Signed action envelopes (ACTION_SIGNING_KEYS; docs/jobs.md, "Signed envelopes").

A producer signs the canonical envelope, the envelope without its `signature` field as JSON
with sorted keys, `,` and `:` separators, UTF-8 without `\\u` escapes, with HMAC-SHA256 under
its secret, and carries `"signature": {"key_id": "<producer id>", "hmac": "<hex digest>"}`.
When the worker has keys, an envelope that is unsigned, signed with an unknown key or whose
content changed after signing is refused with UNAUTHENTICATED and nothing runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from app.errors import Unauthenticated

SIGNATURE_FIELD = "signature"


def parse_keys(value: str | None) -> dict[str, bytes]:
    """`producer1:secret1,producer2:secret2` or a JSON object of producer id to secret."""
    text = (value or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"ACTION_SIGNING_KEYS is not valid JSON: {exc}") from None
        pairs = list(raw.items()) if isinstance(raw, dict) else []
    else:
        pairs = [(item.partition(":")[0], item.partition(":")[2]) for item in text.split(",")]
    keys: dict[str, bytes] = {}
    for key_id, secret in pairs:
        if not isinstance(key_id, str) or not isinstance(secret, str) or not key_id.strip() or not secret:
            raise ValueError("ACTION_SIGNING_KEYS: every entry needs a producer id and a non-empty secret")
        keys[key_id.strip()] = secret.encode()
    return keys


def canonical(envelope: dict[str, Any]) -> bytes:
    body = {k: v for k, v in envelope.items() if k != SIGNATURE_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(envelope: dict[str, Any], secret: bytes) -> str:
    return hmac.new(secret, canonical(envelope), hashlib.sha256).hexdigest()


def sign(envelope: dict[str, Any], key_id: str, secret: str | bytes) -> dict[str, Any]:
    """A copy of `envelope` carrying its signature."""
    key = secret.encode() if isinstance(secret, str) else secret
    return {**envelope, SIGNATURE_FIELD: {"key_id": key_id, "hmac": digest(envelope, key)}}


def verify(envelope: Any, keys: dict[str, bytes]) -> str:
    """The producer id that signed `envelope`, or Unauthenticated."""
    if not isinstance(envelope, dict):
        raise Unauthenticated("the envelope is not a JSON object, so it carries no signature", field="signature")
    signature = envelope.get(SIGNATURE_FIELD)
    if not isinstance(signature, dict):
        raise Unauthenticated("the envelope is not signed (signing is required)", field="signature")
    key_id, given = signature.get("key_id"), signature.get("hmac")
    if not isinstance(key_id, str) or not isinstance(given, str):
        raise Unauthenticated("signature needs key_id and hmac strings", field="signature")
    secret = keys.get(key_id)
    if secret is None:
        raise Unauthenticated("the signature's key_id is not a known producer", field="signature")
    try:
        expected = digest(envelope, secret)
    except (TypeError, ValueError):
        raise Unauthenticated("the envelope cannot be put in canonical form", field="signature") from None
    if not hmac.compare_digest(expected, given.lower()):
        raise Unauthenticated("the signature does not match the envelope", field="signature")
    return key_id
