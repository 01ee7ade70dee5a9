"""Per-request context: who is calling, the resources, and per-request DataLoaders."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from strawberry.dataloader import DataLoader

from app import models
from app.auth import Authenticator, Principal
from app.errors import DomainError
from app.resources import Resources
from app.services import crm, messages, state, windows
from app.services.context import ContextWindow
from app.services.json_reads import RoundTrip
from app.services.tenants import Scope

if TYPE_CHECKING:
    from app.api.ws_connections import LiveConnection


#: Batches of more ranges than this skip the hot cache (see Loaders._load_ranges).
_CACHED_RANGE_KEYS = 4


class Loaders:
    """Batches the nested fields of one request into a few statements (no N+1)."""

    def __init__(self, resources: Resources, tenant_id: str, *, cache: bool = True) -> None:
        self.resources = resources
        self.tenant_id = tenant_id
        # A WebSocket's context lives as long as the connection: its loaders still batch within
        # an event, but must not remember answers across events (stale state, unbounded memory).
        self.sources: DataLoader[tuple[uuid.UUID, int], list[models.Source]] = DataLoader(
            self._load_sources, cache=cache
        )
        self.states: DataLoader[uuid.UUID, list[models.StateEntry]] = DataLoader(self._load_states, cache=cache)
        self.ranges: DataLoader[tuple[uuid.UUID, int, int], list[models.Message]] = DataLoader(
            self._load_ranges, cache=cache
        )

    async def _load_sources(self, keys: list[tuple[uuid.UUID, int]]) -> list[list[models.Source]]:
        async with self.resources.db.read() as conn:
            found = await messages.sources_for(conn, self.tenant_id, keys)
        return [found[k] for k in keys]

    async def _load_states(self, keys: list[uuid.UUID]) -> list[list[models.StateEntry]]:
        async with self.resources.db.read() as conn:
            found = await state.list_many(conn, self.tenant_id, keys, cache=self.resources.cache)
        return [found[k] for k in keys]

    async def _load_ranges(self, keys: list[tuple[uuid.UUID, int, int]]) -> list[list[models.Message]]:
        # A level of many conversations (a CRM list's last messages) is one Postgres statement;
        # the hot cache's per-conversation script calls cost more than they save there, and
        # most listed conversations are cold. One conversation's page still reads the cache.
        cache = self.resources.cache if len(keys) <= _CACHED_RANGE_KEYS else None
        async with self.resources.db.read() as conn:
            found = await messages.ranges(conn, self.tenant_id, keys, cache=cache)
        return [found[k] for k in keys]

    async def history_page(
        self, conversation: models.Conversation, args: messages.HistoryArgs
    ) -> models.Page[models.Message]:
        """messages.history, its range read batched with the request's other pages."""
        if args.since is None:
            plan = messages.plan_page_at_once(conversation, args, self.resources.limits)
        else:
            async with self.resources.db.read() as conn:
                plan = await messages.plan_page(conn, self.tenant_id, conversation, args, self.resources.limits)
        items = [] if plan.empty else await self.ranges.load((conversation.id, plan.lo, plan.hi))
        return messages.page_of(plan, items)


@dataclass
class RequestContext:
    resources: Resources
    authenticator: Authenticator
    request_id: str
    principal: Principal | None
    auth_error: DomainError | None
    started: float = 0.0
    operation_name: str | None = None
    operation_type: str | None = None
    #: WebSocket connection_init payload (Strawberry sets it; it carries the auth headers).
    connection_params: dict[str, Any] | None = None
    #: A WebSocket connection's context: it outlives any one operation or event.
    long_lived: bool = False
    #: The WebSocket connection this context belongs to (its credentials, caps and close).
    live: LiveConnection | None = None
    _loaders: Loaders | None = field(default=None, repr=False)
    #: A batch's items that run together share it: their pushed-down reads go as one statement.
    round_trip: RoundTrip | None = None

    def tenant(self, scope: Scope = Scope.READ) -> str:
        """The caller's tenant, after checking it may do `scope` (raises UNAUTHENTICATED / FORBIDDEN)."""
        if self.principal is None:
            raise self.auth_error or DomainError("no principal")
        self.principal.require(scope)
        return self.principal.tenant_id

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders(self.resources, self.tenant(), cache=not self.long_lived)
        return self._loaders

    async def context_window(
        self,
        conversation: models.Conversation,
        *,
        max_tokens: int,
        model: str | None,
        reserve_tokens: int | None,
        include_system: bool | None,
        include_summary: bool | None,
    ) -> ContextWindow:
        """The same window as the get_context action: the tenant's customer note included when
        it asks for one; the service decides where it is read from (app/services/windows.py).
        An explicit null argument means its default, as the SDL's nullable arguments allow."""
        resources = self.resources
        async with resources.db.read() as conn:
            window, _ = await windows.context_window(
                conn,
                conversation,
                cache=resources.cache,
                redis=resources.redis,
                http=resources.http,
                max_tokens=max_tokens,
                model=model,
                reserve_tokens=reserve_tokens or 0,
                include_system=include_system is not False,
                include_summary=include_summary is not False,
                default_model=resources.settings.default_model,
                options=resources.crm,
            )
        return window

    async def crm_sync(self, conversation: models.Conversation) -> crm.CrmSyncRecord | None:
        async with self.resources.db.read() as conn:
            return await crm.crm_sync_status(conn, self.tenant(), conversation.id)

    async def customer(self, conversation: models.Conversation) -> Any:
        http = self.resources.http
        if http is None or not conversation.user_id:
            return None
        async with self.resources.db.read() as conn:
            return await crm.customer_profile(
                conn, self.resources.redis, http, self.tenant(), conversation.user_id, self.resources.crm
            )
