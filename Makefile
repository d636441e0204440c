# Two commands on a fresh machine: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
NODE_STAMP := tests/node/node_modules/.installed-$(shell cat tests/node/package-lock.json | cksum | cut -d' ' -f1)
WEB_STAMP  := web/node_modules/.installed-$(shell cat web/package-lock.json | cksum | cut -d' ' -f1)
WEB_BUNDLE := web/dist/.built
CHROMIUM   ?= /usr/bin/chromium
PYTEST_ARGS ?=

.PHONY: install node web chromium run test lint fuzz chaos bench loadtest clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

$(NODE_STAMP): tests/node/package-lock.json tests/node/package.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	rm -f tests/node/node_modules/.installed-*
	touch $(NODE_STAMP)

node: $(NODE_STAMP)

$(WEB_STAMP): web/package-lock.json web/package.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	rm -f web/node_modules/.installed-*
	touch $(WEB_STAMP)

## The page at / and /console: esbuild bundles web/src into web/dist when it is missing or stale.
$(WEB_BUNDLE): $(WEB_STAMP) web/build.mjs $(wildcard web/src/*)
	cd web && node build.mjs
	touch $(WEB_BUNDLE)

web: $(WEB_BUNDLE)

## The browser tests drive Debian's Chromium (a browser a tool downloads for itself cannot be fetched here).
chromium:
	@test -x $(CHROMIUM) || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
		else echo "install Chromium (apt-get install chromium) or set CHROMIUM=/path/to/chromium"; exit 1; fi; }

## Start the server with embedded PostgreSQL and Redis (or DATABASE_URL / REDIS_URL), print demo tokens.
run: install web
	$(VENV)/bin/collab-server serve --demo

## Install everything and run the whole suite against real PostgreSQL, Redis, sockets and clients.
test: install node web chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

## Fuzz for longer than the suite does: schemathesis for 15 minutes with a fresh seed, hypothesis at 20,000 examples.
fuzz: install node
	COLLAB_FUZZ_SECONDS=$${COLLAB_FUZZ_SECONDS:-900} HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest --timeout 7200 -s \
		tests/api/test_schemathesis.py tests/test_content.py tests/core

## Kill -9 the servers under load while PostgreSQL stops and Redis dies; print what was lost (README, Chaos).
chaos: install
	$(PY) -m bench.chaos $(ARGS)

## Benchmark this server against the y-websocket reference server (see bench/README.md).
bench: install node
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m bench.run

## Drive a running server: make loadtest ARGS="--url ws://127.0.0.1:8080/ws --rate 4000 --mix typing,cursor"
loadtest: install
	$(VENV)/bin/collab-loadtest $(ARGS)

clean:
	rm -rf $(VENV) .collab tests/node/node_modules web/node_modules web/dist
