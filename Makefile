# Two commands do all the set-up on a fresh machine (Python 3.11+, Java 17, Maven):
#   make demo   - venv, install, run the main job on the embedded default (no broker)
#   make test   - venv, install, fetch Kafka, start a broker, run every test, stop it
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast kafka-jars lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

kafka-jars:
	scripts/fetch-kafka.sh

demo: install
	$(BIN)/crm-ledger demo

test: install kafka-jars
	$(BIN)/crm-ledger schemas check
	scripts/run-tests.sh

test-fast: install
	scripts/run-tests.sh -m "not kafka and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install kafka-jars
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/project.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/follow.py

clean:
	rm -rf .crm-ledger .pytest_cache .mypy_cache .ruff_cache
