from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import PROJECT_ROOT, Settings


def test_development_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "ENVIRONMENT", "DATA_DIR", "PORT", "HOST"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)
    assert (s.host, s.port, s.auth_mode.value) == ("127.0.0.1", 8000, "api_key")
    assert s.resolved_data_dir == PROJECT_ROOT / ".data"  # the working directory does not matter


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EMBEDDED_POSTGRES_PORT", "EMBEDDED_REDIS_PORT", "DATABASE_URL", "PORT"):
        monkeypatch.setenv(name, "")
    s = Settings(_env_file=None)
    assert (s.embedded_postgres_port, s.embedded_redis_port, s.database_url, s.port) == (None, None, None, 8000)
    monkeypatch.setenv("EMBEDDED_POSTGRES_PORT", "70000")
    with pytest.raises(ValidationError, match="embedded_postgres_port"):
        Settings(_env_file=None)


def test_production_refuses_embedded_servers_and_dev_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(_env_file=None, environment="production")
    with pytest.raises(ValidationError, match="development password"):
        Settings(
            _env_file=None,
            environment="production",
            database_url="postgresql://postgres:postgres@db/conversations",
            redis_url="redis://cache:6379/0",
        )
    ok = Settings(
        _env_file=None,
        environment="production",
        database_url="postgresql://svc:s3cret@db/conversations",
        redis_url="redis://cache:6379/0",
    )
    assert ok.is_production


def test_summarizer_calls_must_fit_in_a_job_only_when_summaries_are_on() -> None:
    assert Settings(_env_file=None, arq_job_timeout_s=20).summarizer_url is None  # off: no constraint
    with pytest.raises(ValidationError, match="SUMMARIZER_TIMEOUT_S"):
        Settings(_env_file=None, arq_job_timeout_s=20, summarizer_url="http://llm/v1", summarizer_model="m")
