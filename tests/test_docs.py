"""The README and docker-compose stay in step with the settings the code reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.settings import PROJECT_ROOT, Settings


def test_readme_documents_every_setting() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"


def test_compose_passes_only_known_settings_and_has_healthchecks() -> None:
    compose = yaml.safe_load(Path(PROJECT_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "api", "worker"} <= set(services)
    known = {name.upper() for name in Settings.model_fields}
    for name in ("api", "worker", "migrate"):
        assert set(services[name]["environment"]) <= known, name
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name


def test_graphql_folder_is_not_a_python_package() -> None:
    assert not (PROJECT_ROOT / "graphql" / "__init__.py").exists()
