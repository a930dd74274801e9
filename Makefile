# Tally: `make run` serves, `make test` tests. Both start from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
MODEL ?= smollm2-135m-instruct
# Playwright drives Debian's chromium (/usr/bin/chromium); it never downloads a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
# The suites that run a second time against PostgreSQL (tests/postgres/run.sh: a throwaway cluster, a database per test)
POSTGRES_SUITES := tests/store tests/ledger tests/datanets tests/rewards tests/chain tests/e2e tests/postgres

.PHONY: run test lint install model bench clean postgres chromium compiler

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,replicas]'
	@touch $(STAMP)

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $(NPM_STAMP)

install: $(STAMP) $(NPM_STAMP)

model: $(STAMP)
	$(BIN)/tally models pull $(MODEL)

run: model $(NPM_STAMP)
	$(BIN)/tally serve

# Debian's server binaries (initdb, postgres, pg_ctl), installed when missing.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; }

# Debian's Chromium for the studio's browser tests (Playwright drives it; no browser download).
chromium:
	@test -x /usr/bin/chromium || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# A C compiler for the int8 decode kernel (engine.weights = int8 builds it on first use).
compiler:
	@command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y gcc libc6-dev; }

test: model $(NPM_STAMP) postgres chromium compiler
	$(BIN)/python -m pytest -q
	tests/postgres/run.sh $(BIN)/python -m pytest -q $(POSTGRES_SUITES)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/ledger.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
