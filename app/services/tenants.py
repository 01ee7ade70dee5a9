"""Tenants and their API keys."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from app.errors import BadUserInput, NotFound
from app.services import limits as check
from db.repositories import tenants as repo
from db.session import Connection, UnitOfWork

KEY_PREFIX = "csk_"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(slots=True)
class Tenant:
    tenant_id: str
    name: str | None
    settings: dict[str, Any]
    created_at: datetime


@dataclass(slots=True)
class ApiKey:
    tenant_id: str
    id: uuid.UUID
    name: str | None
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(row["tenant_id"], row["name"], row["settings"], row["created_at"])


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        tenant_id=row["tenant_id"],
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        scopes=[Scope(s) for s in row["scopes"]],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
    )


key_of = _key


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(value: str | list[str]) -> list[Scope]:
    names = value.split(",") if isinstance(value, str) else value
    try:
        scopes = sorted({Scope(n.strip().lower()) for n in names if n.strip()}, key=list(Scope).index)
    except ValueError:
        raise BadUserInput("scopes are read, write and admin", field="scopes") from None
    if not scopes:
        raise BadUserInput("give at least one scope", field="scopes")
    return scopes


async def ensure_tenant(uow: UnitOfWork, tenant_id: str, name: str | None = None) -> tuple[Tenant, bool]:
    """Create the tenant if it does not exist (idempotent); returns (tenant, created)."""
    check.tenant_id(tenant_id)
    check.text(name, "name", 200)
    row, created = await repo.ensure_tenant(uow.conn, tenant_id, name)
    return _tenant(row), created


async def get_tenant(conn: Connection, tenant_id: str) -> Tenant | None:
    row = await repo.get_tenant(conn, tenant_id)
    return _tenant(row) if row else None


async def update_tenant_settings(uow: UnitOfWork, tenant_id: str, patch: dict[str, Any]) -> Tenant:
    row = await repo.update_settings(uow.conn, tenant_id, patch)
    if row is None:
        raise NotFound("tenant not found")
    return _tenant(row)


async def create_api_key(
    uow: UnitOfWork,
    tenant_id: str,
    scopes: list[Scope],
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key for an existing tenant. The secret is returned once and stored only as a hash."""
    check.tenant_id(tenant_id)
    if await repo.get_tenant(uow.conn, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id!r} does not exist (create it first)")
    secret = KEY_PREFIX + secrets.token_urlsafe(24)
    row = await repo.insert_key(
        uow.conn,
        tenant_id,
        name=check.text(name, "name", 200),
        prefix=secret[: len(KEY_PREFIX) + 6],
        key_hash=hash_key(secret),
        scopes=[s.value for s in scopes],
        expires_at=expires_at,
    )
    return _key(row), secret


async def list_api_keys(conn: Connection, tenant_id: str) -> list[ApiKey]:
    return [_key(r) for r in await repo.list_keys(conn, tenant_id)]


KeyRevoked = Callable[[ApiKey], Awaitable[None]]
"""Announces a revocation to the API processes (app/events.announce_key_revoked)."""


async def revoke_api_key(uow: UnitOfWork, key_id: uuid.UUID, *, announce: KeyRevoked | None = None) -> ApiKey:
    """Revoke the key; once that is durable, `announce` tells the API processes so its live
    WebSocket connections close at once (without it they notice on their next re-check)."""
    row = await repo.revoke_key(uow.conn, key_id)
    if row is None:
        raise NotFound("api key not found")
    key = _key(row)
    if announce is not None:
        uow.after_commit(lambda: announce(key))
    return key


async def key_for_secret(conn: Connection, secret: str) -> ApiKey | None:
    """The key a bearer secret belongs to, revoked or not (the caller decides)."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    row = await repo.key_by_hash(conn, hash_key(secret))
    return _key(row) if row else None


async def keys_for_secrets(conn: Connection, secrets_: list[str]) -> dict[str, ApiKey | None]:
    """The key of each bearer secret (None: no such key), read in one statement per 1,000."""
    found: dict[str, ApiKey | None] = dict.fromkeys(secrets_)
    by_hash = {hash_key(s): s for s in secrets_ if s.startswith(KEY_PREFIX) and len(s) <= 200}
    hashes = list(by_hash)
    for start in range(0, len(hashes), 1000):
        for row in await repo.keys_by_hashes(conn, hashes[start : start + 1000]):
            found[by_hash[row["key_hash"]]] = _key(row)
    return found


async def touch_api_key(uow: UnitOfWork, key_id: uuid.UUID, min_interval_s: float) -> None:
    """Note that the key was used (a no-op when it was noted less than `min_interval_s` ago)."""
    await repo.touch_key(uow.conn, key_id, min_interval_s)
