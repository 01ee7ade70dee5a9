"""Export → import into another tenant reproduces the conversations exactly; importing twice adds
nothing; the CLI commands with their progress output."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.errors import BadUserInput, IdempotencyKeyReused
from app.models import ConversationRef, Role, Source
from app.services import conversations, state, transfer
from db.session import Database
from tests.conftest import Servers
from tests.factories import add_message, count_rows, create_conversation


async def _seed(db: Database, tenant: str) -> None:
    rich = await create_conversation(
        db, tenant, session_id="rich", user_id="u1", agent_id="a1", channel="web", title="T", tags=["x", "y"],
        metadata={"plan": "pro", "nested": {"a": [1, 2]}},
    )  # fmt: skip
    await add_message(db, tenant, rich, role=Role.SYSTEM, content="You help.")
    await add_message(
        db, tenant, rich, content="¿Dónde está mi pedido?", metadata={"lang": "es"}, client_message_id="c-1"
    )
    await add_message(
        db,
        tenant,
        rich,
        role=Role.ASSISTANT,
        content="",
        tool_calls=[{"id": "call1", "type": "function", "function": {"name": "track", "arguments": '{"o":1}'}}],
        execution={"model": "gpt-4o", "latency_ms": 120, "prompt_tokens": 50},
    )
    await add_message(
        db, tenant, rich, role=Role.TOOL, content='{"status":"shipped"}', tool_call_id="call1", name="track"
    )
    await add_message(
        db,
        tenant,
        rich,
        role=Role.ASSISTANT,
        content="Enviado.",
        sources=[Source(document_id="d1", chunk_id="c", title="Policy", uri="https://x", score=0.9, snippet="s")],
    )
    await db.run(lambda uow: state.set_(uow, tenant, rich.id, "summary", {"text": "s", "upToSeq": 1}))
    await db.run(lambda uow: state.set_(uow, tenant, rich.id, "summary", {"text": "s2", "upToSeq": 2}))
    closed = await create_conversation(db, tenant, session_id="closed")
    await add_message(db, tenant, closed, content="bye")
    await db.run(lambda uow: conversations.close(uow, tenant, ConversationRef(id=closed.id), "done"))
    await create_conversation(db, tenant, session_id="empty")


async def _export(db: Database, tenant: str) -> list[dict[str, Any]]:
    tenants = await transfer.export_tenants(db, [tenant])
    return [line async for line in transfer.export_conversations(db, tenants, transfer.export_filter(None, None))]


def _without_tenant(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        copy = json.loads(json.dumps(line))
        copy.pop("tenant_id")
        copy["conversation"].pop("tenant_id")
        out.append(copy)
    return out


async def _import(db: Database, tenant: str, lines: list[dict[str, Any]]) -> transfer.ImportReport:
    report = transfer.ImportReport()
    for raw in lines:
        line = transfer.parse_line(json.loads(json.dumps(raw)))
        report.add(await db.run(functools.partial(transfer.import_conversation, tenant_id=tenant, line=line)))
    return report


async def test_export_then_import_into_another_tenant_reproduces_the_conversations(
    db: Database, tenant: str, other_tenant: str
) -> None:
    await _seed(db, tenant)
    exported = await _export(db, tenant)
    assert [line["conversation"]["session_id"] for line in exported] == ["rich", "closed", "empty"]
    assert [m["seq"] for m in exported[0]["messages"]] == [1, 2, 3, 4, 5]
    assert exported[0]["messages"][4]["sources"][0]["snippet"] == "s" and exported[0]["state"][0]["version"] == 2

    report = await _import(db, other_tenant, exported)
    assert (report.conversations_created, report.messages_added, report.state_added) == (3, 6, 1)
    imported = await _export(db, other_tenant)
    assert _without_tenant(imported) == _without_tenant(exported)

    again = await _import(db, other_tenant, exported)
    assert (again.conversations_created, again.messages_added, again.messages_skipped, again.state_added) == (
        0,
        0,
        6,
        0,
    )
    assert _without_tenant(await _export(db, other_tenant)) == _without_tenant(exported)
    assert await count_rows(db, "messages", other_tenant) == 6

    # The imported conversation is a working one: appends continue its seqs.
    appended = await add_message(db, other_tenant, session_id="rich", content="and now?")
    assert appended.message.seq == 6


async def test_import_adds_only_missing_messages_after_the_last_seq(
    db: Database, tenant: str, other_tenant: str
) -> None:
    source = await create_conversation(db, tenant, session_id="s")
    for i in range(3):
        await add_message(db, tenant, source, content=f"m{i}", client_message_id=f"k{i}")
    line = (await _export(db, tenant))[0]
    target = await create_conversation(db, other_tenant, session_id="s")
    await add_message(db, other_tenant, target, content="local first")
    await add_message(db, other_tenant, target, content="m1", client_message_id="k1")
    report = await _import(db, other_tenant, [line])
    assert (report.conversations_created, report.messages_added, report.messages_skipped) == (0, 2, 1)
    async with db.read() as conn:
        target_now = await conversations.get(conn, other_tenant, ConversationRef(session_id="s"))
    assert target_now.last_seq == 4 and target_now.message_count == 4


async def test_legacy_lines_need_only_a_session_roles_and_contents(db: Database, tenant: str) -> None:
    legacy = {
        "tenant_id": tenant,
        "conversation": {"session_id": "legacy-1", "status": "CLOSED", "created_at": "2025-01-02T03:04:05"},
        "messages": [
            {"role": "USER", "content": "hola", "client_message_id": "old-1", "created_at": "2025-01-02T03:04:06"},
            {
                "role": "assistant",
                "content": "¡hola!",
                "client_message_id": "old-2",
                "created_at": "2025-01-02T03:04:01",
            },
        ],
    }
    first = await _import(db, tenant, [legacy])
    second = await _import(db, tenant, [legacy])
    assert (first.messages_added, second.messages_added, second.messages_skipped) == (2, 0, 2)
    (line,) = await _export(db, tenant)
    assert line["conversation"]["status"] == "closed" and line["conversation"]["created_at"].startswith(
        "2025-01-02T03:04:05"
    )
    times = [m["created_at"] for m in line["messages"]]
    assert times[0] == times[1]  # never earlier than the message before it
    assert all(m["token_count"] > 3 for m in line["messages"])


def test_bad_lines_are_refused_with_where() -> None:
    with pytest.raises(BadUserInput, match=r"messages\.0\.role"):
        transfer.parse_line({"conversation": {"session_id": "s"}, "messages": [{"role": "robot", "content": "x"}]})
    with pytest.raises(BadUserInput, match="session_id"):
        transfer.parse_line({"conversation": {}})
    with pytest.raises(BadUserInput, match="format"):
        transfer.parse_line({"format": "something-else", "conversation": {"session_id": "s"}})


def _cli(servers: Servers, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": servers.database_url, "REDIS_URL": servers.redis_url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_cli_export_and_import_with_progress(
    servers: Servers, db: Database, tenant: str, other_tenant: str, tmp_path: Path
) -> None:
    await _seed(db, tenant)
    out = tmp_path / "export.jsonl"
    exported = _cli(servers, "export", "--tenant", tenant, "--output", str(out), "--progress")
    assert exported.returncode == 0, exported.stderr
    assert "exported 3 conversations, 6 messages from 1 tenants" in exported.stderr
    assert "[##############################] 100.0% 3/3 conversations" in exported.stderr
    assert len(out.read_text().splitlines()) == 3 and not (tmp_path / "export.jsonl.partial").exists()

    first = _cli(servers, "import", str(out), "--tenant", other_tenant, "--progress")
    assert first.returncode == 0, first.stderr
    assert "imported 3 conversations (3 new) into 1 tenants: 6 messages added, 0 already there" in first.stderr
    second = _cli(servers, "import", str(out), "--tenant", other_tenant)
    assert second.returncode == 0, second.stderr
    assert "(0 new)" in second.stderr and "0 messages added, 6 already there" in second.stderr
    assert await count_rows(db, "messages", other_tenant) == 6

    later = _cli(servers, "export", "--tenant", tenant, "--from", "2999-01-01")
    assert later.returncode == 0 and later.stdout == "" and "exported 0 conversations" in later.stderr
    to_stdout = _cli(servers, "export", "--tenant", other_tenant)
    assert [json.loads(x)["conversation"]["session_id"] for x in to_stdout.stdout.splitlines()] == [
        "rich",
        "closed",
        "empty",
    ]

    broken = tmp_path / "broken.jsonl"
    broken.write_text(out.read_text().splitlines()[0] + "\n{not json\n")
    failed = _cli(servers, "import", str(broken), "--tenant", f"x-{uuid.uuid4().hex[:8]}")
    assert failed.returncode == 1 and "error on line 2" in failed.stderr and "imported 1 conversations" in failed.stderr


async def test_import_with_a_client_message_id_bound_to_another_message_writes_nothing(
    db: Database, tenant: str, other_tenant: str
) -> None:
    source = await create_conversation(db, tenant, session_id="s")
    await add_message(db, tenant, source, content="theirs", client_message_id="k1")
    await add_message(db, tenant, source, content="new", client_message_id="k2")
    line = (await _export(db, tenant))[0]
    target = await create_conversation(db, other_tenant, session_id="s")
    await add_message(db, other_tenant, target, content="ours", client_message_id="k1")
    with pytest.raises(IdempotencyKeyReused) as err:
        await _import(db, other_tenant, [line])
    assert err.value.details["fields"] == ["content"]
    assert await count_rows(db, "messages", other_tenant) == 1
