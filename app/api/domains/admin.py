"""The admin API's roots (scope `admin`, the caller's own tenant): thin resolvers over
app/services/admin.py and tenant_settings.py. Mixed into Query and Mutation."""

from __future__ import annotations

import contextlib
from typing import cast

import orjson
import strawberry

from app.api.domains.admin_types import (
    ApiKey,
    AuditEntryConnection,
    CreateApiKeyInput,
    CreatedApiKey,
    CrmDeliveryConnection,
    DeadLetterConnection,
    RotatedCrmSecret,
    TenantSettings,
    UpdateTenantSettingsInput,
)
from app.api.domains.common import Ctx
from app.api.domains.crm import CrmSync
from app.api.domains.enums import CrmSyncStatus
from app.events import KEY_REVOKED_CHANNEL
from app.services import admin, audit, crm, tenant_settings, tenants
from app.services.tenants import Scope


def _admin(info: Ctx) -> tuple[str, str]:
    """(tenant, actor) after checking the admin scope."""
    tenant = info.context.tenant(Scope.ADMIN)
    principal = info.context.principal
    return tenant, audit.actor_of(principal.key_id if principal else None)


def _defaults(info: Ctx) -> tenant_settings.Defaults:
    return tenant_settings.Defaults.from_settings(info.context.resources.settings)


def _enqueuer(info: Ctx) -> admin.Enqueue:
    """Replays go on this process's queue (ARQ_QUEUE) through the shared Redis client."""
    from app.queue import replay_enqueuer

    resources = info.context.resources
    return replay_enqueuer(resources.redis, resources.settings.arq_queue)


@strawberry.type
class AdminQuery:
    @strawberry.field(description="The caller's tenant's settings. Scope admin.")
    async def tenant_settings(self, info: Ctx) -> TenantSettings:
        tenant, _ = _admin(info)
        async with info.context.resources.db.read() as conn:
            return TenantSettings.of(await tenant_settings.get(conn, tenant, _defaults(info)))

    @strawberry.field(description="The tenant's API keys, oldest first (revoked ones on request). Scope admin.")
    async def api_keys(self, info: Ctx, include_revoked: bool | None = False) -> list[ApiKey]:
        tenant, _ = _admin(info)
        async with info.context.resources.db.read() as conn:
            keys = await admin.list_keys(conn, tenant, include_revoked=bool(include_revoked))
        return [ApiKey.of(k) for k in keys]

    @strawberry.field(description="The tenant's dead letters, newest first. Scope admin.")
    async def dead_letters(self, info: Ctx, first: int | None = 20, after: str | None = None) -> DeadLetterConnection:
        tenant, _ = _admin(info)
        async with info.context.resources.db.read() as conn:
            page = await admin.dead_letters(conn, tenant, first, after, info.context.resources.limits)
        return DeadLetterConnection.from_page(page)

    @strawberry.field(description="The tenant's CRM deliveries, newest first, optionally by status. Scope admin.")
    async def crm_deliveries(
        self, info: Ctx, status: CrmSyncStatus | None = None, first: int | None = 20, after: str | None = None
    ) -> CrmDeliveryConnection:
        tenant, _ = _admin(info)
        async with info.context.resources.db.read() as conn:
            wanted = crm.CrmSyncStatus(status) if status is not None else None
            page = await admin.deliveries(conn, tenant, wanted, first, after, info.context.resources.limits)
        return CrmDeliveryConnection.from_page(page)

    @strawberry.field(description="Admin changes and deletions in this tenant, newest first. Scope admin.")
    async def audit_log(self, info: Ctx, first: int | None = 20, after: str | None = None) -> AuditEntryConnection:
        tenant, _ = _admin(info)
        async with info.context.resources.db.read() as conn:
            page = await audit.page(conn, tenant, first, after, info.context.resources.limits)
        return AuditEntryConnection.from_page(page)


@strawberry.type
class AdminMutation:
    @strawberry.mutation(description="Only the fields given change; null puts one back to its default. Scope admin.")
    async def update_tenant_settings(self, info: Ctx, input: UpdateTenantSettingsInput) -> TenantSettings:
        tenant, actor = _admin(info)
        changes, defaults = input.changes(), _defaults(info)
        updated = await info.context.resources.db.run(
            lambda uow: tenant_settings.update(uow, tenant, actor, changes, defaults)
        )
        return TenantSettings.of(updated)

    @strawberry.mutation(
        description="A new webhook secret, shown once; the previous one keeps signing beside it for overlapSeconds "
        "(0 to 604800). Scope admin."
    )
    async def rotate_crm_secret(self, info: Ctx, overlap_seconds: int | None = 3600) -> RotatedCrmSecret:
        tenant, actor = _admin(info)
        overlap = 3600 if overlap_seconds is None else overlap_seconds
        rotated = await info.context.resources.db.run(
            lambda uow: tenant_settings.rotate_secret(uow, tenant, actor, overlap)
        )
        return RotatedCrmSecret(secret=rotated.secret, previous_valid_until=rotated.previous_valid_until)

    @strawberry.mutation(description="A new API key of this tenant; its secret is returned once. Scope admin.")
    async def create_api_key(self, info: Ctx, input: CreateApiKeyInput) -> CreatedApiKey:
        tenant, actor = _admin(info)
        key, secret = await info.context.resources.db.run(
            lambda uow: admin.create_key(
                uow, tenant, actor, scopes=input.scopes, name=input.name, expires_at=input.expires_at
            )
        )
        return CreatedApiKey(api_key=ApiKey.of(key), secret=secret)

    @strawberry.mutation(
        description="Revoke one of this tenant's keys (idempotent): refused at once by every API process, its "
        "WebSocket connections closed. Scope admin."
    )
    async def revoke_api_key(self, info: Ctx, id: strawberry.ID) -> ApiKey:
        tenant, actor = _admin(info)
        resources, authenticator = info.context.resources, info.context.authenticator

        async def announce(key: tenants.ApiKey) -> None:
            authenticator.forget_key(str(key.id))
            # Committed already: if Redis is away, the other processes' re-checks catch it (WS_AUTH_RECHECK_S).
            with contextlib.suppress(Exception):
                await resources.redis.publish(
                    KEY_REVOKED_CHANNEL, orjson.dumps({"key_id": str(key.id), "tenant_id": key.tenant_id})
                )

        key = await resources.db.run(lambda uow: admin.revoke_key(uow, tenant, actor, str(id), announce=announce))
        return ApiKey.of(key)

    @strawberry.mutation(
        description="Enqueues the dead letter's envelope again under its own action_id: replaying twice applies it "
        "once. Scope admin."
    )
    async def replay_dead_letter(self, info: Ctx, id: strawberry.ID) -> bool:
        tenant, actor = _admin(info)
        enqueue = _enqueuer(info)
        await info.context.resources.db.run(lambda uow: admin.replay_dead_letter(uow, tenant, actor, str(id), enqueue))
        return True

    @strawberry.mutation(
        description="Deliver the conversation to the CRM again, now (idempotent: one pending delivery). Scope admin."
    )
    async def redeliver_crm_sync(self, info: Ctx, conversation_id: strawberry.ID) -> CrmSync:
        tenant, actor = _admin(info)
        record = await info.context.resources.db.run(
            lambda uow: admin.redeliver(uow, tenant, actor, str(conversation_id))
        )
        return cast(CrmSync, record)
