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

# Say what is missing on a fresh machine instead of failing half-way: Python 3.11+ and venv
# (Debian/Ubuntu ship venv separately, in python3-venv).
$(PY):
	@python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cdc needs Python 3.11 or newer; python3 is " + sys.version.split()[0])'
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { echo "python3 cannot create a virtualenv: on Debian or Ubuntu run 'sudo apt-get install python3-venv', then make demo again" >&2; exit 1; }
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
