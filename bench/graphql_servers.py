"""Servers for bench/graphql_bench.py, one per process: `ours` (the real app) and `bare`
(Starlette + asyncpg doing the same database work with no GraphQL and no service layer)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import tokens
from db.repositories.messages import APPEND_BY_SESSION
from db.repositories.records import MESSAGE_COLUMNS
from db.session import create_pool

LAST_50 = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY seq DESC LIMIT $3"
)


def bare_app(database_url: str) -> Starlette:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tokens.warm_up()
        state["pool"] = await create_pool(database_url, min_size=4, max_size=20)
        yield
        await state["pool"].close()

    def row_json(row: Any) -> dict[str, Any]:
        out = dict(row)
        out["id"], out["conversation_id"] = str(out["id"]), str(out["conversation_id"])
        out["created_at"] = out["created_at"].isoformat()
        return out

    async def add(request: Request) -> Response:
        body = orjson.loads(await request.body())
        count = tokens.count_message(body["content"])
        async with state["pool"].acquire() as conn:
            row = await conn.fetchrow(
                APPEND_BY_SESSION,
                body["tenant"],
                body["sessionId"],
                None,
                uuid.uuid4(),
                body["role"],
                body["content"],
                None,
                count,
                None,
                None,
                {},
                None,
                None,
                None,
            )
        return Response(
            orjson.dumps({"message": {"seq": row["seq"], "id": str(row["id"])}}), media_type="application/json"
        )

    async def last(request: Request) -> Response:
        body = orjson.loads(await request.body())
        async with state["pool"].acquire() as conn:
            rows = await conn.fetch(LAST_50, body["tenant"], uuid.UUID(body["conversationId"]), body["last"])
        return Response(
            orjson.dumps({"messages": [row_json(r) for r in reversed(rows)]}), media_type="application/json"
        )

    return Starlette(
        routes=[Route("/add", add, methods=["POST"]), Route("/last", last, methods=["POST"])], lifespan=lifespan
    )


def main() -> None:
    kind, port, database_url, redis_url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if kind == "bare":
        app = bare_app(database_url)
    else:
        from app.main import create_app
        from app.settings import Settings

        app = create_app(Settings(_env_file=None, log_level="WARNING"), database_url=database_url, redis_url=redis_url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
