# Two commands do all the set-up on a fresh machine (Python 3.11+, Java 17, Maven):
#   make demo   - venv, install, run the main job on the embedded default (no broker)
#   make test   - venv, install, fetch Kafka and the schema registry (and Debian's chromium when missing),
#                 start them, run every test, stop them
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo serve-demo test test-fast test-browser chromium kafka-jars spark-jars registry-dist lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

kafka-jars:
	scripts/fetch-kafka.sh

# Delta Lake's jars for Spark (`replay --engine spark`, the Spark equality tests).
spark-jars:
	scripts/fetch-spark-jars.sh

registry-dist:
	scripts/fetch-registry.sh

demo: install
	$(BIN)/crm-ledger demo

# The demo's data in the web pages on http://127.0.0.1:8000/ (after `make demo`; Ctrl-C stops).
serve-demo: install
	@test -f .crm-ledger/demo/projections.duckdb || $(BIN)/crm-ledger demo
	$(BIN)/crm-ledger --db .crm-ledger/demo/projections.duckdb serve

# Debian's Chromium for the browser tests (skipped, with the reason, where no apt-get exists).
chromium:
	scripts/ensure-chromium.sh || test $$? -eq 3

test: install kafka-jars spark-jars registry-dist chromium lint
	$(BIN)/crm-ledger schemas check
	scripts/run-tests.sh

test-fast: install
	scripts/run-tests.sh -m "not kafka and not slow and not registry and not browser and not spark"

test-browser: install chromium
	scripts/run-tests.sh -m browser

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install kafka-jars spark-jars
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/project.py
	$(BIN)/python bench/service_models.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/follow.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/web.py
	$(BIN)/python bench/spark.py

clean:
	rm -rf .crm-ledger .pytest_cache .mypy_cache .ruff_cache
