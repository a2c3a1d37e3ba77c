"""The test servers themselves: both PostgreSQL versions start ready for logical decoding."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from cdc_local.postgres import LocalPostgres, find_debian_bindir


def test_server_is_ready_for_logical_decoding(
    pg: LocalPostgres, request: pytest.FixtureRequest
) -> None:
    expected_major = {"pg15": 15, "pg18": 18}[request.node.callspec.params["pg"]]
    assert pg.version == expected_major
    assert pg.dsn() == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        num = conn.execute("SHOW server_version_num").fetchone()
        assert num is not None and int(num[0]) // 10000 == expected_major
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('wal_level', 'listen_addresses', 'max_replication_slots', 'max_wal_senders')"
            ).fetchall()
        )
    assert settings == {
        "wal_level": "logical",
        "listen_addresses": "127.0.0.1",
        "max_replication_slots": "20",
        "max_wal_senders": "20",
    }


def test_pgoutput_slot_in_fresh_database(pg: LocalPostgres, pgdb: str) -> None:
    assert pgdb == pg.dsn(pgdb.rsplit("/", 1)[1])
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("CREATE PUBLICATION pub FOR TABLE items")
        conn.execute("SELECT pg_create_logical_replication_slot('cdc_test', 'pgoutput')")
        conn.execute("INSERT INTO items VALUES (1, 'one')")
        changes = conn.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('cdc_test', NULL, NULL,"
            " 'proto_version', '1', 'publication_names', 'pub')"
        ).fetchone()
        assert changes is not None and changes[0] >= 3  # BEGIN, RELATION, INSERT, COMMIT
        slot = conn.execute(
            "SELECT plugin, slot_type, database FROM pg_replication_slots WHERE slot_name = 'cdc_test'"
        ).fetchone()
        assert slot == ("pgoutput", "logical", conn.info.dbname)
        conn.execute("SELECT pg_drop_replication_slot('cdc_test')")
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cdc_test'"
        ).fetchone() == (0,)


def test_pgdb_teardown_drops_leftover_slots(pg: LocalPostgres, pgdb: str) -> None:
    # Left behind on purpose: the pgdb fixture must drop it, or DROP DATABASE would fail.
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('cdc_leftover', 'pgoutput')")


def test_lifecycle_restart_kill_cleanup(free_port: int) -> None:
    server = LocalPostgres(
        find_debian_bindir(15), port=free_port, settings={"max_connections": "30"}
    )
    with server:
        assert server.port == free_port
        base = server.base_dir
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            assert conn.execute("SHOW max_connections").fetchone() == ("30",)
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        server.restart("fast")
        server.kill()  # crash: the next start runs recovery
        assert not server.running
        server.start()
        server.restart("immediate")
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
        assert "database system is ready to accept connections" in Path(server.log_path).read_text()
    assert not server.running
    assert not base.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", free_port), timeout=1):
        pass
