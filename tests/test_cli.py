"""The CLI against a real database, as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

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


def _bare_cli(data_dir: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no DATABASE_URL / REDIS_URL: only DATA_DIR says where the servers are."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATA_DIR=data_dir, **extra)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_api_key_list_shows_names_and_unknown_tenants_are_errors(servers: Servers) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    assert cli(servers, "tenant", "create", tenant).returncode == 0
    assert cli(servers, "api-key", "create", "--tenant", tenant, "--name", "billing sync").returncode == 0
    listed = cli(servers, "api-key", "list", "--tenant", tenant)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()
    assert "name" in header.split() and "billing sync" in row

    for args in (
        ("api-key", "list", "--tenant", "nosuch-tenant"),
        ("export", "--tenant", "nosuch-tenant"),
        ("export", "--tenant", tenant, "--tenant", "nosuch-tenant"),
        ("api-key", "create", "--tenant", "nosuch-tenant"),
    ):
        result = cli(servers, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "nosuch-tenant" in result.stderr and "NOT_FOUND" in result.stderr
        assert result.stdout == ""


def test_admin_commands_never_create_a_database_under_an_empty_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "typo"
    for args in (
        ("tenant", "create", "acme"),
        ("api-key", "list", "--tenant", "acme"),
        ("api-key", "create", "--tenant", "acme"),
        ("export",),
        ("import", "-"),
        ("dead-letters",),
    ):
        result = _bare_cli(str(data_dir), *args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("error: no DATABASE_URL set and no service data under DATA_DIR"), result.stderr
        assert str(data_dir) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (data_dir / "postgres").exists()


def _head() -> str:
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def test_migrate_creates_the_embedded_database_with_one_log_line(tmp_path: Path) -> None:
    # `migrate` (like `run`) may create the database; alembic's page of INFO lines becomes one.
    data_dir = tmp_path / "fresh"
    result = _bare_cli(str(data_dir), "migrate", LOG_LEVEL="INFO")
    assert result.returncode == 0, result.stderr
    assert (data_dir / "postgres" / "PG_VERSION").is_file()
    logs = [json.loads(line) for line in result.stderr.splitlines()]
    assert not [e for e in logs if e["logger"].startswith("alembic")], result.stderr
    migrated = [e["msg"] for e in logs if e["msg"].startswith("database migrated: ")]
    assert len(migrated) == 1 and migrated[0].endswith("revisions applied, now at " + _head()), migrated
    # Now a database exists there: admin commands use it (started for the command, then stopped).
    assert _bare_cli(str(data_dir), "tenant", "create", "acme").returncode == 0
    listed = _bare_cli(str(data_dir), "api-key", "list", "--tenant", "acme")
    assert listed.returncode == 0, listed.stderr
