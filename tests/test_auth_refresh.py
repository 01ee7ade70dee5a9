"""The WebSocket re-check reads every live key in one statement (Authenticator.refresh), and
what it reads is what `authenticate` then decides on: a key revoked in the database is refused,
the others still pass, with no further round trip."""

from __future__ import annotations

from typing import Any

import pytest

from app.auth import Authenticator
from app.errors import Unauthenticated
from app.services import tenants
from app.settings import AuthMode
from db.session import STATEMENTS, Database


async def test_one_statement_refreshes_every_live_key(db: Database, tenant: str) -> None:
    async def setup(uow: Any) -> list[tuple[tenants.ApiKey, str]]:
        await tenants.ensure_tenant(uow, tenant)
        return [await tenants.create_api_key(uow, tenant, [tenants.Scope.READ]) for _ in range(6)]

    keys = await db.run(setup)
    secrets = [secret for _, secret in keys] + ["cs_not-a-key", "garbage"]
    auth = Authenticator(db, AuthMode.API_KEY)

    before = STATEMENTS.count
    await auth.refresh(secrets)
    assert STATEMENTS.count - before == 1

    revoked = keys[2][0]
    await db.run(lambda uow: tenants.revoke_api_key(uow, revoked.id))
    await auth.refresh(secrets)  # what a re-check does every WS_AUTH_RECHECK_S

    before = STATEMENTS.count
    for key, secret in keys:
        headers = {"authorization": f"Bearer {secret}"}
        if key.id == revoked.id:
            with pytest.raises(Unauthenticated, match="revoked"):
                await auth.authenticate(headers)
        else:
            principal = await auth.authenticate(headers)
            assert (principal.tenant_id, principal.key_id) == (tenant, str(key.id))
    for unknown in ("cs_not-a-key", "garbage"):
        with pytest.raises(Unauthenticated):
            await auth.authenticate({"authorization": f"Bearer {unknown}"})
    assert STATEMENTS.count - before == 0  # every answer came from the refreshed reads
