# The single entry point: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint fmt services clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,embedded]'
	touch $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/postroom dev

services:
	bash scripts/start-services

test: $(INSTALLED) services
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src

fmt: $(INSTALLED)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) .postroom postroom.db postroom.db-wal postroom.db-shm .pytest_cache .mypy_cache .ruff_cache
