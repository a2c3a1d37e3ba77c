"""MariaDB fixtures: real servers on free loopback ports (tests/mysql_server.py), never mocks.

Registered once for the whole session by tests/conftest.py (so every test module shares the
same servers); modules import :class:`MyDB` from here for annotations.

- ``mariadb``: MariaDB 10.11 (Debian's), binlog in ROW format with full images and metadata,
  GTID strict mode off, so cdc resumes by binlog file and position; one per test session.
- ``mariadb_gtid``: the same with ``gtid_domain_id=7`` and ``gtid_strict_mode=ON``, so cdc
  resumes by GTID; one per test session.
- ``mariadb_any``: each of the two in turn (ids ``file``, ``gtid``).
- ``mydb`` / ``mydb_any``: a fresh database on ``mariadb`` / ``mariadb_any`` for one test
  (a :class:`MyDB`), dropped afterwards.

A server that cannot start makes its tests fail (error), never skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.mysql_server import LocalMariaDB


@pytest.fixture(scope="session")
def mariadb() -> Iterator[LocalMariaDB]:
    """MariaDB with file positions (gtid_strict_mode off), started once for the session."""
    server = LocalMariaDB()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def mariadb_gtid() -> Iterator[LocalMariaDB]:
    """MariaDB with GTID positions (domain 7, gtid_strict_mode on), started once."""
    server = LocalMariaDB(gtid_domain_id=7, gtid_strict_mode=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session", params=["file", "gtid"])
def mariadb_any(request: pytest.FixtureRequest) -> LocalMariaDB:
    """Each MariaDB in turn: file positions, then GTID positions."""
    server: LocalMariaDB = request.getfixturevalue("mariadb" if request.param == "file" else "mariadb_gtid")
    return server


@dataclass
class MyDB:
    """A database of its own on a LocalMariaDB."""

    server: LocalMariaDB
    name: str

    @property
    def gtid(self) -> bool:
        return "gtid-strict-mode" in self.server.settings

    def dsn(self, user: str = "root", password: str = "") -> str:
        return self.server.dsn(user, password)

    def table(self, name: str) -> str:
        return f"{self.name}.{name}"

    def execute(self, *statements: str | tuple[str, Any]) -> None:
        self.server.execute(*statements, database=self.name)

    def query(self, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
        return self.server.query(statement, args, database=self.name)

    def connect(self, **kw: Any) -> Any:
        return self.server.connect(self.name, **kw)


def _fresh(server: LocalMariaDB) -> Iterator[MyDB]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield MyDB(server, name)
    finally:
        if server.running:
            server.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mydb(mariadb: LocalMariaDB) -> Iterator[MyDB]:
    """A new, empty database on ``mariadb`` (file positions); dropped after the test."""
    yield from _fresh(mariadb)


@pytest.fixture
def mydb_any(mariadb_any: LocalMariaDB) -> Iterator[MyDB]:
    """A new, empty database on each MariaDB in turn (file, then GTID positions)."""
    yield from _fresh(mariadb_any)
