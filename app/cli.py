"""`conversation-service …`: run, serve, worker, migrate, tenant, api-key."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from app import runtime
from app.errors import DomainError, NotFound
from app.settings import Settings, get_settings
from app.supervisor import ChildSupervisor

T = TypeVar("T")
log = logging.getLogger("conversation_service")

DEV_TENANT = "dev"


def _setup_logging(settings: Settings) -> None:
    from app import logs

    logs.configure(settings.log_level)


class CannotListen(Exception):
    """The API's port cannot be bound (taken, or not ours to take)."""


def _listen(host: str, port: int) -> socket.socket:
    """The API's socket, bound before anything else starts: a taken port fails at once with one
    clear line, not after the servers and the worker are up, and never after a banner."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _serve(app: Any, sock: socket.socket, on_started: Callable[[], None]) -> None:
    """uvicorn on our bound socket; `on_started` runs once the app's start-up is done and the
    socket listens, so whatever it prints is true when read."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                on_started()

    Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def _banner(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]  # the real one when PORT=0
    return f"Conversation Service on http://{host}:{port}  (health: /readyz)"


_admin_endpoints = runtime.admin_endpoints


_with_db = runtime.with_db


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from db.migrate import upgrade

    endpoints = runtime.resolve(settings, need_redis=False)
    upgrade(endpoints.database_url)
    print("database is at the latest migration")
    return 0


def cmd_tenant_create(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import audit, tenants

    endpoints = _admin_endpoints(settings)

    async def create(uow: Any) -> tuple[Any, bool]:
        await uow.begin()
        tenant, created = await tenants.ensure_tenant(uow, args.tenant, args.name)
        if created:
            await audit.record(uow.conn, tenant.tenant_id, audit.CLI, "createTenant", {"name": tenant.name})
        return tenant, created

    async def work(db: Any) -> tuple[Any, bool]:
        result: tuple[Any, bool] = await db.run(create)
        return result

    tenant, created = asyncio.run(_with_db(endpoints.database_url, work))
    print(f"tenant {tenant.tenant_id} {'created' if created else 'already exists'}")
    return 0


def cmd_key_create(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import admin, tenants

    scopes = [s.value for s in tenants.parse_scopes(args.scopes)]
    endpoints = _admin_endpoints(settings)

    async def work(db: Any) -> tuple[Any, str]:
        result: tuple[Any, str] = await db.run(
            lambda uow: admin.create_key(
                uow, args.tenant, "cli", scopes=scopes, name=args.name, expires_at=args.expires
            )
        )
        return result

    key, secret = asyncio.run(_with_db(endpoints.database_url, work))
    print(f"api key {key.id} for tenant {key.tenant_id}, scopes {','.join(s.value for s in key.scopes)}")
    print("the key is shown once; store it now:")
    print(secret)
    return 0


def _instant(value: str) -> Any:
    from datetime import datetime

    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO-8601 time") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs a time zone (e.g. Z or +02:00)")
    return at


def cmd_key_list(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import tenants

    endpoints = _admin_endpoints(settings)

    async def work(db: Any) -> list[Any]:
        async with db.read() as conn:
            # An empty list for a mistyped tenant would read as "no keys"; it is an error.
            if await tenants.get_tenant(conn, args.tenant) is None:
                raise NotFound(f"tenant {args.tenant!r} does not exist")
            result: list[Any] = await tenants.list_api_keys(conn, args.tenant)
            return result

    keys = asyncio.run(_with_db(endpoints.database_url, work))
    width = max([len("name"), *(len(k.name or "-") for k in keys)])

    def at(value: Any) -> str:
        return value.isoformat(timespec="seconds") if value else "-"

    print(
        f"{'id':36}  {'name':{width}}  {'prefix':12}  {'scopes':18}  {'created':25}  {'last used':25}  "
        f"{'expires':25}  revoked"
    )
    for k in keys:
        print(
            f"{k.id!s:36}  {k.name or '-':{width}}  {k.prefix:12}  {','.join(s.value for s in k.scopes):18}  "
            f"{at(k.created_at):25}  {at(k.last_used_at):25}  {at(k.expires_at):25}  {at(k.revoked_at)}"
        )
    return 0


def cmd_key_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import audit, tenants

    try:
        key_id = uuid.UUID(args.key_id)
    except ValueError:
        print(f"error: {args.key_id!r} is not a key id (a UUID from `api-key list`)", file=sys.stderr)
        return 2
    from app import events

    endpoints = _admin_endpoints(settings)
    # Live WebSocket connections of the key close at once when the API processes hear of it.
    redis_url = runtime.running_redis_url(settings)

    async def announce(key: Any) -> None:
        if redis_url:
            await events.announce_key_revoked(redis_url, str(key.id), key.tenant_id)

    async def revoke(uow: Any) -> Any:
        key = await tenants.revoke_api_key(uow, key_id, announce=announce)
        await audit.record(uow.conn, key.tenant_id, audit.CLI, "revokeApiKey", {"keyId": str(key.id), "name": key.name})
        return key

    async def work(db: Any) -> Any:
        return await db.run(revoke)

    key = asyncio.run(_with_db(endpoints.database_url, work))
    print(f"api key {key.id} revoked at {key.revoked_at.isoformat()}")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """The API alone (servers from the URLs, or the embedded ones in DATA_DIR)."""
    from app.main import create_app

    host = args.host or settings.host
    sock = _listen(host, settings.port if args.port is None else args.port)
    endpoints = runtime.resolve(settings)
    try:
        app = create_app(settings, database_url=endpoints.database_url, redis_url=endpoints.redis_url)
        _serve(app, sock, lambda: print(_banner(sock, host), flush=True))
    finally:
        sock.close()
        endpoints.stop()
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.worker import create_worker

    endpoints = runtime.resolve(settings)
    try:
        create_worker(settings, database_url=endpoints.database_url, redis_url=endpoints.redis_url).run()
    finally:
        endpoints.stop()
    return 0


def _ensure_dev_key(settings: Settings, database_url: str) -> str | None:
    """First start in development: a dev tenant and a read/write/admin key, kept in DATA_DIR so
    every later start can print it again. Never in production."""
    from app.services import tenants

    if settings.is_production:
        return None
    key_file = settings.resolved_data_dir / "dev-api-key"
    if key_file.exists():
        return key_file.read_text().strip()

    async def work(db: Any) -> str:
        async def create(uow: Any) -> str:
            await tenants.ensure_tenant(uow, DEV_TENANT, "Development")
            _, secret = await tenants.create_api_key(uow, DEV_TENANT, list(tenants.Scope), "dev (created by run)")
            return secret

        result: str = await db.run(create)
        return result

    secret = asyncio.run(_with_db(database_url, work))
    key_file.write_text(secret + "\n")
    key_file.chmod(0o600)
    return secret


def _write_urls(path: Path, endpoints: runtime.Endpoints) -> None:
    """DATA_DIR/urls.env: where an arq client or psql finds the servers `run` uses (embedded ones
    take a new port at every start unless EMBEDDED_*_PORT is set). Gone when `run` stops."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(
        "# written by `conversation-service run` while it runs\n"
        f"DATABASE_URL={endpoints.database_url}\nREDIS_URL={endpoints.redis_url}\n"
    )
    tmp.replace(path)  # readers never see half a file


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Everything for development: embedded servers (unless URLs are set), migrations, worker, API."""
    from app.embedded.process import die_with_parent
    from app.main import create_app
    from db.migrate import upgrade

    host = args.host or settings.host
    sock = _listen(host, settings.port if args.port is None else args.port)
    data_dir = settings.resolved_data_dir
    urls_file = data_dir / "urls.env"
    endpoints: runtime.Endpoints | None = None
    worker: ChildSupervisor | None = None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        endpoints = runtime.resolve(settings)
        _write_urls(urls_file, endpoints)
        upgrade(endpoints.database_url)
        secret = _ensure_dev_key(settings, endpoints.database_url)
        env = {**os.environ, "DATABASE_URL": endpoints.database_url, "REDIS_URL": endpoints.redis_url}
        # The supervisor's watcher thread lives as long as `run`, so the restarted worker's
        # parent-death signal (tied to the thread that spawned it) still fires only when `run` dies.
        worker = ChildSupervisor(
            "worker",
            lambda: subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=env,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - no imports or locks in it
            ),
        )
        worker.start()
        urls = f"DATABASE_URL={endpoints.database_url}\nREDIS_URL={endpoints.redis_url}"

        def banner() -> None:
            print(f"{_banner(sock, host)}\n{urls}  (also in {urls_file})", flush=True)
            if secret:
                print(f"dev tenant: {DEV_TENANT}   dev API key: {secret}", flush=True)

        app = create_app(settings, database_url=endpoints.database_url, redis_url=endpoints.redis_url)
        _serve(app, sock, banner)
    finally:
        sock.close()
        if worker is not None:
            worker.stop()
        urls_file.unlink(missing_ok=True)
        if endpoints is not None:
            endpoints.stop()
    return 0


def cmd_dev_cluster(settings: Settings, args: argparse.Namespace) -> int:
    """A local Citus cluster (coordinator + workers) in DATA_DIR/citus, migrated; runs until Ctrl-C.

    Builds Citus on first use (minutes, once per machine; app/embedded/citus.py). `run --cluster
    citus` (or CLUSTER=citus) starts the whole service on it instead.
    """
    import signal
    import threading

    from app.embedded.citus import CitusUnavailable, start_citus_cluster
    from db.migrate import upgrade

    try:
        cluster = start_citus_cluster(settings.resolved_data_dir / "citus", workers=args.workers)
    except CitusUnavailable as exc:
        print(f"dev-cluster: {exc}", file=sys.stderr)
        return 1
    try:
        upgrade(cluster.url)
        print(f"Citus coordinator: DATABASE_URL={cluster.url}", flush=True)
        for node in cluster.workers:
            print(f"  worker: {node.url}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        cluster.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conversation-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("run", cmd_run, "embedded servers (unless URLs are set), migrations, worker and API"),
        ("serve", cmd_serve, "the API only"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument("--cluster", choices=["none", "citus"], help="overrides CLUSTER (embedded servers only)")
        p.set_defaults(func=func)
    sub.add_parser("worker", help="the arq worker").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    dc = sub.add_parser("dev-cluster", help="a local Citus cluster (coordinator + workers) until Ctrl-C")
    dc.add_argument("--workers", type=int, default=2)
    dc.set_defaults(func=cmd_dev_cluster)

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="tenant_command", required=True)
    create = tenant.add_parser("create", help="create a tenant (idempotent)")
    create.add_argument("tenant")
    create.add_argument("--name")
    create.set_defaults(func=cmd_tenant_create)

    key = sub.add_parser("api-key", help="API keys").add_subparsers(dest="key_command", required=True)
    kc = key.add_parser("create", help="create a key; prints it alone on the last line")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--scopes", default="read,write", help="comma-separated: read, write, admin")
    kc.add_argument("--name")
    kc.add_argument("--expires", type=_instant, help="refused from then on (ISO-8601 with a time zone)")
    kc.set_defaults(func=cmd_key_create)
    kl = key.add_parser("list", help="list a tenant's keys")
    kl.add_argument("--tenant", required=True)
    kl.set_defaults(func=cmd_key_list)
    kr = key.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id")
    kr.set_defaults(func=cmd_key_revoke)

    from app.cli_data import add_data_commands

    add_data_commands(sub)
    from app.cli_admin import add_admin_commands

    add_admin_commands(sub, tenant)
    from app.cli_data import add_tenant_data_commands

    add_tenant_data_commands(tenant)
    from app.cli_deletion import add_deletion_commands

    add_deletion_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "cluster", None):
        settings = settings.model_copy(update={"cluster": args.cluster})
    _setup_logging(settings)
    try:
        code: int = args.func(settings, args)
    except DomainError as exc:
        print(f"error ({exc.code.value}): {exc.message}", file=sys.stderr)
        return 1
    except (runtime.NoServers, CannotListen) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
