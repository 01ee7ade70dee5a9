"""Admin commands (the admin API's operations, for operators): tenant settings, secret rotation,
dead letters per tenant and their replay, CRM deliveries, the audit log. Each acts on the tenant
named with --tenant and audits its changes with the actor 'cli'."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from app import runtime
from app.errors import NotFound
from app.settings import Settings

T = TypeVar("T")
CLI = "cli"


def _run(settings: Settings, tenant: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(db)` on the admin database, once the tenant is known to exist."""
    from app.runtime import admin_endpoints as _admin_endpoints
    from app.runtime import with_db as _with_db
    from app.services import tenants

    endpoints = _admin_endpoints(settings)

    async def checked(db: Any) -> T:
        async with db.read() as conn:
            if await tenants.get_tenant(conn, tenant) is None:
                raise NotFound(f"tenant {tenant!r} does not exist")
        return await work(db)

    return asyncio.run(_with_db(endpoints.database_url, checked))


def _show(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)


def _print_settings(s: Any) -> None:
    for name in (
        "tenant_id",
        "name",
        "crm_webhook_url",
        "crm_secret_set",
        "crm_max_attempts",
        "retention_days",
        "idle_timeout_seconds",
        "cors_origins",
        "updated_at",
        "search_language",
    ):
        value = getattr(s, name)
        print(f"{name:22} {','.join(value) if isinstance(value, list) else _show(value)}")


def cmd_settings_show(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import tenant_settings

    async def work(db: Any) -> Any:
        async with db.read() as conn:
            return await tenant_settings.get(conn, args.tenant, tenant_settings.Defaults.from_settings(settings))

    _print_settings(_run(settings, args.tenant, work))
    return 0


def cmd_settings_set(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import tenant_settings

    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.no_crm_webhook:
        changes["crmWebhookUrl"] = None
    elif args.crm_webhook_url is not None:
        changes["crmWebhookUrl"] = args.crm_webhook_url
    for option, field in (
        ("crm_max_attempts", "crmMaxAttempts"),
        ("retention_days", "retentionDays"),
        ("idle_timeout_seconds", "idleTimeoutSeconds"),
    ):
        if getattr(args, option) is not None:
            changes[field] = getattr(args, option)
    if args.cors_origins is not None:
        changes["corsOrigins"] = [o.strip() for o in args.cors_origins.split(",") if o.strip()]
    if args.search_language is not None:
        changes["searchLanguage"] = args.search_language
    defaults = tenant_settings.Defaults.from_settings(settings)

    async def work(db: Any) -> Any:
        return await db.run(lambda uow: tenant_settings.update(uow, args.tenant, CLI, changes, defaults))

    _print_settings(_run(settings, args.tenant, work))
    return 0


def cmd_rotate_secret(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import tenant_settings

    async def work(db: Any) -> Any:
        return await db.run(lambda uow: tenant_settings.rotate_secret(uow, args.tenant, CLI, args.overlap_seconds))

    rotated = _run(settings, args.tenant, work)
    until = rotated.previous_valid_until
    print(f"the previous secret signs too until {_show(until)}" if until else "no previous secret signs any more")
    print("the new webhook secret is shown once; store it now:")
    print(rotated.secret)
    return 0


def cmd_tenant_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    """`dead-letters --tenant T`: that tenant's dead letters with their ids, from Postgres."""
    from app.services import admin

    async def work(db: Any) -> Any:
        async with db.read() as conn:
            return await admin.dead_letters(conn, args.tenant, min(args.limit, 100), None, _limits(settings))

    for d in _run(settings, args.tenant, work).items:
        entry = {
            "id": str(d.id),
            "kind": d.kind,
            "action_type": d.action_type,
            "action_id": d.action_id,
            "error": d.error,
            "failed_at": _show(d.failed_at),
            "replayed_at": _show(d.replayed_at) if d.replayed_at else None,
        }
        print(json.dumps(entry, ensure_ascii=False))
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from redis.asyncio import Redis

    from app.queue import replay_enqueuer
    from app.services import admin

    endpoints = runtime.resolve(settings, start=False)

    async def work(db: Any) -> Any:
        redis = Redis.from_url(endpoints.redis_url)
        try:
            enqueue = replay_enqueuer(redis, settings.arq_queue)
            return await db.run(lambda uow: admin.replay_dead_letter(uow, args.tenant, CLI, args.id, enqueue))
        finally:
            await redis.aclose()

    try:
        letter = _run(settings, args.tenant, work)
    finally:
        endpoints.stop()
    print(f"dead letter {letter.id} replayed: {letter.action_type} {letter.action_id} is on {settings.arq_queue}")
    return 0


def _limits(settings: Settings) -> Any:
    from app.services.limits import Limits

    return Limits.from_settings(settings)


def cmd_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import admin, crm

    status = crm.CrmSyncStatus(args.status) if args.status else None

    async def work(db: Any) -> Any:
        async with db.read() as conn:
            return await admin.deliveries(conn, args.tenant, status, min(args.limit, 100), None, _limits(settings))

    print(f"{'conversation':36}  {'status':9}  {'attempts':8}  {'updated':25}  last error")
    for r in _run(settings, args.tenant, work).items:
        print(
            f"{r.conversation_id!s:36}  {r.status.value:9}  {r.attempts:8}  {_show(r.updated_at):25}  {r.last_error or '-'}"
        )
    return 0


def cmd_redeliver(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import admin

    async def work(db: Any) -> Any:
        return await db.run(lambda uow: admin.redeliver(uow, args.tenant, CLI, args.conversation_id))

    record = _run(settings, args.tenant, work)
    print(f"delivery {record.id} of conversation {record.conversation_id} is {record.status.value}, due now")
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import audit

    async def work(db: Any) -> Any:
        async with db.read() as conn:
            return await audit.page(conn, args.tenant, min(args.limit, 100), None, _limits(settings))

    for e in _run(settings, args.tenant, work).items:
        print(json.dumps({"at": _show(e.at), "actor": e.actor, "action": e.action, "details": e.details}))
    return 0


def add_admin_commands(sub: Any, tenant: Any) -> None:
    """Register the admin commands (app/cli.py passes its subparsers and the `tenant` group)."""
    settings = tenant.add_parser("settings", help="a tenant's settings").add_subparsers(
        dest="settings_command", required=True
    )
    show = settings.add_parser("show", help="print the settings (defaults filled in)")
    show.add_argument("tenant")
    show.set_defaults(func=cmd_settings_show)
    set_ = settings.add_parser("set", help="change the given settings only")
    set_.add_argument("tenant")
    set_.add_argument("--name")
    set_.add_argument("--crm-webhook-url")
    set_.add_argument("--no-crm-webhook", action="store_true", help="remove the webhook")
    set_.add_argument("--crm-max-attempts", type=int)
    set_.add_argument("--retention-days", type=int)
    set_.add_argument("--idle-timeout-seconds", type=int)
    set_.add_argument("--cors-origins", help="comma-separated origins (empty: none)")
    set_.add_argument(
        "--search-language",
        help="simple, english, spanish, german, french, portuguese or italian (then reindex-search)",
    )
    set_.set_defaults(func=cmd_settings_set)
    rotate = tenant.add_parser("rotate-secret", help="a new CRM webhook secret (printed once)")
    rotate.add_argument("tenant")
    rotate.add_argument("--overlap-seconds", type=int, default=3600, help="the old secret signs too this long")
    rotate.set_defaults(func=cmd_rotate_secret)

    replay = sub.add_parser("dead-letter-replay", help="enqueue a tenant's dead letter again (applies once)")
    replay.add_argument("--tenant", required=True)
    replay.add_argument("id", help="a dead letter id from `dead-letters --tenant`")
    replay.set_defaults(func=cmd_replay)

    crm = sub.add_parser("crm", help="CRM deliveries").add_subparsers(dest="crm_command", required=True)
    deliveries = crm.add_parser("deliveries", help="a tenant's deliveries, newest first")
    deliveries.add_argument("--tenant", required=True)
    deliveries.add_argument("--status", choices=["pending", "delivered", "failed"])
    deliveries.add_argument("--limit", type=int, default=20)
    deliveries.set_defaults(func=cmd_deliveries)
    redeliver = crm.add_parser("redeliver", help="deliver a conversation again, now (idempotent)")
    redeliver.add_argument("--tenant", required=True)
    redeliver.add_argument("conversation_id")
    redeliver.set_defaults(func=cmd_redeliver)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    listing = audit.add_parser("list", help="a tenant's admin changes, newest first, one JSON per line")
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=cmd_audit)
