# Two commands on a fresh machine with python3 and make: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run run-replicated test gen lint clean

$(INSTALLED): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

## gen: regenerate shop/**/_pb2*.py from protos/ (committed; a test checks they are current)
gen: $(INSTALLED)
	$(BIN)/python scripts/gen_protos.py

# TLS=1: mutual TLS between the processes, with a local CA and certificates in data/tls ($$DATA_DIR/tls)
TLS_ARGS = $(if $(filter 1,$(TLS)),--tls)

## run: every service on the embedded defaults; Ctrl-C stops them all (TLS=1: over mutual TLS)
run: $(INSTALLED) gen
	$(BIN)/python -m launcher $(TLS_ARGS)

## run-replicated: two replicas of every process on PostgreSQL and Redis (POSTGRES_URL);
## RUN_ARGS=--reset-databases starts on empty databases
run-replicated: $(INSTALLED) gen
	$(BIN)/python -m launcher --replicas 2 $(RUN_ARGS) $(TLS_ARGS)

## test: the whole suite (uses PostgreSQL and Redis on localhost when present)
test: $(INSTALLED)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) data .pytest_cache

## bench: end-to-end benchmark (hey or wrk; JSON lines), then the seed REST chain side by side
## (../shared/baseline/compare.sh, when present); BENCH_ARGS="--postgres --duration 5 ..."
BENCH_ARGS ?= --compare 3,15
.PHONY: bench
bench: $(INSTALLED)
	$(BIN)/python -m bench run $(BENCH_ARGS)
