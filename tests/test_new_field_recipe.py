"""docs/architecture.md, "Recipe: a new Message field", followed to the letter on a copy of the tree.

`apply_recipe` makes exactly the hand edits the recipe lists, adding `mood: str | None` to Message:
the table, a migration, the records, the GraphQL type and inputs. Nothing else in the copy is
touched. Then tests/new_field_roundtrip.py runs in the copy, against a fresh database migrated by
the copy's migrations, and shows the field going through every write path and every encoding
(addMessage/addMessages → history → hot store → live event → export → import → save_message
action → webhook, with the idempotency check and a bad-type refusal). So when someone makes a
write path list fields by hand again, this test fails, and the recipe's file count stays true.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests import citus_cluster
from tests.conftest import Servers

ROOT = Path(__file__).resolve().parent.parent
#: The files the recipe edits by hand (schema.graphql is regenerated; the wire-format pin in
#: tests/test_codec.py and docs/jobs.md are the documented contract, updated with a real field).
RECIPE_FILES = ("db/tables.py", "app/models.py", "app/api/domains/message_types.py")
CONTRACT_FILES = ("docs/contract.graphql", "docs/jobs.md")
REVISION = "9c0ffee0d00d"


def _insert_after(path: Path, anchor: str, text: str, *, after_line_of: str | None = None) -> None:
    """Insert `text` after the line holding `anchor` (the first one after `after_line_of`)."""
    source = path.read_text()
    start = source.index(after_line_of) if after_line_of else 0
    at = source.index(anchor, start)
    end = source.index("\n", at) + 1
    path.write_text(source[:end] + text + source[end:])


def _head(root: Path) -> str:
    """The migration head: the revision no other migration names as its down_revision."""
    revisions, downs = set(), set()
    for f in (root / "db/migrations/versions").glob("*.py"):
        text = f.read_text()
        revisions.update(re.findall(r'^revision: str = "(\w+)"', text, re.M))
        downs.update(re.findall(r'^down_revision[^=]*= "(\w+)"', text, re.M))
    (head,) = revisions - downs
    return str(head)


def apply_recipe(root: Path) -> list[str]:
    """The recipe's hand edits for `mood: str | None`; returns the files written."""
    _insert_after(
        root / "db/tables.py",
        "execution: Any = _jsonb(nullable=True, default=None)",
        "    mood: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))\n",
        after_line_of='__tablename__ = "messages"',
    )
    migration = root / f"db/migrations/versions/20261130_{REVISION}_message_mood.py"
    migration.write_text(
        f'''"""message mood"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "{REVISION}"
down_revision: str | None = "{_head(root)}"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("mood", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "mood")
'''
    )
    models = root / "app/models.py"
    _insert_after(
        models, "sources: list[Source] | None = None", "    mood: str | None = None\n", after_line_of="class Message:"
    )
    _insert_after(models, "token_count: int = 0", "    mood: str | None = None\n", after_line_of="class NewMessage:")
    types = root / "app/api/domains/message_types.py"
    _insert_after(
        types, "created_at: datetime = strawberry.field(", '    mood: str | None = strawberry.field(description="How it felt.")\n',
        after_line_of="class Message:",
    )  # fmt: skip
    for input_type in ("class AddMessageInput:", "class MessageInput:"):
        _insert_after(
            types, "role: MessageRole = strawberry.field(",
            '    mood: str | None = strawberry.field(default=None, description="How it felt.")\n',
            after_line_of=input_type,
        )  # fmt: skip
    return [*RECIPE_FILES, str(migration.relative_to(root))]


def document_field(root: Path) -> list[str]:
    """The public contracts a new field changes, on purpose by hand: the GraphQL contract (an added
    optional input field is a "dangerous" change the contract test refuses until it is agreed) and
    docs/jobs.md's message object (the wire format of results, export lines and webhooks)."""
    contract = root / "docs/contract.graphql"
    _insert_after(contract, "type Message {", "  mood: String\n")
    for input_type in ("input AddMessageInput {", "input MessageInput {"):
        _insert_after(contract, input_type, "  mood: String\n")
    jobs = root / "docs/jobs.md"
    source = jobs.read_text()
    jobs.write_text(source.replace("execution, sources, created_at}", "execution, sources, created_at, mood}", 1))
    return [*CONTRACT_FILES]


def _copy_tree(dest: Path) -> None:
    """The tracked files of the tree (what a colleague would edit), without caches or venvs."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode == 0 and listed.stdout:
        for name in listed.stdout.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
        # This test's own child script may not be committed yet when it is being written.
        shutil.copy2(ROOT / "tests/new_field_roundtrip.py", dest / "tests/new_field_roundtrip.py")
    else:  # an exported tree without .git
        ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
        shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


@pytest.fixture
async def fresh_database(servers: Servers) -> AsyncIterator[str]:
    """An empty database on the test server, dropped afterwards (the copy migrates it itself)."""
    name = f"recipe_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = servers.database_url.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_a_new_message_field_end_to_end_takes_only_the_recipes_files(
    request: pytest.FixtureRequest, tmp_path: Path, servers: Servers, fresh_database: str
) -> None:
    if citus_cluster.cluster_requested(request.config):
        pytest.skip("a fresh database per test is made on plain Postgres; the field's SQL is the same on Citus")
    tree = tmp_path / "tree"
    _copy_tree(tree)
    written = apply_recipe(tree) + document_field(tree)
    assert len(written) <= 6
    changed = sorted(
        str(p.relative_to(tree))
        for p in tree.rglob("*")
        if p.is_file() and (not (ROOT / p.relative_to(tree)).exists() or p.read_bytes() != (ROOT / p.relative_to(tree)).read_bytes())
    )  # fmt: skip
    assert changed == sorted(written)

    # In a thread: the child's servers are this session's, and the loop stays free meanwhile.
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.new_field_roundtrip", fresh_database, servers.redis_url],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-8000:]

    # The generated schema, then the checks that guard the contracts pass on the copy as they are.
    exported = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "app.api.export"], cwd=tree, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )  # fmt: skip
    (tree / "schema.graphql").write_text(exported.stdout)
    checks = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_codec.py::test_wire_formats_are_the_documented_ones", "tests/api/test_schema_contract.py"],
        cwd=tree, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(tree), "TEST_DATABASE_URL": servers.database_url, "TEST_REDIS_URL": servers.redis_url},
    )  # fmt: skip
    assert checks.returncode == 0, checks.stdout[-6000:]
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    expected = {"1": None, "2": "curious", "3": "calm", "4": None}
    assert seen["addMessage"] == {"seq": 2, "mood": "curious"} and seen["event"] == "curious"
    assert seen["history"] == [expected, expected] and seen["cache"] == expected
    assert seen["export"] == expected and seen["import"] == expected
    assert seen["action"] == "happy" and seen["bad_action"]["code"] == "BAD_USER_INPUT"
    assert seen["webhook"] == expected | {"5": "happy"}
    assert seen["retry"]["code"] == "IDEMPOTENCY_KEY_REUSED" and seen["retry"]["fields"] == ["mood"]
