# cdc developer commands. `make test` is THE test command (what CI runs via .ci/run).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help setup test lint demo bench

help:
	@echo "make test    install the test environment (Debian packages, .venv) and run all tests"
	@echo "make lint    ruff on everything, mypy --strict (files in pyproject.toml)"
	@echo "make demo    run 'cdc demo' (embedded PostgreSQL, no setup needed)"
	@echo "make bench   run every benchmark and print one table (bench/run_all.py)"

$(PY):
	python3 -m venv $(VENV)

# Debian's PostgreSQL 15 and MariaDB, .venv with the project and test dependencies (idempotent).
setup:
	bash scripts/setup-test-env.sh

test: setup
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

lint: setup
	@$(VENV)/bin/ruff --version >/dev/null 2>&1 && $(VENV)/bin/mypy --version >/dev/null 2>&1 \
		|| $(PY) -m pip install -q -e '.[test]'
	$(VENV)/bin/ruff check cdc cdc_local sources sinks tests bench
	$(VENV)/bin/mypy

demo: $(PY)
	$(PY) -m pip install -q -e '.[demo]'
	$(VENV)/bin/cdc demo

bench: setup
	$(PY) bench/run_all.py $(BENCH_ARGS)
