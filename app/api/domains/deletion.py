"""deleteConversation and eraseEndUser (contract-admin.graphql): thin resolvers over
app/services/deletion.py, composed into the Mutation root as a base class."""

from __future__ import annotations

import strawberry

from app.api.domains.common import Ctx
from app.services import audit, deletion
from app.services.tenants import Scope


@strawberry.type(description="What a deletion removed. Repeating it removes nothing more and returns zeros.")
class DeletionResult:
    conversations: int = strawberry.field(description="Conversations deleted.")
    messages: int = strawberry.field(description="Messages deleted (their RAG sources with them).")
    state_keys: int = strawberry.field(description="State keys deleted (keys deleted earlier are not counted).")

    @classmethod
    def of(cls, result: deletion.DeletionResult) -> DeletionResult:
        return cls(conversations=result.conversations, messages=result.messages, state_keys=result.state_keys)


def _actor(info: Ctx) -> str:
    principal = info.context.principal
    return audit.actor_of(principal.key_id if principal is not None else None)


@strawberry.type
class DeletionMutation:
    @strawberry.mutation(
        description="Scope write. The conversation, its messages, sources, state, outbox rows and cached copies; "
        "live subscriptions to it complete."
    )
    async def delete_conversation(self, info: Ctx, id: strawberry.ID) -> DeletionResult:
        tenant = info.context.tenant(Scope.WRITE)
        actor = _actor(info)
        result = await info.context.resources.db.run(
            lambda uow: deletion.delete_conversation(uow, tenant, str(id), actor)
        )
        return DeletionResult.of(result)

    @strawberry.mutation(
        description="Scope admin. Every conversation of this end user in this tenant, as deleteConversation does for each."
    )
    async def erase_end_user(self, info: Ctx, user_id: str) -> DeletionResult:
        tenant = info.context.tenant(Scope.ADMIN)
        actor = _actor(info)
        resources = info.context.resources
        result = await resources.db.run(
            lambda uow: deletion.erase_end_user(
                uow, tenant, user_id, actor, redis=resources.redis, limits=resources.limits
            )
        )
        return DeletionResult.of(result)
