"""revokeApiKey through the admin API on one API process closes the key's live WebSockets on
another (pub/sub, not the periodic re-check) and refuses it there at once."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import websockets

from db.session import Database
from tests.api.conftest import make_caller
from tests.conftest import Servers
from tests.subscriptions.conftest import serve, settings_for


async def test_revoking_through_the_admin_api_closes_live_sockets_elsewhere(
    servers: Servers, db: Database, tenant: str
) -> None:
    slow_recheck = settings_for(servers, ws_auth_recheck_s=120)  # only the signal can be in time
    async for a in serve(slow_recheck):
        async for b in serve(slow_recheck):
            async with httpx.AsyncClient(base_url=a.url) as http_a, httpx.AsyncClient(base_url=b.url) as http_b:
                admin = await make_caller(db, http_a, tenant, "read,write,admin")
                made = await admin.data(
                    'mutation { createApiKey(input: {scopes: ["read"], name: "dash"}) { secret apiKey { id } } }'
                )
                secret, key_id = made["createApiKey"]["secret"], made["createApiKey"]["apiKey"]["id"]
                init = json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {secret}"}})
                ws_url = b.url.replace("http", "ws") + "/graphql"
                async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
                    await ws.send(init)
                    assert json.loads(await ws.recv())["type"] == "connection_ack"
                    started = time.monotonic()
                    await admin.data("mutation($id: ID!) { revokeApiKey(id: $id) { id } }", {"id": key_id})
                    try:
                        async with asyncio.timeout(5):
                            while True:
                                await ws.recv()
                    except websockets.ConnectionClosed as closed:
                        assert closed.rcvd is not None and closed.rcvd.code == 4403
                    assert time.monotonic() - started < 3
                r = await http_b.post(
                    "/graphql", json={"query": "{ __typename }"}, headers={"Authorization": f"Bearer {secret}"}
                )
                assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
