"""Source harnesses for the source contract suite (tests/integration/test_source_contract.py).

The twin of tests/sink_harness.py. A harness owns a fresh database on one real source server
(started by the session fixtures of tests/conftest.py and tests/mariadb_fixtures.py) and knows
the few things that differ between sources:

- the SQL dialect: a column *kind* of the suite (``int``, ``text``, ``decimal``, …) becomes the
  source's own type, and a range of rows is generated the source's way; everything else the
  suite writes (INSERT, UPDATE, DELETE, TRUNCATE TABLE, ALTER TABLE ADD COLUMN) is plain SQL
  that both dialects read the same;
- how to run statements, alone (autocommit) or together in one transaction;
- how the pipeline's ``source`` section looks, and what a table is called in it;
- what the source sends as ``before`` (MySQL/MariaDB: always the whole row; PostgreSQL: the
  whole row only under REPLICA IDENTITY FULL), where an event sits in commit order, and the
  documented format of its ``id``;
- how to read a table back as events show its rows (for tables of ints and strings).

``HARNESSES`` maps a harness name to a factory taking the pytest request (to reach the session
server fixture); the suite runs every contract test for each.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
import pytest

from sources.postgres.lsn import Lsn
from tests.helpers import create_database, drop_database, execute, query

#: the column kinds the suite uses, in each dialect
PG_TYPES = {
    "int": "int",
    "bigint": "bigint",
    "text": "text",
    "decimal": "numeric(12,2)",
    "double": "double precision",
    "date": "date",
    "timestamp": "timestamp(6)",
}
MARIADB_TYPES = {
    "int": "INT",
    "bigint": "BIGINT",
    "text": "VARCHAR(100)",
    "decimal": "DECIMAL(12,2)",
    "double": "DOUBLE",
    "date": "DATE",
    "timestamp": "DATETIME(6)",
}


def key_json(doc: dict[str, Any], key: list[str]) -> bytes:
    """A row's key as :func:`tests.helpers.fold` writes it."""
    return orjson.dumps({c: doc[c] for c in key}, option=orjson.OPT_SORT_KEYS)


class SourceHarness:
    """One fresh database on one source server."""

    name = "?"
    #: ``source.connector`` of its events
    connector = "?"
    types: dict[str, str] = {}

    def table(self, name: str) -> str:
        """The table's name in ``tables`` and in ``schema.name``."""
        raise NotImplementedError

    def create_table(
        self,
        name: str,
        columns: list[tuple[str, str]],
        key: list[str],
        *,
        full_identity: bool = False,
    ) -> None:
        """CREATE TABLE ``name`` with (column, kind) pairs and a primary key; ``full_identity``
        asks for whole old rows where the source makes that a table setting."""
        raise NotImplementedError

    def execute(self, *statements: str) -> None:
        """Each statement in its own transaction."""
        raise NotImplementedError

    def transaction(self, *statements: str) -> None:
        """All statements in one transaction."""
        raise NotImplementedError

    def fill(self, table: str, lo: int, hi: int) -> None:
        """One INSERT of rows ``(n, 'row n', n % 7)`` for n in lo..hi into an (id, name, qty) table."""
        raise NotImplementedError

    def rows(self, table: str, key: list[str]) -> dict[bytes, dict[str, Any]]:
        """The table as :func:`tests.helpers.fold` shows it (tables of ints and strings)."""
        raise NotImplementedError

    def source_config(self, tables: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def sends_full_before(self, full_identity: bool) -> bool:
        """Whether ``before`` holds the whole old row on update and delete."""
        raise NotImplementedError

    def commit_position(self, event: dict[str, Any]) -> Any:
        """Where the event's transaction sits in the source's commit order (comparable)."""
        raise NotImplementedError

    def event_id(self, event: dict[str, Any]) -> str:
        """The id the docs say this event has."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class PostgresHarness(SourceHarness):
    """A database on a LocalPostgres, tables in ``public``, the default pgoutput source."""

    connector = "postgres"
    types = PG_TYPES

    def __init__(self, name: str, server: Any) -> None:
        self.name = name
        self.server = server
        self.db, self.dsn = create_database(server)

    def table(self, name: str) -> str:
        return f"public.{name}"

    def create_table(
        self,
        name: str,
        columns: list[tuple[str, str]],
        key: list[str],
        *,
        full_identity: bool = False,
    ) -> None:
        cols = ", ".join(f"{c} {self.types[kind]}" for c, kind in columns)
        statements = [f"CREATE TABLE {name} ({cols}, PRIMARY KEY ({', '.join(key)}))"]
        if full_identity:
            statements.append(f"ALTER TABLE {name} REPLICA IDENTITY FULL")
        execute(self.dsn, *statements)

    def execute(self, *statements: str) -> None:
        execute(self.dsn, *statements)

    def transaction(self, *statements: str) -> None:
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:  # commits on leaving
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def fill(self, table: str, lo: int, hi: int) -> None:
        execute(
            self.dsn,
            f"INSERT INTO {table} SELECT g, 'row ' || g, g % 7 FROM generate_series({lo}, {hi}) g",
        )

    def rows(self, table: str, key: list[str]) -> dict[bytes, dict[str, Any]]:
        return {
            key_json(doc, key): doc
            for (doc,) in query(self.dsn, f"SELECT to_jsonb(t) FROM {table} t")
        }

    def source_config(self, tables: list[str]) -> dict[str, Any]:
        return {"type": "postgres", "dsn": self.dsn, "tables": tables, "heartbeat_s": 1}

    def sends_full_before(self, full_identity: bool) -> bool:
        return full_identity

    def commit_position(self, event: dict[str, Any]) -> Any:
        return Lsn.parse(event["source"]["lsn"])

    def event_id(self, event: dict[str, Any]) -> str:
        tx = event["transaction"]
        return f"pg:{tx['id']}:{tx['seq']}"

    def close(self) -> None:
        drop_database(self.server, self.db)


class MariaDBHarness(SourceHarness):
    """A database on a LocalMariaDB (file or GTID positions, as the server is set up)."""

    connector = "mysql"
    types = MARIADB_TYPES

    def __init__(self, name: str, server: Any) -> None:
        self.name = name
        self.server = server
        self.db = f"t_{uuid.uuid4().hex[:12]}"
        server.execute(f"CREATE DATABASE `{self.db}` CHARACTER SET utf8mb4")

    def table(self, name: str) -> str:
        return f"{self.db}.{name}"

    def create_table(
        self,
        name: str,
        columns: list[tuple[str, str]],
        key: list[str],
        *,
        full_identity: bool = False,
    ) -> None:
        cols = ", ".join(f"{c} {self.types[kind]}" for c, kind in columns)
        self.execute(f"CREATE TABLE {name} ({cols}, PRIMARY KEY ({', '.join(key)}))")

    def execute(self, *statements: str) -> None:
        self.server.execute(*statements, database=self.db)

    def transaction(self, *statements: str) -> None:
        self.execute("BEGIN", *statements, "COMMIT")  # one connection, in order

    def fill(self, table: str, lo: int, hi: int) -> None:
        self.execute(
            f"INSERT INTO {table} SELECT seq, CONCAT('row ', seq), seq % 7 FROM seq_{lo}_to_{hi}"
        )

    def rows(self, table: str, key: list[str]) -> dict[bytes, dict[str, Any]]:
        conn = self.server.connect(self.db)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT * FROM {table}")
                names = [d[0] for d in cur.description]
                docs = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()
        return {key_json(doc, key): doc for doc in docs}

    def source_config(self, tables: list[str]) -> dict[str, Any]:
        return {"type": "mysql", "dsn": self.server.dsn(), "tables": tables, "heartbeat_s": 1}

    def sends_full_before(self, full_identity: bool) -> bool:
        return True  # binlog_row_image=FULL, which the service checks at start

    def commit_position(self, event: dict[str, Any]) -> Any:
        src = event["source"]
        return (src["file"], src["pos"])

    def event_id(self, event: dict[str, Any]) -> str:
        tx = event["transaction"]
        return f"mysql:{tx['id']}:{tx['seq']}"

    def close(self) -> None:
        if self.server.running:
            self.server.execute(f"DROP DATABASE IF EXISTS `{self.db}`")


#: name -> factory(request) for every source under the contract suite
HARNESSES: dict[str, Callable[[pytest.FixtureRequest], SourceHarness]] = {
    "pg15": lambda request: PostgresHarness("pg15", request.getfixturevalue("pg15")),
    "pg18": lambda request: PostgresHarness("pg18", request.getfixturevalue("pg18")),
    "mariadb_file": lambda request: MariaDBHarness(
        "mariadb_file", request.getfixturevalue("mariadb")
    ),
    "mariadb_gtid": lambda request: MariaDBHarness(
        "mariadb_gtid", request.getfixturevalue("mariadb_gtid")
    ),
}
