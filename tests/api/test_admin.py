"""The admin API over HTTP with real keys: scope, validation, isolation, audit, keys."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    build_schema,
    get_named_type,
)

from app.api.export import sdl
from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.api.test_schema_contract import ADMIN_CONTRACT

SETTINGS = """{ tenantSettings { tenantId name crmWebhookUrl crmSecretSet crmMaxAttempts retentionDays
  idleTimeoutSeconds corsOrigins updatedAt } }"""
UPDATE = """mutation($input: UpdateTenantSettingsInput!) { updateTenantSettings(input: $input) {
  name crmWebhookUrl crmMaxAttempts retentionDays idleTimeoutSeconds corsOrigins } }"""
AUDIT = "{ auditLog(first: 50) { edges { node { actor action details } } } }"
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
  secret apiKey { id name prefix scopes createdAt lastUsedAt expiresAt revokedAt } } }"""
KEYS = "query($all: Boolean) { apiKeys(includeRevoked: $all) { id name prefix scopes lastUsedAt expiresAt revokedAt } }"


def _admin_fields() -> list[tuple[str, GraphQLField]]:
    """Every root field the schema documents as needing the admin scope."""
    schema = build_schema(sdl())
    found = []
    for root in (schema.query_type, schema.mutation_type):
        assert root is not None
        for name, field in root.fields.items():
            if field.description and "Scope admin." in field.description:
                found.append((("mutation " if root is schema.mutation_type else "") + name, field))
    return found


def _literal(type_: GraphQLInputType) -> str:
    """A syntactically valid value of a required input type (what it says does not matter: the
    scope is checked before any of it is used)."""
    if isinstance(type_, GraphQLNonNull):
        return _literal(type_.of_type)
    if isinstance(type_, GraphQLList):
        return "[]"
    if isinstance(type_, GraphQLInputObjectType):
        required = [f"{n}: {_literal(f.type)}" for n, f in type_.fields.items() if isinstance(f.type, GraphQLNonNull)]
        return "{" + ", ".join(required) + "}"
    if isinstance(type_, GraphQLEnumType):
        return str(next(iter(type_.values)))
    assert isinstance(type_, GraphQLScalarType)
    return {"Int": "1", "Float": "1.0", "Boolean": "true"}.get(type_.name, '"00000000-0000-0000-0000-000000000000"')


def _document(qualified: str, field: GraphQLField) -> str:
    kind, _, name = qualified.rpartition(" ")
    args = [f"{n}: {_literal(a.type)}" for n, a in field.args.items() if isinstance(a.type, GraphQLNonNull)]
    selection = " { __typename }" if isinstance(get_named_type(field.type), GraphQLObjectType) else ""
    return f"{kind} {{ {name}{'(' + ', '.join(args) + ')' if args else ''}{selection} }}"


async def _admin(db: Database, http: httpx.AsyncClient, tenant: str) -> Caller:
    return await make_caller(db, http, tenant, "read,write,admin")


async def _audit(caller: Caller) -> list[dict[str, Any]]:
    data = await caller.data(AUDIT)
    return [e["node"] for e in data["auditLog"]["edges"]]


async def test_every_admin_operation_is_forbidden_without_the_admin_scope(
    db: Database, http: httpx.AsyncClient, tenant: str
) -> None:
    fields = _admin_fields()
    names = {q.rpartition(" ")[2] for q, _ in fields}
    # The list comes from the schema; it must cover the contract's admin fields (deleteConversation is scope write).
    contract = Path(ADMIN_CONTRACT).read_text().partition("extend type Query")[2]  # noqa: ASYNC240 - a small file
    contract_fields = set(re.findall(r"^  (\w+)[(:]", contract, re.M)) - {"deleteConversation"}
    assert contract_fields <= names, contract_fields - names
    admin = await _admin(db, http, tenant)
    for scopes in ("read,write", "read", "write"):
        caller = await make_caller(db, http, tenant, scopes)
        for qualified, field in fields:
            body = await caller.gql(_document(qualified, field))
            codes = [e["extensions"]["code"] for e in body.get("errors", [])]
            assert codes == ["FORBIDDEN"], (scopes, qualified, body)
    assert await _audit(admin) == []  # nothing was changed by any of them


async def test_settings_change_only_what_is_given_and_are_audited(
    db: Database, http: httpx.AsyncClient, tenant: str
) -> None:
    admin = await _admin(db, http, tenant)
    before = (await admin.data(SETTINGS))["tenantSettings"]
    assert before["crmWebhookUrl"] is None and before["crmSecretSet"] is False
    assert before["crmMaxAttempts"] == 8 and before["idleTimeoutSeconds"] == 86400  # server defaults
    changed = await admin.data(
        UPDATE,
        {
            "input": {
                "crmWebhookUrl": "https://crm.example.com/hook",
                "retentionDays": 30,
                "corsOrigins": ["https://a.example"],
            }
        },
    )
    assert changed["updateTenantSettings"] == {
        "name": None,
        "crmWebhookUrl": "https://crm.example.com/hook",
        "crmMaxAttempts": 8,
        "retentionDays": 30,
        "idleTimeoutSeconds": 86400,
        "corsOrigins": ["https://a.example"],
    }
    only_name = (await admin.data(UPDATE, {"input": {"name": "Acme"}}))["updateTenantSettings"]
    assert only_name["name"] == "Acme" and only_name["retentionDays"] == 30 and only_name["crmWebhookUrl"]
    removed = (await admin.data(UPDATE, {"input": {"crmWebhookUrl": None}}))["updateTenantSettings"]
    assert removed["crmWebhookUrl"] is None and removed["retentionDays"] == 30
    # The services that use them read them (crm config, maintenance): same keys in tenants.settings.
    async with db.read() as conn:
        stored = await conn.fetchval("SELECT settings FROM tenants WHERE tenant_id = $1", tenant)
    assert stored == {"retention_days": 30, "cors_origins": ["https://a.example"]}
    entries = await _audit(admin)
    assert [e["action"] for e in entries] == ["updateTenantSettings"] * 3
    assert entries[-1]["details"] == {"changed": ["corsOrigins", "crmWebhookUrl", "retentionDays"]}
    keys = (await admin.data(KEYS))["apiKeys"]
    assert {e["actor"] for e in entries} == {keys[0]["id"]}


async def test_bad_settings_are_refused_and_change_nothing(db: Database, http: httpx.AsyncClient, tenant: str) -> None:
    admin = await _admin(db, http, tenant)
    await admin.data(UPDATE, {"input": {"crmWebhookUrl": "https://crm.example.com/hook", "retentionDays": 7}})
    before = (await admin.data(SETTINGS))["tenantSettings"]
    audit_before = await _audit(admin)
    for bad in (
        {"crmWebhookUrl": "ftp://crm.example.com/hook"},
        {"crmWebhookUrl": "not a url"},
        {"retentionDays": -1},
        {"retentionDays": 10**6},
        {"crmMaxAttempts": 0},
        {"idleTimeoutSeconds": -5},
        {"corsOrigins": ["https://ok.example", "https://bad.example/"]},
        {"corsOrigins": ["*"]},
        {"corsOrigins": ["https://user@host.example"]},
        {"name": "x" * 201, "retentionDays": 1},
    ):
        code = await admin.error_code(UPDATE, {"input": bad})
        assert code == "BAD_USER_INPUT", bad
    assert (await admin.data(SETTINGS))["tenantSettings"] == before
    assert await _audit(admin) == audit_before
    assert await admin.error_code("mutation { rotateCrmSecret(overlapSeconds: -1) { secret } }") == "BAD_USER_INPUT"


async def test_tenants_see_and_change_only_their_own(
    db: Database, http: httpx.AsyncClient, tenant: str, other_tenant: str
) -> None:
    mine, theirs = await _admin(db, http, tenant), await _admin(db, http, other_tenant)
    await mine.data(UPDATE, {"input": {"retentionDays": 3}})
    my_key = (await mine.data(KEYS))["apiKeys"][0]["id"]
    assert (await theirs.data(SETTINGS))["tenantSettings"]["retentionDays"] == 0
    assert my_key not in {k["id"] for k in (await theirs.data(KEYS))["apiKeys"]}
    assert await _audit(theirs) == []
    assert await theirs.error_code("mutation($id: ID!) { revokeApiKey(id: $id) { id } }", {"id": my_key}) == "NOT_FOUND"
    assert (await mine.data(KEYS))["apiKeys"][0]["revokedAt"] is None
    assert [e["action"] for e in await _audit(mine)] == ["updateTenantSettings"]


async def test_keys_are_created_listed_used_and_revoked(db: Database, http: httpx.AsyncClient, tenant: str) -> None:
    admin = await _admin(db, http, tenant)
    created = (await admin.data(CREATE_KEY, {"input": {"name": "crm", "scopes": ["read"]}}))["createApiKey"]
    key = created["apiKey"]
    assert created["secret"].startswith(key["prefix"]) and key["scopes"] == ["read"] and key["lastUsedAt"] is None
    reader = Caller(http=http, tenant=tenant, key=created["secret"])
    assert await reader.data("{ conversations(first: 1) { edges { cursor } } }")

    async def last_used() -> str | None:
        listed = {k["id"]: k for k in (await admin.data(KEYS))["apiKeys"]}
        value: str | None = listed[key["id"]]["lastUsedAt"]
        return value

    deadline = time.monotonic() + 5
    while await last_used() is None:
        assert time.monotonic() < deadline, "lastUsedAt never set"
        await asyncio.sleep(0.05)
    first_use = await last_used()
    await asyncio.sleep(2.2)  # past the key cache: the next use reads the key again, but writes nothing
    await reader.data("{ conversations(first: 1) { edges { cursor } } }")
    await asyncio.sleep(0.2)
    assert await last_used() == first_use  # at most one write a minute

    bad_keys: list[dict[str, Any]] = [
        {"scopes": ["superuser"]},
        {"scopes": []},
        {"scopes": ["read"], "expiresAt": "2001-01-01T00:00:00Z"},
    ]
    for bad in bad_keys:
        assert await admin.error_code(CREATE_KEY, {"input": bad}) == "BAD_USER_INPUT", bad

    revoked = await admin.data("mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }", {"id": key["id"]})
    assert revoked["revokeApiKey"]["revokedAt"]
    assert await reader.error_code("{ conversations(first: 1) { edges { cursor } } }") == "UNAUTHENTICATED"
    assert key["id"] not in {k["id"] for k in (await admin.data(KEYS))["apiKeys"]}
    assert key["id"] in {k["id"] for k in (await admin.data(KEYS, {"all": True}))["apiKeys"]}
    actions = [(e["action"], e["details"]) for e in await _audit(admin)]
    assert actions[0] == ("revokeApiKey", {"keyId": key["id"], "name": "crm"})
    assert actions[1] == ("createApiKey", {"keyId": key["id"], "name": "crm", "scopes": ["read"], "expiresAt": None})
    assert "secret" not in str(actions) and created["secret"] not in str(actions)


async def test_an_expired_key_is_refused(db: Database, http: httpx.AsyncClient, tenant: str) -> None:
    admin = await _admin(db, http, tenant)
    expires = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    created = await admin.data(CREATE_KEY, {"input": {"scopes": ["read"], "expiresAt": expires}})
    assert created["createApiKey"]["apiKey"]["expiresAt"]
    caller = Caller(http=http, tenant=tenant, key=created["createApiKey"]["secret"])
    assert await caller.data("{ __typename }")
    await asyncio.sleep(1.6)
    body = await caller.gql("{ __typename }")
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "expired" in body["errors"][0]["message"]
