"""A tenant's settings as the admin API reads and changes them (stored in `tenants.settings`).

Keys: `crm_webhook_url`, `crm_webhook_secret` (+ `crm_webhook_secret_previous` and
`crm_webhook_secret_previous_until` during a rotation's overlap), `crm_max_attempts`,
`retention_days`, `idle_timeout_seconds`, `cors_origins`, `search_language` (the text-search
configuration new messages are indexed with and queries are parsed with; db/repositories/text_search).
A key that is absent means the server-wide default (app/services/crm.py and maintenance.py read them
the same way).
"""

from __future__ import annotations

import secrets
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.errors import BadUserInput, NotFound
from app.services import audit
from app.services import limits as check
from app.settings import Settings
from db.repositories import admin as repo
from db.repositories import text_search
from db.session import Connection, UnitOfWork

#: Upper bounds: beyond them a value is a typo, not a policy.
MAX_CRM_ATTEMPTS = 100
MAX_RETENTION_DAYS = 36_500
MAX_IDLE_TIMEOUT_S = 366 * 86_400
MAX_OVERLAP_S = 7 * 86_400
MAX_CORS_ORIGINS = 50
MAX_URL_LENGTH = 2_000
SECRET_PREFIX = "whsec_"

#: GraphQL input field → settings key (None: the tenant's name column).
FIELDS: dict[str, str | None] = {
    "name": None,
    "crmWebhookUrl": "crm_webhook_url",
    "crmMaxAttempts": "crm_max_attempts",
    "retentionDays": "retention_days",
    "idleTimeoutSeconds": "idle_timeout_seconds",
    "corsOrigins": "cors_origins",
    "searchLanguage": "search_language",
}


@dataclass(frozen=True, slots=True)
class Defaults:
    """Server-wide values a tenant without its own setting gets."""

    crm_max_attempts: int = 8
    retention_days: int = 0
    idle_timeout_seconds: int = 86_400

    @classmethod
    def from_settings(cls, s: Settings) -> Defaults:
        return cls(s.crm_max_attempts, s.default_retention_days, int(s.default_idle_timeout_s))


@dataclass(frozen=True, slots=True)
class TenantSettings:
    tenant_id: str
    name: str | None
    crm_webhook_url: str | None
    crm_secret_set: bool
    crm_max_attempts: int
    retention_days: int
    idle_timeout_seconds: int
    cors_origins: list[str]
    updated_at: datetime
    search_language: str = text_search.SEARCH_CONFIG


@dataclass(frozen=True, slots=True)
class RotatedSecret:
    secret: str
    previous_valid_until: datetime | None


def _of(row: asyncpg.Record, defaults: Defaults) -> TenantSettings:
    s: dict[str, Any] = row["settings"] or {}

    def number(key: str, default: int) -> int:
        value = s.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    origins = s.get("cors_origins")
    return TenantSettings(
        tenant_id=row["tenant_id"],
        name=row["name"],
        crm_webhook_url=s.get("crm_webhook_url") or None,
        crm_secret_set=bool(s.get("crm_webhook_secret")),
        crm_max_attempts=number("crm_max_attempts", defaults.crm_max_attempts),
        retention_days=number("retention_days", defaults.retention_days),
        idle_timeout_seconds=number("idle_timeout_seconds", defaults.idle_timeout_seconds),
        cors_origins=[o for o in origins if isinstance(o, str)] if isinstance(origins, list) else [],
        updated_at=row["updated_at"],
        search_language=s["search_language"]
        if s.get("search_language") in text_search.SUPPORTED
        else text_search.SEARCH_CONFIG,
    )


async def get(conn: Connection, tenant_id: str, defaults: Defaults) -> TenantSettings:
    row = await repo.tenant(conn, tenant_id)
    if row is None:
        # Trusted mode knows tenants by header alone; settings need the row (`tenant create`).
        raise NotFound(f"tenant {tenant_id!r} has no row (create it with `conversation-service tenant create`)")
    return _of(row, defaults)


def _url(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH:
        raise BadUserInput(f"crmWebhookUrl must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadUserInput("crmWebhookUrl must be an absolute http or https URL", field="crmWebhookUrl")
    return value


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadUserInput(f"{field} must be an integer from {lo} to {hi}", field=field)
    return value


def origin(value: str) -> str:
    """`scheme://host[:port]`, nothing else (what a browser sends in `Origin`)."""
    parts = urllib.parse.urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(netloc="")
    well_formed = (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.path
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
        and value == f"{parts.scheme}://{parts.hostname}{f':{port}' if port is not None else ''}"
    )
    if not well_formed:
        raise BadUserInput(
            f"{value!r} is not an origin: give scheme://host[:port] in lowercase, no path or trailing slash",
            field="corsOrigins",
        )
    return value


def _validate(changes: dict[str, Any]) -> tuple[bool, str | None, dict[str, Any], list[str]]:
    """(set_name, name, patch, removed keys) for the given changes; BAD_USER_INPUT before anything is written."""
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise BadUserInput(f"unknown settings: {', '.join(sorted(unknown))}")
    patch: dict[str, Any] = {}
    remove: list[str] = []
    for field, value in changes.items():
        key = FIELDS[field]
        if key is None:
            continue
        if value is None:  # null: back to the server-wide default (for the URL: no webhook)
            remove.append(key)
        elif key == "crm_webhook_url":
            patch[key] = _url(value)
        elif key == "crm_max_attempts":
            patch[key] = _int(field, value, 1, MAX_CRM_ATTEMPTS)
        elif key == "retention_days":
            patch[key] = _int(field, value, 0, MAX_RETENTION_DAYS)
        elif key == "idle_timeout_seconds":
            patch[key] = _int(field, value, 0, MAX_IDLE_TIMEOUT_S)
        elif key == "cors_origins":
            if not isinstance(value, list) or len(value) > MAX_CORS_ORIGINS:
                raise BadUserInput(f"corsOrigins: at most {MAX_CORS_ORIGINS} origins", field="corsOrigins")
            patch[key] = sorted({origin(o) for o in value})
        elif key == "search_language":
            if value not in text_search.SUPPORTED:
                raise BadUserInput(
                    f"searchLanguage must be one of {', '.join(text_search.SUPPORTED)}", field="searchLanguage"
                )
            patch[key] = value
    name = changes.get("name")
    if name is not None:
        check.text(name, "name", 200)
    return "name" in changes, name, patch, remove


async def update(
    uow: UnitOfWork, tenant_id: str, actor: str, changes: dict[str, Any], defaults: Defaults
) -> TenantSettings:
    """Only the given fields change (GraphQL field names); null puts a field back to its default."""
    set_name, name, patch, remove = _validate(changes)
    conn = await uow.begin()
    row = await repo.write_settings(conn, tenant_id, set_name=set_name, name=name, patch=patch, remove=remove)
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} has no row (create it with `conversation-service tenant create`)")
    await audit.record(conn, tenant_id, actor, "updateTenantSettings", {"changed": sorted(changes)})
    return _of(row, defaults)


async def rotate_secret(uow: UnitOfWork, tenant_id: str, actor: str, overlap_s: int) -> RotatedSecret:
    """A new webhook secret (returned once). The previous one keeps signing, beside it, for
    `overlap_s` seconds, so receivers can switch without refusing a delivery."""
    _int("overlapSeconds", overlap_s, 0, MAX_OVERLAP_S)
    conn = await uow.begin()
    row = await repo.tenant_for_update(conn, tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} has no row (create it with `conversation-service tenant create`)")
    current = (row["settings"] or {}).get("crm_webhook_secret")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    until = datetime.now(UTC) + timedelta(seconds=overlap_s) if current and overlap_s > 0 else None
    patch: dict[str, Any] = {"crm_webhook_secret": secret}
    remove: list[str] = []
    if until is not None:
        patch |= {"crm_webhook_secret_previous": current, "crm_webhook_secret_previous_until": until.isoformat()}
    else:
        remove = ["crm_webhook_secret_previous", "crm_webhook_secret_previous_until"]
    await repo.write_settings(conn, tenant_id, set_name=False, name=None, patch=patch, remove=remove)
    await audit.record(
        conn, tenant_id, actor, "rotateCrmSecret", {"overlapSeconds": overlap_s, "hadSecret": bool(current)}
    )
    return RotatedSecret(secret=secret, previous_valid_until=until)


async def cors_origins_by_tenant(conn: Connection) -> dict[str, frozenset[str]]:
    """Origin → the tenants that allow it."""
    found: dict[str, set[str]] = {}
    for origin_, tenant_id in await repo.all_cors_origins(conn):
        found.setdefault(origin_, set()).add(tenant_id)
    return {o: frozenset(t) for o, t in found.items()}
