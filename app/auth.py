"""Who is calling: an API key (Bearer) or, in trusted mode, a gateway's X-Tenant-ID."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from app.errors import BadUserInput, Forbidden, ServiceUnavailable, Unauthenticated
from app.services import limits as check
from app.services import tenants
from app.services.tenants import Scope
from app.settings import AuthMode
from db.session import Connection, Database, is_unreachable

#: Revocation must take effect within 5 s (DESIGN.md); keys are re-read at least this often.
KEY_CACHE_SECONDS = 2.0
#: A key's last_used_at is written at most this often: a use costs no write per request.
LAST_USED_INTERVAL_S = 60.0

log = logging.getLogger("conversation_service.auth")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    scopes: frozenset[Scope]
    key_id: str | None = None

    def require(self, scope: Scope) -> None:
        if Scope.ADMIN in self.scopes or scope in self.scopes:
            return
        raise Forbidden(f"this key lacks the {scope.value} scope")


class Authenticator:
    """Resolves request headers to a Principal. Keys are cached briefly so the hot path
    costs no database round trip; a revoked key stops working within KEY_CACHE_SECONDS."""

    def __init__(self, db: Database, mode: AuthMode) -> None:
        self.db = db
        self.mode = mode
        self._cache: dict[str, tuple[float, tenants.ApiKey | None]] = {}
        self._touches: set[asyncio.Task[None]] = set()

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        header_tenant = _header(headers, "x-tenant-id")
        if header_tenant is not None:
            try:
                check.tenant_id(header_tenant)
            except BadUserInput:
                raise Unauthenticated("X-Tenant-ID is not a valid tenant id") from None
        authorization = _header(headers, "authorization")
        if self.mode is AuthMode.TRUSTED and authorization is None:
            if header_tenant is None:
                raise Unauthenticated("X-Tenant-ID is required")
            return Principal(tenant_id=header_tenant, scopes=frozenset({Scope.READ, Scope.WRITE}))
        if authorization is None:
            raise Unauthenticated("missing Authorization: Bearer <api key>")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("Authorization must be: Bearer <api key>")
        key = await self._key(secret.strip())
        if key is None or key.revoked_at is not None:
            raise Unauthenticated("unknown or revoked API key")
        if key.expired(datetime.now(UTC)):
            raise Unauthenticated("this API key has expired")
        if header_tenant is not None and header_tenant != key.tenant_id:
            raise Forbidden("X-Tenant-ID does not match the API key's tenant")
        return Principal(tenant_id=key.tenant_id, scopes=frozenset(key.scopes), key_id=str(key.id))

    async def _key(self, secret: str) -> tenants.ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self._read(lambda conn: tenants.key_for_secret(conn, secret))
        if len(self._cache) > 10_000:  # a flood of bad keys must not grow memory without bound
            self._cache.clear()
        self._cache[secret] = (now + KEY_CACHE_SECONDS, key)
        if key is not None and key.revoked_at is None:
            self._touch_if_due(key)
        return key

    async def _read(self, read: Callable[[Connection], Awaitable[T]]) -> T:
        """A read of the key store; unreachable: SERVICE_UNAVAILABLE (the client may retry)."""
        try:
            async with self.db.read() as conn:
                return await read(conn)
        except Exception as exc:
            if is_unreachable(exc):
                raise ServiceUnavailable("the database cannot be reached to check the API key; retry later") from exc
            raise

    def _touch_if_due(self, key: tenants.ApiKey) -> None:
        """Record the use in the background, at most once a minute per key: the database is
        read here at most every KEY_CACHE_SECONDS per key anyway, and the statement's own
        condition keeps several processes from writing more often."""
        last = key.last_used_at
        if last is not None and (datetime.now(UTC) - last).total_seconds() < LAST_USED_INTERVAL_S:
            return

        async def touch() -> None:
            try:
                await self.db.run(lambda uow: tenants.touch_api_key(uow, key.id, LAST_USED_INTERVAL_S))
            except Exception as exc:  # a lost timestamp must never fail or slow a request
                log.warning("could not record the use of key %s: %r", key.id, exc)

        task = asyncio.get_running_loop().create_task(touch())
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def refresh(self, secrets: list[str]) -> None:
        """Re-read these secrets' keys from the database in one statement (per 1,000), so the
        next `authenticate` of each answers from fresh data without a round trip of its own: a
        WebSocket re-check of thousands of live keys costs one query, not thousands."""
        if not secrets:
            return
        keys = await self._read(lambda conn: tenants.keys_for_secrets(conn, secrets))
        expires = time.monotonic() + KEY_CACHE_SECONDS
        if len(self._cache) + len(keys) > 10_000:
            self._cache.clear()
        for secret, key in keys.items():
            self._cache[secret] = (expires, key)

    def forget_key(self, key_id: str) -> None:
        """Drop a revoked key from the cache, so it is refused at once, not after KEY_CACHE_SECONDS."""
        for secret, (_, key) in list(self._cache.items()):
            if key is not None and str(key.id) == key_id:
                del self._cache[secret]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value if value else None
