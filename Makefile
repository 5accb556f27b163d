# One task runner for the monorepo. On a fresh machine `make run` and `make test` do all set-up.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: install servers run test check lint bench bootstrap contract-docs clean

install:  ## OS packages if missing, .venv, every lib and implemented service (editable)
	@bash deploy/local/install.sh

servers:  ## make sure NATS/JetStream, PostgreSQL and Mosquitto are up on loopback
	@bash deploy/local/servers.sh

run: install servers  ## the whole fleet against the local servers; Ctrl-C stops it
	@$(PY) deploy/local/fleet.py

test: install servers  ## unit, handler, integration and e2e tests
	@$(PY) -m pytest -q

check: install  ## the fast loop, no server needed (< 1 min): lint, types, unit and handler tests
	@$(MAKE) --no-print-directory lint
	@$(PY) -m pytest -q -p no:cacheprovider -m "not integration and not e2e and not faults and not soak"

lint: install  ## ruff over everything, mypy (strict) over every library and service
	@.venv/bin/ruff check libs services tests deploy bench
	@.venv/bin/mypy libs/*/src services/*/src

bench: install servers  ## every transport end to end vs this machine's limits (not a test); BENCH_ARGS="--duration 30"
	@$(PY) bench/run.py $(BENCH_ARGS)

bootstrap: install servers  ## create/update streams, buckets, consumers
	@.venv/bin/tributary bootstrap

contract-docs: install  ## regenerate docs/asyncapi.yaml and docs/schemas/*.json from libs/contracts
	@$(PY) -m tributary_consumer_kit.asyncapi --docs docs

clean:
	rm -rf .venv .tributary .pytest_cache .ruff_cache .mypy_cache
