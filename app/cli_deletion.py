"""`conversation-service delete-conversation --tenant T ID` and `erase-user --tenant T USER_ID`:
the same deletion service as the API (app/services/deletion.py), audited with actor 'cli'.

After the commit the service's Redis (REDIS_URL, or the one `run` started) hears of it: cached
copies are evicted (fencing fills, as the crons do) and the DELETED events are published so live
subscriptions in the API processes complete. The API's own cache is not in this process, so a
Redis that cannot be reached is an error here (exit 1, the rows are gone): run the command again
once Redis answers (a repeat removes nothing more but evicts and publishes again)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

from app import runtime
from app.settings import Settings

EVICT_ATTEMPTS = 5


class _AfterDeletion:
    """The listener that replaces the API's hot cache and fan-out for one CLI command."""

    def __init__(self, redis_url: str | None, cluster_nodes: str = "") -> None:
        from redis.asyncio import Redis

        from app.cache.base import _cluster_client
        from app.cache.options import CacheOptions

        self.redis_url = redis_url
        self.redis: Redis | None = Redis.from_url(redis_url) if redis_url else None
        # The hot store is a Redis Cluster when REDIS_CLUSTER_NODES is set (docs/scaling.md): the
        # cached copies are there, while events still go through REDIS_URL.
        self.hot: Any = _cluster_client(cluster_nodes, CacheOptions()) if cluster_nodes and redis_url else self.redis
        self.failed: list[uuid.UUID] = []

    async def on_events(self, events: list[Any]) -> None:
        from app.cache.keys import session_key
        from app.cache.scripts import evict
        from app.events import EventHub

        if self.redis is None or self.redis_url is None:
            return  # no Redis configured or running: nothing is cached, nobody subscribes
        targets = {(e.tenant_id, e.conversation_id) for e in events}
        sessions = [session_key(e.tenant_id, e.conversation.session_id) for e in events if e.conversation is not None]
        for attempt in range(EVICT_ATTEMPTS):
            try:
                await evict(self.hot, targets)
                if sessions:
                    await self.hot.delete(*sessions)
                break
            except Exception as exc:
                if attempt == EVICT_ATTEMPTS - 1:
                    print(f"warning: could not evict cached copies ({exc})", file=sys.stderr)
                    self.failed = [cid for _, cid in targets]
                    return
                await asyncio.sleep(0.2 * 2**attempt)
        hub = EventHub(self.redis_url)
        try:
            await hub.publish(events)
        except Exception as exc:  # subscribers still see the conversation gone on their next read
            print(f"warning: could not tell live subscriptions ({exc})", file=sys.stderr)
        finally:
            await hub.close()

    async def close(self) -> None:
        if self.hot is not None and self.hot is not self.redis:
            await self.hot.aclose()
        if self.redis is not None:
            await self.redis.aclose()


def _run(settings: Settings, tenant_id: str, work: Any) -> int:
    from app.runtime import admin_endpoints as _admin_endpoints
    from app.services import transfer
    from db.session import Database, create_pool

    endpoints = _admin_endpoints(settings)

    async def go() -> int:
        db = Database(await create_pool(endpoints.database_url, min_size=1, max_size=2))
        after = _AfterDeletion(runtime.running_redis_url(settings), settings.redis_cluster_nodes)
        db.listen(after.on_events)
        try:
            await transfer.export_tenants(db, [tenant_id])  # unknown tenants are errors
            result = await db.run(lambda uow: work(uow, after.redis))
        finally:
            await db.close()
            await after.close()
        print(
            f"deleted {result.conversations} conversations, {result.messages} messages, {result.state_keys} state keys"
        )
        if after.failed:
            ids = " ".join(str(i) for i in after.failed)
            print(
                "error: the rows are deleted but Redis could not be reached to evict cached copies; "
                f"when it is back run delete-conversation again for: {ids}",
                file=sys.stderr,
            )
            return 1
        return 0

    try:
        return asyncio.run(go())
    finally:
        endpoints.stop()


def cmd_delete_conversation(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import audit, deletion

    return _run(
        settings,
        args.tenant,
        lambda uow, redis: deletion.delete_conversation(uow, args.tenant, args.conversation_id, audit.CLI),
    )


def cmd_erase_user(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import audit, deletion

    return _run(
        settings,
        args.tenant,
        lambda uow, redis: deletion.erase_end_user(uow, args.tenant, args.user_id, audit.CLI, redis=redis),
    )


def add_deletion_commands(sub: Any) -> None:
    """Register the deletion commands on the CLI's subparsers (app/cli.py)."""
    dc = sub.add_parser("delete-conversation", help="delete one conversation and everything in it (audited)")
    dc.add_argument("--tenant", required=True)
    dc.add_argument("conversation_id")
    dc.set_defaults(func=cmd_delete_conversation)
    eu = sub.add_parser("erase-user", help="delete every conversation of one end user in a tenant (audited)")
    eu.add_argument("--tenant", required=True)
    eu.add_argument("user_id")
    eu.set_defaults(func=cmd_erase_user)
