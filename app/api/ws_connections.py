"""The WebSocket connections of this process: who holds them, the caps, and ending them when
their credentials stop being valid.

A connection is admitted after `connection_init` authenticated it, against three caps
(process, tenant, key); its operations count against the tenant's subscription cap. Every
way a connection ends goes through the protocol handler's `finally`, which releases it, so
the counts cannot leak.

Credentials are re-checked two ways: a "key revoked" signal on Redis pub/sub (every process
hears it and closes that key's connections at once), and a timer (`WS_AUTH_RECHECK_S`) that
reads every live credential from the database again, which bounds the delay when pub/sub
is down or a signal was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.websockets import WebSocket

from app import metrics
from app.auth import Authenticator, Principal
from app.errors import DomainError, Forbidden, ServiceUnavailable

log = logging.getLogger("conversation_service.ws")

#: The headers that carry credentials; nothing else of the upgrade request is kept.
AUTH_HEADERS = ("authorization", "x-tenant-id")

CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429


class ConnectionRefused(Exception):
    """connection_init refused with a close code (the protocol handler closes the socket)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TooManySubscriptions(Forbidden):
    pass


def auth_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name in AUTH_HEADERS if (value := headers.get(name))}


def connection_headers(params: Mapping[str, Any]) -> dict[str, str]:
    """The header names (lowercased) and values of a connection_init payload, in either form
    clients send: flat (`{"Authorization": ...}`) or Apollo/Hasura's `{"headers": {...}}`;
    a header in both is taken from `headers`."""
    headers = {str(k).lower(): v for k, v in params.items() if isinstance(v, str)}
    nested = params.get("headers")
    if isinstance(nested, Mapping):
        headers.update({str(k).lower(): v for k, v in nested.items() if isinstance(v, str)})
    return headers


class LiveConnection:
    """One WebSocket: the credentials it was authenticated with and how to end it."""

    __slots__ = (
        "closing",
        "credentials",
        "operations",
        "principal",
        "registry",
        "stop_operations",
        "upgrade_headers",
        "websocket",
    )

    def __init__(self, registry: ConnectionRegistry, websocket: WebSocket, upgrade_headers: dict[str, str]) -> None:
        self.registry = registry
        self.websocket = websocket
        #: Authorization / X-Tenant-ID of the upgrade request (used when connection_init has none).
        self.upgrade_headers = upgrade_headers
        self.credentials: dict[str, str] | None = None
        self.principal: Principal | None = None
        self.operations = 0
        self.closing = False
        #: Set by the protocol handler: cancels the connection's operations.
        self.stop_operations: Callable[[], Awaitable[None]] | None = None

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        # Close first so nothing more is sent, then end the operations still running.
        with contextlib.suppress(Exception):
            await self.websocket.close(code=code, reason=reason)
        if self.stop_operations is not None:
            with contextlib.suppress(Exception):
                await self.stop_operations()


class ConnectionRegistry:
    def __init__(
        self,
        authenticator: Authenticator,
        *,
        max_connections: int,
        max_per_tenant: int,
        max_per_key: int,
        max_subscriptions_per_tenant: int,
        recheck_s: float,
    ) -> None:
        self.authenticator = authenticator
        self.max_connections = max_connections
        self.max_per_tenant = max_per_tenant
        self.max_per_key = max_per_key
        self.max_subscriptions_per_tenant = max_subscriptions_per_tenant
        self.recheck_s = recheck_s
        self._live: set[LiveConnection] = set()
        self._per_tenant: Counter[str] = Counter()
        self._per_key: Counter[str] = Counter()
        self._subscriptions: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closers: set[asyncio.Task[None]] = set()

    # counts ---------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._live)

    @property
    def subscriptions(self) -> int:
        return sum(self._subscriptions.values())

    def admit(self, live: LiveConnection, principal: Principal, credentials: dict[str, str]) -> None:
        """Count the connection in, or refuse it (ConnectionRefused 4429) over a cap."""
        if live in self._live:
            return
        tenant, key = principal.tenant_id, principal.key_id
        if len(self._live) >= self.max_connections:
            raise ConnectionRefused(
                CLOSE_TOO_MANY, f"too many WebSocket connections (MAX_WS_CONNECTIONS={self.max_connections})"
            )
        if self._per_tenant[tenant] >= self.max_per_tenant:
            raise ConnectionRefused(
                CLOSE_TOO_MANY,
                f"too many connections for this tenant (MAX_WS_CONNECTIONS_PER_TENANT={self.max_per_tenant})",
            )
        if key is not None and self._per_key[key] >= self.max_per_key:
            raise ConnectionRefused(
                CLOSE_TOO_MANY, f"too many connections for this key (MAX_WS_CONNECTIONS_PER_KEY={self.max_per_key})"
            )
        live.principal, live.credentials = principal, credentials
        self._live.add(live)
        self._per_tenant[tenant] += 1
        if key is not None:
            self._per_key[key] += 1
        metrics.WS_CONNECTIONS.inc()

    def release(self, live: LiveConnection) -> None:
        """Count the connection out (idempotent); its operations were ended by the handler."""
        if live not in self._live or live.principal is None:
            return
        self._live.discard(live)
        tenant, key = live.principal.tenant_id, live.principal.key_id
        _decrement(self._per_tenant, tenant)
        if key is not None:
            _decrement(self._per_key, key)
        while live.operations > 0:
            self.end_operation(live)
        metrics.WS_CONNECTIONS.dec()

    def begin_operation(self, live: LiveConnection) -> None:
        principal = live.principal
        if principal is None:
            return
        if self._subscriptions[principal.tenant_id] >= self.max_subscriptions_per_tenant:
            raise TooManySubscriptions(
                f"too many subscriptions for this tenant (MAX_SUBSCRIPTIONS_PER_TENANT={self.max_subscriptions_per_tenant})",
                limit="MAX_SUBSCRIPTIONS_PER_TENANT",
                max=self.max_subscriptions_per_tenant,
            )
        self._subscriptions[principal.tenant_id] += 1
        live.operations += 1
        metrics.WS_OPERATIONS.inc()

    def end_operation(self, live: LiveConnection) -> None:
        principal = live.principal
        if principal is None or live.operations <= 0:
            return
        live.operations -= 1
        _decrement(self._subscriptions, principal.tenant_id)
        metrics.WS_OPERATIONS.dec()

    # revocation -----------------------------------------------------------------------------

    def on_key_revoked(self, payload: bytes) -> None:
        """The pub/sub signal: forget the key and close its connections (4403) now."""
        try:
            key_id = str(orjson.loads(payload)["key_id"])
        except Exception:
            log.warning("ignored a malformed key-revoked signal")
            return
        self.authenticator.forget_key(key_id)
        for live in [c for c in self._live if c.principal is not None and c.principal.key_id == key_id]:
            self._close_soon(live, "API key revoked", "revoked")

    def recheck_now(self) -> None:
        """Re-check every connection at once (the hub reconnected: a signal may have been lost)."""
        self._wake.set()

    async def recheck(self) -> None:
        """Authenticate every distinct live credential against the database again; connections
        whose credentials fail are closed 4403. An unreachable key store closes nothing."""
        groups: dict[tuple[tuple[str, str], ...], list[LiveConnection]] = {}
        for live in self._live:
            if live.credentials is not None and not live.closing:
                groups.setdefault(tuple(sorted(live.credentials.items())), []).append(live)
        secrets = [
            secret
            for credentials in groups
            if (secret := dict(credentials).get("authorization", "").partition(" ")[2].strip())
        ]
        try:
            await self.authenticator.refresh(secrets)  # one statement for every live key
        except Exception:  # the key store unreachable: not a reason to drop live streams
            return
        for credentials, members in groups.items():
            headers = dict(credentials)
            try:
                await self.authenticator.authenticate(headers)
            except ServiceUnavailable:
                continue
            except DomainError:
                for live in members:
                    self._close_soon(live, "credentials no longer valid", "recheck")
            except Exception:  # the key store unreachable: not a reason to drop live streams
                continue

    def _close_soon(self, live: LiveConnection, reason: str, label: str) -> None:
        metrics.WS_CLOSED.labels(label).inc()
        task = asyncio.get_running_loop().create_task(live.close(CLOSE_FORBIDDEN, reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _recheck_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.recheck_s)
            self._wake.clear()
            try:
                await self.recheck()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("WebSocket credential re-check failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._recheck_forever(), name="ws-auth-recheck")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
