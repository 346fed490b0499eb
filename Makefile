# The single entry point: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint fmt services bench clean

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
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	$(BIN)/mypy bench

fmt: $(INSTALLED)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

# postroom against the seeds' pattern, in one run (~10 min on 2 cores); options after BENCH_ARGS=,
# e.g. `make bench BENCH_ARGS="--messages 1000 --sqlite"` (see `python -m bench --help`).
# smtp-sink is unpacked from Debian's postfix package; no Postfix daemon is installed or run.
bench: $(INSTALLED) services
	bash scripts/install-smtp-sink
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .postroom postroom.db postroom.db-wal postroom.db-shm .pytest_cache .mypy_cache .ruff_cache
