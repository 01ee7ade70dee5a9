"""State: versioned keys of a conversation (StateEntry, setState, deleteState)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import strawberry

from app.api import write_only
from app.api.domains.common import Ctx
from app.api.scalars import JSON
from app.services import conversations, state
from app.services.tenants import Scope


@strawberry.type(description="A versioned key of conversation state.")
class StateEntry:
    key: str = strawberry.field(description="The key.")
    value: JSON = strawberry.field(description="Its JSON value.")
    version: int = strawberry.field(
        description="1 when first created, +1 on every write and delete: never goes back, even across deletes."
    )
    updated_at: datetime = strawberry.field(description="Last write.")


@strawberry.input(description="Write a state key.")
class SetStateInput:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation.")
    key: str = strawberry.field(description="The key.")
    value: JSON = strawberry.field(description="Any JSON value.")
    expected_version: int | None = strawberry.field(
        default=None, description="The version the entry must have now (0: must not exist), or CONFLICT."
    )


@strawberry.type
class StateMutation:
    @strawberry.mutation(description="Write a state key (1 when first created, +1 per write; versions never go back).")
    async def set_state(self, info: Ctx, input: SetStateInput) -> StateEntry:
        tenant = info.context.tenant(Scope.WRITE)
        write_only.require_selection(info, write_only.SET_STATE)
        limits = info.context.resources.limits
        conversation_id = conversations.parse_uuid(input.conversation_id, "conversationId")
        entry = await info.context.resources.db.run(
            lambda uow: state.set_(
                uow,
                tenant,
                conversation_id,
                input.key,
                input.value,
                expected_version=input.expected_version,
                limits=limits,
            )
        )
        return cast(StateEntry, entry)

    @strawberry.mutation(description="Delete a state key; false when it did not exist.")
    async def delete_state(self, info: Ctx, conversation_id: strawberry.ID, key: str) -> bool:
        tenant = info.context.tenant(Scope.WRITE)
        limits = info.context.resources.limits
        cid = conversations.parse_uuid(conversation_id, "conversationId")
        return await info.context.resources.db.run(lambda uow: state.delete(uow, tenant, cid, key, limits))
