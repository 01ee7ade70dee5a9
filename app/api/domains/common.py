"""What every domain's resolvers share: the resolver context type and Relay page information."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.types import Info

from app import models
from app.api.context import RequestContext

Ctx = Info[RequestContext, None]


@strawberry.type(description="Relay page information.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More items after endCursor.")
    has_previous_page: bool = strawberry.field(description="More items before startCursor.")
    start_cursor: str | None = strawberry.field(description="Cursor of the first edge.")
    end_cursor: str | None = strawberry.field(description="Cursor of the last edge.")


def page_info(page: models.Page[Any]) -> PageInfo:
    return PageInfo(
        has_next_page=page.has_next_page,
        has_previous_page=page.has_previous_page,
        start_cursor=page.start_cursor,
        end_cursor=page.end_cursor,
    )
