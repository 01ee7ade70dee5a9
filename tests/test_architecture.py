"""The layer contracts (.importlinter, docs/architecture.md) hold, and they really bite: a copy of
the tree with one forbidden import fails `lint-imports`, naming the contract and the import."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # The tree's own copy must win over the editable install of the checkout.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def contract_names() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    return [config[s]["name"] for s in config.sections() if s.startswith("importlinter:contract:")]


def test_make_lint_runs_the_contracts() -> None:
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "lint-imports" in lint


def test_the_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contract_names())} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        # The hot store importing a service (the fills lived there once).
        ("app/cache/keys.py", "from app.services import context", "Hot store: no service"),
        # The hot store reading Postgres itself.
        (
            "app/cache/reads.py",
            "from db.repositories import conversations",
            "Hot store: no service, no repository, never reads Postgres",
        ),
        # db/ reaching up into the application.
        ("db/session.py", "from app.services import conversations", "Layers:"),
        # A service talking to Redis directly instead of through the hot store.
        ("app/services/crm.py", "import redis.asyncio", "Services import no edge and no Redis client"),
        # A service importing an edge.
        ("app/services/messages.py", "from app.api import errors", "Services import no edge"),
        # An edge calling a repository.
        ("jobs/actions.py", "from db.repositories import messages", "Edges call services, never repositories"),
        # A runtime module importing the embedded servers (dev tooling).
        ("app/api/http.py", "from app.embedded import process", "Dev tooling (app/embedded)"),
        # A new cycle between two modules of one package.
        ("app/api/domains/common.py", "from app.api.domains import conversations", "No import cycles"),
    ],
)
def test_a_forbidden_import_fails_the_contracts(tmp_path: Path, module: str, forbidden: str, contract: str) -> None:
    for part in ("app", "db", "jobs"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{forbidden}  # noqa\n")

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    # The offending import is named: whole for a forbidden one, relative to its package in a cycle.
    assert importer in result.stdout or f".{importer.rpartition('.')[2]} -> " in result.stdout, result.stdout


def test_the_map_lists_every_contract_and_package() -> None:
    """docs/architecture.md stays true: each contract is listed, each package has its line."""
    text = ARCHITECTURE.read_text()
    for name in contract_names():
        assert name in text, f"contract {name!r} is missing from docs/architecture.md"
    packages = sorted(
        str(init.parent.relative_to(ROOT))
        for top in ("app", "db", "jobs")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts and "migrations" not in init.parts
    )
    assert packages, "no packages found"
    missing = [p for p in packages if f"`{p}/`" not in text]
    assert not missing, f"packages missing from docs/architecture.md: {missing}"
