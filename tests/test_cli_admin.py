"""The admin CLI against a real database, as an operator runs it: every change audited as 'cli'."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from tests.conftest import Servers
from tests.test_cli import cli


def test_settings_secret_keys_and_audit_from_the_cli(servers: Servers) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    assert cli(servers, "tenant", "create", tenant).returncode == 0
    changed = cli(
        servers, "tenant", "settings", "set", tenant, "--crm-webhook-url", "https://crm.example.com/h",
        "--retention-days", "30", "--cors-origins", "https://a.example,https://b.example",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    shown = cli(servers, "tenant", "settings", "show", tenant).stdout
    assert "https://crm.example.com/h" in shown and "https://a.example,https://b.example" in shown
    assert any(line.split() == ["retention_days", "30"] for line in shown.splitlines())

    bad = cli(servers, "tenant", "settings", "set", tenant, "--retention-days", "-3", "--name", "changed?")
    assert bad.returncode == 1 and "BAD_USER_INPUT" in bad.stderr
    assert cli(servers, "tenant", "settings", "show", tenant).stdout == shown  # nothing changed
    assert any(line.split() == ["search_language", "simple"] for line in shown.splitlines())
    klingon = cli(servers, "tenant", "settings", "set", tenant, "--search-language", "klingon")
    assert klingon.returncode == 1 and "searchLanguage must be one of" in klingon.stderr
    spanish = cli(servers, "tenant", "settings", "set", tenant, "--search-language", "spanish")
    assert spanish.returncode == 0 and any(
        x.split() == ["search_language", "spanish"] for x in spanish.stdout.splitlines()
    )

    rotated = cli(servers, "tenant", "rotate-secret", tenant, "--overlap-seconds", "60")
    assert rotated.returncode == 0 and rotated.stdout.strip().splitlines()[-1].startswith("whsec_")
    assert "no previous secret" in rotated.stdout  # the first one

    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    made = cli(servers, "api-key", "create", "--tenant", tenant, "--scopes", "read", "--expires", expires)
    assert made.returncode == 0, made.stderr
    listed = cli(servers, "api-key", "list", "--tenant", tenant).stdout.splitlines()
    assert "expires" in listed[0] and "last used" in listed[0] and expires[:10] in listed[1]
    naive = cli(servers, "api-key", "create", "--tenant", tenant, "--expires", "2030-01-01T00:00:00")
    assert naive.returncode == 2 and "time zone" in naive.stderr
    key_id = listed[1].split()[0]
    assert cli(servers, "api-key", "revoke", key_id).returncode == 0

    assert cli(servers, "dead-letters", "--tenant", tenant).stdout == ""
    unknown = cli(servers, "dead-letter-replay", "--tenant", tenant, str(uuid.uuid4()))
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    assert cli(servers, "crm", "deliveries", "--tenant", tenant).stdout.splitlines()[1:] == []
    missing = cli(servers, "crm", "redeliver", "--tenant", tenant, str(uuid.uuid4()))
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr

    entries = [json.loads(line) for line in cli(servers, "audit", "list", "--tenant", tenant).stdout.splitlines()]
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("cli", "revokeApiKey"),
        ("cli", "createApiKey"),
        ("cli", "rotateCrmSecret"),
        ("cli", "updateTenantSettings"),  # --search-language spanish
        ("cli", "updateTenantSettings"),
        ("cli", "createTenant"),
    ]
    assert "whsec_" not in json.dumps(entries)
    nosuch = cli(servers, "audit", "list", "--tenant", "nosuch-tenant")
    assert nosuch.returncode == 1 and "does not exist" in nosuch.stderr
