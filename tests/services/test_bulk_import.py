"""The batched import (app/services/bulk_import) writes exactly what the line-by-line import writes,
keeps the rollups equal to brute force although it computes them itself, adds nothing on a re-run,
survives two batches racing for the same new conversations, and the CLI still names a refused line."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from app.models import Role
from app.services import bulk_import, transfer
from app.services.transfer import ConversationLine
from db.session import Database
from tests.conftest import Servers
from tests.factories import add_message, count_rows, create_conversation
from tests.services.test_stats_rollups import _assert_rollups_equal_brute_force
from tests.services.test_transfer import _cli, _export, _import, _seed, _without_tenant


def _lines(raw: list[dict[str, Any]]) -> list[ConversationLine]:
    return [transfer.parse_line(json.loads(json.dumps(r))) for r in raw]


def _many(n: int, per: int, prefix: str = "bulk") -> list[dict[str, Any]]:
    return [
        {
            "conversation": {
                "session_id": f"{prefix}-{c}",
                "agent_id": f"a{c % 3}",
                "status": "closed" if c % 2 else "active",
                "created_at": f"2026-03-0{1 + c % 5}T10:00:00+00:00",
                "closed_at": f"2026-03-0{1 + c % 5}T11:30:00+00:00",
            },
            "messages": [
                {
                    "role": "user" if i % 2 == 0 else "assistant",
                    "content": f"message {i} of {c}",
                    "client_message_id": f"{c}-{i}",
                    # Over several days (raised to the previous one where earlier): rollups by day and role.
                    "created_at": f"2026-03-0{1 + (c + i // 2) % 5}T10:{i:02d}:00+00:00",
                    "sources": [{"document_id": f"d{i}", "score": 0.5}] if i % 3 == 0 else [],
                }
                for i in range(per)
            ],
            "state": [{"key": "k", "value": {"c": c}, "version": 2}],
        }
        for c in range(n)
    ]


async def test_batched_import_writes_what_the_line_by_line_import_writes(
    db: Database, tenant: str, other_tenant: str
) -> None:
    await _seed(db, tenant)
    exported = await _export(db, tenant)
    batched = f"b-{uuid.uuid4().hex[:12]}"
    # A conversation half imported before (a run that stopped): the batch adds only its missing messages.
    partial = json.loads(json.dumps(exported[0]))
    partial["messages"] = partial["messages"][:2]
    await _import(db, batched, [partial])

    await _import(db, other_tenant, exported)
    results = await db.run(lambda uow: bulk_import.import_batch(uow, batched, _lines(exported)))

    assert [(r.created, r.messages_added, r.messages_skipped) for r in results] == [
        (False, 3, 2),
        (True, 1, 0),
        (True, 0, 0),
    ]
    assert _without_tenant(await _export(db, batched)) == _without_tenant(await _export(db, other_tenant))
    await _assert_rollups_equal_brute_force(db, batched)

    again = await db.run(lambda uow: bulk_import.import_batch(uow, batched, _lines(exported)))
    assert [(r.created, r.messages_added, r.state_added) for r in again] == [(False, 0, 0)] * 3
    assert await count_rows(db, "messages", batched) == 6
    await _assert_rollups_equal_brute_force(db, batched)


async def test_batches_racing_for_the_same_new_conversations_write_each_once(db: Database, tenant: str) -> None:
    raw = _many(12, 7)
    first, second = _lines(raw[:8]), _lines(raw[4:])  # four conversations in both batches

    results = await asyncio.gather(
        db.run(lambda uow: bulk_import.import_batch(uow, tenant, first)),
        db.run(lambda uow: bulk_import.import_batch(uow, tenant, second)),
    )

    assert sum(r.created for batch in results for r in batch) == 12
    assert sum(r.messages_added for batch in results for r in batch) == 12 * 7
    assert await count_rows(db, "conversations", tenant) == 12
    assert await count_rows(db, "messages", tenant) == 12 * 7
    assert await count_rows(db, "message_sources", tenant) == 12 * 3
    assert await count_rows(db, "conversation_state", tenant) == 12
    await _assert_rollups_equal_brute_force(db, tenant)


async def test_cli_names_the_refused_line_of_a_batch_and_keeps_the_lines_before_it(
    servers: Servers, db: Database, tenant: str, tmp_path: Path
) -> None:
    raw = _many(5, 3, prefix="cli")
    # The target already binds clientMessageId "2-1" of line 3 to another content.
    taken = await create_conversation(db, tenant, session_id="cli-2")
    await add_message(db, tenant, taken, role=Role.USER, content="not that one", client_message_id="2-1")
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))

    failed = _cli(servers, "import", str(path), "--tenant", tenant, "--batch", "5")

    assert failed.returncode == 1, failed.stderr
    assert "error on line 3: clientMessageId '2-1' was already used for a different message" in failed.stderr
    assert "imported 2 conversations (2 new)" in failed.stderr
    assert await count_rows(db, "messages", tenant) == 2 * 3 + 1  # lines 1-2, and line 3 untouched
    await _assert_rollups_equal_brute_force(db, tenant)


async def test_a_batch_checks_its_reused_keys_in_statements_that_do_not_grow_with_its_conversations(
    db: Database, tenant: str
) -> None:
    raw = _many(12, 4, prefix="rerun")
    await db.run(lambda uow: bulk_import.import_batch(uow, tenant, _lines(raw)))

    async def statements(lines: list[ConversationLine]) -> list[str]:
        seen: list[str] = []

        def log(record: Any) -> None:
            seen.append(record.query)

        async def work(uow: Any) -> None:
            uow.conn.add_query_logger(log)
            try:
                results = await bulk_import.import_batch(uow, tenant, lines)
            finally:
                uow.conn.remove_query_logger(log)
            assert [(r.created, r.messages_added, r.messages_skipped) for r in results] == [(False, 0, 4)] * len(lines)

        await db.run(work)
        return seen

    # Every message of a re-run reuses its key and is compared with its original: per batch, not per line.
    assert len(await statements(_lines(raw[:2]))) == len(await statements(_lines(raw)))
    # The comparison still refuses a changed payload, in any conversation of the batch, and writes nothing.
    changed = json.loads(json.dumps(raw))
    changed[7]["messages"][2]["content"] = "another content"
    try:
        await db.run(lambda uow: bulk_import.import_batch(uow, tenant, _lines(changed)))
    except Exception as exc:
        assert "clientMessageId '7-2' was already used for a different message (content differ)" in str(exc)
    else:
        raise AssertionError("a reused clientMessageId with another content was accepted")
    assert await count_rows(db, "messages", tenant) == 12 * 4


async def test_cli_with_concurrent_batches_resumes_a_stopped_run_and_names_a_refused_line(
    servers: Servers, db: Database, tenant: str, tmp_path: Path
) -> None:
    raw = _many(12, 3, prefix="conc")
    # A stopped run: lines 1-4 done, line 5 half; line 9 meets a key bound to another content.
    stopped = json.loads(json.dumps(raw[:5]))
    stopped[4]["messages"] = stopped[4]["messages"][:1]
    await db.run(lambda uow: bulk_import.import_batch(uow, tenant, _lines(stopped)))
    taken = await create_conversation(db, tenant, session_id="conc-8")
    await add_message(db, tenant, taken, role=Role.USER, content="not that one", client_message_id="8-1")
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))

    failed = _cli(servers, "import", str(path), "--tenant", tenant, "--batch", "2", "--jobs", "3")

    assert failed.returncode == 1, failed.stderr
    assert "error on line 9: clientMessageId '8-1' was already used for a different message" in failed.stderr
    async with db.read() as conn:
        per_session = {
            r["session_id"]: r["message_count"]
            for r in await conn.fetch(
                "SELECT session_id, message_count FROM conversations WHERE tenant_id = $1", tenant
            )
        }
    assert [per_session[f"conc-{c}"] for c in range(9)] == [3] * 8 + [1]  # lines 1-8 whole, line 9 untouched
    assert all(per_session.get(f"conc-{c}", 3) in (0, 3) for c in range(9, 12))  # under way: a line whole or not
    await _assert_rollups_equal_brute_force(db, tenant)

    # The fixed file: the run resumes, adds only what is missing, and a second run adds nothing.
    raw[8]["messages"][1]["client_message_id"] = "8-1-fixed"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))
    assert _cli(servers, "import", str(path), "--tenant", tenant, "--batch", "2", "--jobs", "3").returncode == 0
    again = _cli(servers, "import", str(path), "--tenant", tenant, "--batch", "2", "--jobs", "3")
    assert "imported 12 conversations (0 new) into 1 tenants: 0 messages added" in again.stderr, again.stderr
    assert await count_rows(db, "messages", tenant) == 12 * 3 + 1
    await _assert_rollups_equal_brute_force(db, tenant)


def test_the_import_commands_gc_settings_last_only_while_it_runs() -> None:
    import gc

    from app.cli_data import _quiet_gc

    before = gc.get_threshold()
    with _quiet_gc():
        # The import's many parsed lines: a collection every 100,000 allocations, start-up objects frozen.
        assert gc.get_threshold()[0] == 100_000
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
