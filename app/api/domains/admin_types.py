"""GraphQL types of the admin API (docs/contract-admin.graphql)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import strawberry

from app import models
from app.api.domains.common import Ctx, PageInfo, page_info
from app.api.domains.conversations import Conversation
from app.api.domains.crm import CrmSync
from app.api.scalars import JSON
from app.services import admin, audit, conversations, tenant_settings, tenants
from app.services.crm import CrmSyncRecord


@strawberry.type(description="The caller's tenant's settings. Absent tenant values show the server-wide default.")
class TenantSettings:
    tenant_id: strawberry.ID = strawberry.field(description="The tenant.")
    name: str | None = strawberry.field(description="Display name.")
    crm_webhook_url: str | None = strawberry.field(description="Where closed conversations are POSTed; null: none.")
    crm_secret_set: bool = strawberry.field(
        description="True when a webhook signing secret is set. The secret itself is never readable."
    )
    crm_max_attempts: int = strawberry.field(description="Webhook attempts before a delivery fails for good.")
    retention_days: int = strawberry.field(description="0: closed conversations are kept for ever.")
    idle_timeout_seconds: int = strawberry.field(description="0: sessions never close for idleness.")
    cors_origins: list[str] = strawberry.field(
        description="Browser origins allowed by CORS for this tenant's keys (besides the server-wide setting)."
    )
    updated_at: datetime = strawberry.field(description="Last change of the name or settings.")
    search_language: str = strawberry.field(
        description="Text-search configuration of this tenant's messages and search queries: one of simple "
        "(no stemming, the default), english, spanish, german, french, portuguese, italian. Stemming makes "
        "'canciones' find 'canción' (spanish) and 'run' find 'running' (english)."
    )

    @classmethod
    def of(cls, s: tenant_settings.TenantSettings) -> TenantSettings:
        return cls(
            tenant_id=strawberry.ID(s.tenant_id),
            name=s.name,
            crm_webhook_url=s.crm_webhook_url,
            crm_secret_set=s.crm_secret_set,
            crm_max_attempts=s.crm_max_attempts,
            retention_days=s.retention_days,
            idle_timeout_seconds=s.idle_timeout_seconds,
            cors_origins=s.cors_origins,
            updated_at=s.updated_at,
            search_language=s.search_language,
        )


@strawberry.input(description="Only the fields given change. A null crmWebhookUrl removes the webhook.")
class UpdateTenantSettingsInput:
    name: str | None = strawberry.field(default=strawberry.UNSET, description="Display name (null: none).")
    crm_webhook_url: str | None = strawberry.field(
        default=strawberry.UNSET, description="An http(s) URL; null removes the webhook."
    )
    crm_max_attempts: int | None = strawberry.field(
        default=strawberry.UNSET, description="1 to 100; null: the server-wide CRM_MAX_ATTEMPTS."
    )
    retention_days: int | None = strawberry.field(
        default=strawberry.UNSET, description="0 (for ever) to 36500; null: the server-wide default."
    )
    idle_timeout_seconds: int | None = strawberry.field(
        default=strawberry.UNSET, description="0 (never) to 366 days; null: the server-wide default."
    )
    cors_origins: list[str] | None = strawberry.field(
        default=strawberry.UNSET, description="scheme://host[:port] origins, at most 50; null or []: none."
    )

    search_language: str | None = strawberry.field(
        default=strawberry.UNSET,
        description="simple, english, spanish, german, french, portuguese or italian; null: simple; other "
        "values are BAD_USER_INPUT. Applies to messages written from then on and to every query; messages "
        "already stored keep the configuration they were indexed with until an operator runs "
        "`conversation-service tenant reindex-search`.",
    )

    def changes(self) -> dict[str, object]:
        """The given fields by their GraphQL names (null included, absent left out)."""
        given = {
            "name": self.name,
            "crmWebhookUrl": self.crm_webhook_url,
            "crmMaxAttempts": self.crm_max_attempts,
            "retentionDays": self.retention_days,
            "idleTimeoutSeconds": self.idle_timeout_seconds,
            "corsOrigins": self.cors_origins,
            "searchLanguage": self.search_language,
        }
        return {k: v for k, v in given.items() if v is not strawberry.UNSET}


@strawberry.type(description="A new webhook signing secret.")
class RotatedCrmSecret:
    secret: str = strawberry.field(description="The new secret, shown once.")
    previous_valid_until: datetime | None = strawberry.field(
        description="Until then webhooks carry signatures by both the new and the previous secret."
    )


@strawberry.type(description="An API key of the tenant (never its secret).")
class ApiKey:
    id: strawberry.ID = strawberry.field(description="The key's id (for revokeApiKey).")
    name: str | None = strawberry.field(description="What it is for.")
    prefix: str = strawberry.field(description="The first characters of the key, enough to recognise it.")
    scopes: list[str] = strawberry.field(description="read, write, admin.")
    created_at: datetime = strawberry.field(description="When it was made.")
    last_used_at: datetime | None = strawberry.field(description="Its last use, to within a minute.")
    expires_at: datetime | None = strawberry.field(description="Refused from then on; null: never expires.")
    revoked_at: datetime | None = strawberry.field(description="When it was revoked; null: active.")

    @classmethod
    def of(cls, k: tenants.ApiKey) -> ApiKey:
        return cls(
            id=strawberry.ID(str(k.id)),
            name=k.name,
            prefix=k.prefix,
            scopes=[s.value for s in k.scopes],
            created_at=k.created_at,
            last_used_at=k.last_used_at,
            expires_at=k.expires_at,
            revoked_at=k.revoked_at,
        )


@strawberry.type(description="A key just made.")
class CreatedApiKey:
    api_key: ApiKey = strawberry.field(description="The key.")
    secret: str = strawberry.field(description="The whole key, shown once.")


@strawberry.input(description="A new API key.")
class CreateApiKeyInput:
    name: str | None = strawberry.field(default=None, description="What it is for.")
    scopes: list[str] = strawberry.field(description="Any of read, write, admin.")
    expires_at: datetime | None = strawberry.field(default=None, description="Refused from then on.")


@strawberry.type(description="An action that failed for good (docs/jobs.md, dead letters).")
class DeadLetter:
    id: strawberry.ID = strawberry.field(description="For replayDeadLetter.")
    kind: str = strawberry.field(description="gave_up, invalid_envelope, domain_error, internal")
    action_type: str | None = strawberry.field(description="The envelope's action type.")
    action_id: str | None = strawberry.field(description="The envelope's action_id.")
    correlation_id: str | None = strawberry.field(description="The envelope's correlation_id.")
    error: JSON | None = strawberry.field(description="The error answered: {code, message}.")
    failed_at: datetime = strawberry.field(description="When it failed.")
    envelope: JSON | None = strawberry.field(description="The envelope as it was received (JSON).")
    replayed_at: datetime | None = strawberry.field(description="The last replay, if any.")

    @classmethod
    def of(cls, d: admin.DeadLetter) -> DeadLetter:
        return cls(
            id=strawberry.ID(str(d.id)),
            kind=d.kind,
            action_type=d.action_type,
            action_id=d.action_id,
            correlation_id=d.correlation_id,
            error=d.error,
            failed_at=d.failed_at,
            envelope=d.envelope,
            replayed_at=d.replayed_at,
        )


@strawberry.type(description="A dead letter in a connection.")
class DeadLetterEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this edge.")
    node: DeadLetter = strawberry.field(description="The dead letter.")


@strawberry.type(description="A page of dead letters, newest first.")
class DeadLetterConnection:
    edges: list[DeadLetterEdge] = strawberry.field(description="The page.")
    page_info: PageInfo = strawberry.field(description="Paging information.")

    @classmethod
    def from_page(cls, page: models.Page[admin.DeadLetter]) -> DeadLetterConnection:
        edges = [DeadLetterEdge(cursor=c, node=DeadLetter.of(d)) for d, c in zip(page.items, page.cursors, strict=True)]
        return cls(edges=edges, page_info=page_info(page))


@strawberry.type(description="One delivery of a conversation to the CRM.")
class CrmDelivery:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation delivered.")
    sync: CrmSync = strawberry.field(description="Its state.")

    @strawberry.field(description="The conversation; null once it was deleted.")
    async def conversation(self, info: Ctx) -> Conversation | None:
        tenant = info.context.tenant()
        target = conversations.ref(self.conversation_id, None, info.context.resources.limits)
        async with info.context.resources.db.read() as conn:
            found = await conversations.find(conn, tenant, target, cache=info.context.resources.cache)
        return cast(Conversation | None, found)

    @classmethod
    def of(cls, record: CrmSyncRecord) -> CrmDelivery:
        return cls(conversation_id=strawberry.ID(str(record.conversation_id)), sync=cast(CrmSync, record))


@strawberry.type(description="A CRM delivery in a connection.")
class CrmDeliveryEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this edge.")
    node: CrmDelivery = strawberry.field(description="The delivery.")


@strawberry.type(description="A page of CRM deliveries, newest first.")
class CrmDeliveryConnection:
    edges: list[CrmDeliveryEdge] = strawberry.field(description="The page.")
    page_info: PageInfo = strawberry.field(description="Paging information.")

    @classmethod
    def from_page(cls, page: models.Page[CrmSyncRecord]) -> CrmDeliveryConnection:
        edges = [
            CrmDeliveryEdge(cursor=c, node=CrmDelivery.of(r)) for r, c in zip(page.items, page.cursors, strict=True)
        ]
        return cls(edges=edges, page_info=page_info(page))


@strawberry.type(description="One admin change or deletion.")
class AuditEntry:
    id: strawberry.ID = strawberry.field(description="The entry.")
    at: datetime = strawberry.field(description="When.")
    actor: str = strawberry.field(description="The API key id (or 'cli', 'trusted', 'system') that acted.")
    action: str = strawberry.field(
        description="e.g. updateTenantSettings, createApiKey, revokeApiKey, deleteConversation, eraseEndUser, "
        "replayDeadLetter"
    )
    details: JSON | None = strawberry.field(
        description="What changed: names and counts, never message content or secrets."
    )

    @classmethod
    def of(cls, e: audit.AuditEntry) -> AuditEntry:
        return cls(
            id=strawberry.ID(str(e.id)), at=e.at, actor=e.actor, action=e.action, details=cast(JSON | None, e.details)
        )


@strawberry.type(description="An audit entry in a connection.")
class AuditEntryEdge:
    cursor: str = strawberry.field(description="Opaque cursor of this edge.")
    node: AuditEntry = strawberry.field(description="The entry.")


@strawberry.type(description="A page of the audit log, newest first.")
class AuditEntryConnection:
    edges: list[AuditEntryEdge] = strawberry.field(description="The page.")
    page_info: PageInfo = strawberry.field(description="Paging information.")

    @classmethod
    def from_page(cls, page: models.Page[audit.AuditEntry]) -> AuditEntryConnection:
        edges = [AuditEntryEdge(cursor=c, node=AuditEntry.of(e)) for e, c in zip(page.items, page.cursors, strict=True)]
        return cls(edges=edges, page_info=page_info(page))
