# The two commands: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint format typecheck pytest bench schema clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Start everything: embedded Postgres + Redis (unless DATABASE_URL / REDIS_URL are set), migrations, worker, API.
run: $(STAMP)
	$(BIN)/conversation-service run

## Install, lint, type-check and run the whole suite against real servers.
test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy app db jobs tests bench

pytest: $(STAMP)
	$(BIN)/python -m pytest

## Re-export schema.graphql from the code (a test fails when it drifts).
schema: $(STAMP)
	$(BIN)/python -m app.api.export > schema.graphql

## Every benchmark, each beside its baseline; `--write` variants update docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements-context.txt
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.graphql_bench
	$(BIN)/python -m bench.subscriptions_bench
	$(BIN)/python -m bench.context_bench
	$(BIN)/python -m bench.jobs_bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
