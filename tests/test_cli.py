"""The CLI against a real database, as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.conftest import Servers


def cli(servers: Servers, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": servers.database_url, "REDIS_URL": servers.redis_url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_tenant_and_api_key_lifecycle(servers: Servers) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    first = cli(servers, "tenant", "create", tenant, "--name", "CLI test")
    assert first.returncode == 0 and "created" in first.stdout
    again = cli(servers, "tenant", "create", tenant)
    assert again.returncode == 0 and "already exists" in again.stdout

    made = cli(servers, "api-key", "create", "--tenant", tenant, "--scopes", "read,write", "--name", "svc")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("csk_") and len(secret) > 30

    listed = cli(servers, "api-key", "list", "--tenant", tenant)
    assert listed.returncode == 0
    rows = listed.stdout.strip().splitlines()[1:]
    assert len(rows) == 1 and secret[:10] in rows[0] and "read,write" in rows[0] and rows[0].endswith("-")
    assert secret not in listed.stdout  # only the prefix is ever shown again
    key_id = rows[0].split()[0]

    revoked = cli(servers, "api-key", "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    listed = cli(servers, "api-key", "list", "--tenant", tenant)
    assert not listed.stdout.strip().splitlines()[1].endswith("-")


def test_cli_errors_are_clear(servers: Servers) -> None:
    missing = cli(servers, "api-key", "create", "--tenant", f"nope-{uuid.uuid4().hex[:6]}")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    bad_scope = cli(servers, "api-key", "create", "--tenant", "x", "--scopes", "root")
    assert bad_scope.returncode == 1 and "BAD_USER_INPUT" in bad_scope.stderr
    bad_id = cli(servers, "api-key", "revoke", "not-a-uuid")
    assert bad_id.returncode == 2
    bad_tenant = cli(servers, "tenant", "create", "has space")
    assert bad_tenant.returncode == 1 and "BAD_USER_INPUT" in bad_tenant.stderr
