"""CRM: the conversation's last delivery (CrmSync) and syncCrm. The customer profile is a
Conversation field (conversations.py); deliveries and secrets are admin (admin.py)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import strawberry

from app.api import write_only
from app.api.domains.common import Ctx
from app.api.domains.enums import CrmSyncStatus
from app.services import conversations, crm
from app.services.tenants import Scope


@strawberry.type(description="The conversation's last CRM delivery.")
class CrmSync:
    status: CrmSyncStatus = strawberry.field(description="Pending, delivered or failed for good.")
    attempts: int = strawberry.field(description="Deliveries tried.")
    last_error: str | None = strawberry.field(description="Why the last attempt failed.")
    delivered_at: datetime | None = strawberry.field(description="When the CRM accepted it.")
    updated_at: datetime = strawberry.field(description="Last change.")


@strawberry.type
class CrmMutation:
    @strawberry.mutation(description="Queue a CRM delivery of this conversation now.")
    async def sync_crm(self, info: Ctx, conversation_id: strawberry.ID) -> CrmSync:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, write_only.CRM_SYNC)
        resources = info.context.resources
        cid = conversations.parse_uuid(conversation_id, "conversationId")
        record = await resources.db.run(lambda uow: crm.request_sync(uow, tenant, cid, resources.crm))
        return cast(CrmSync, record)
