"""Binlog positions as value types, GTID accumulators, TRUNCATE parsing, DSNs and the server
checks of the MySQL source (pure code, no server)."""

from __future__ import annotations

import pytest

from cdc.errors import FatalError
from sources.mysql.catalog import ServerFacts, check_server, connection_settings
from sources.mysql.position import (
    BinlogPosition,
    GtidPosition,
    MariaDBGtidState,
    MySQLGtidSet,
    file_index,
    parse_position,
)
from sources.mysql.source import parse_truncate

UUID1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID2 = "4c9e3dfc-9d25-11e9-8d2e-0242ac1cfd7e"


def test_binlog_position_round_trips_and_orders_across_rotation() -> None:
    p = BinlogPosition("mysql-bin.000003", 1234)
    assert str(p) == "mysql-bin.000003:1234"
    assert parse_position(str(p)) == p
    assert BinlogPosition("mysql-bin.000009", 99999) < BinlogPosition("mysql-bin.000010", 4)
    assert BinlogPosition("mysql-bin.999999", 4) < BinlogPosition("mysql-bin.1000000", 4)
    assert max(BinlogPosition("b.000002", 4), BinlogPosition("b.000001", 900)) == BinlogPosition("b.000002", 4)
    assert file_index("mysql-bin.000042") == 42 and file_index("odd") == 0


@pytest.mark.parametrize(
    "text",
    [
        "gtid:0-1-100@mysql-bin.000003:1234",
        "gtid:0-1-100,7-2-5@mysql-bin.000003:1234",
        "gtid:@mysql-bin.000001:4",
        f"gtid:{UUID1}:1-100:200-300,{UUID2}:5@binlog.000007:99",
    ],
)
def test_gtid_position_round_trips(text: str) -> None:
    p = parse_position(text)
    assert isinstance(p, GtidPosition)
    assert str(p) == text
    assert p.binlog == BinlogPosition(text.rpartition("@")[2].rpartition(":")[0], int(text.rpartition(":")[2]))
    assert p.flavor == ("mysql" if UUID1 in text else "mariadb")


@pytest.mark.parametrize("text", ["", "mysql-bin.000001", "mysql-bin.000001:x", "gtid:0-1@f.1:4", "gtid:0-1-1", "0/16B37C8"])
def test_bad_positions_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_position(text)


def test_mariadb_gtid_state_keeps_the_last_gtid_per_domain() -> None:
    state = MariaDBGtidState.parse("0-1-100,7-2-5")
    state.add(0, 1, 101)
    state.add(3, 9, 1)
    assert str(state) == "0-1-101,3-9-1,7-2-5"
    assert str(MariaDBGtidState.parse("")) == ""
    with pytest.raises(ValueError, match="twice"):
        MariaDBGtidState.parse("0-1-1,0-2-2")


def test_mysql_gtid_set_adds_and_merges() -> None:
    gs = MySQLGtidSet.parse(f"{UUID1.upper()}:1-5:7,\n{UUID2}:3")
    assert str(gs) == f"{UUID1}:1-5:7,{UUID2}:3"
    gs.add(UUID1, 6)
    assert str(gs) == f"{UUID1}:1-7,{UUID2}:3"
    gs.add(UUID2, 4)
    gs.add(UUID2, 10)
    assert str(gs) == f"{UUID1}:1-7,{UUID2}:3-4:10"
    gs.add(UUID2, 4)  # already in
    assert str(gs) == f"{UUID1}:1-7,{UUID2}:3-4:10"
    tagged = MySQLGtidSet.parse(f"{UUID1}:1-3:mytag:1-2")
    assert str(tagged) == f"{UUID1}:1-3:mytag:1-2"
    copy = gs.copy()
    copy.add(UUID1, 8)
    assert str(gs) != str(copy)


@pytest.mark.parametrize(
    ("query", "schema", "expected"),
    [
        ("TRUNCATE TABLE t", "shop", "shop.t"),
        ("truncate t", "shop", "shop.t"),
        ("TRUNCATE TABLE `shop`.`my``t`", "", 'shop."my`t"'),
        ("TRUNCATE other.t;", "shop", "other.t"),
        ("/* app */ TRUNCATE TABLE `t`", "shop", "shop.t"),
        ("TRUNCATE TABLE t", "", None),
        ("DELETE FROM t", "shop", None),
        ("TRUNCATE TABLE a, b", "shop", None),
    ],
)
def test_truncate_statements_name_their_table(query: str, schema: str, expected: str | None) -> None:
    assert parse_truncate(query, schema) == expected


def test_dsn_settings() -> None:
    s = connection_settings("mysql://cdc:p%40ss@db.example:3307?ssl_ca=/ca.pem&connect_timeout=5")
    assert (s["host"], s["port"], s["user"], s["password"]) == ("db.example", 3307, "cdc", "p@ss")
    assert s["ssl_ca"] == "/ca.pem" and "ssl" not in s and s["connect_timeout"] == 5 and s["charset"] == "utf8mb4"
    assert connection_settings("mysql://root@127.0.0.1")["port"] == 3306
    with pytest.raises(FatalError, match="unknown parameter 'sslmode'"):
        connection_settings("mysql://u@h?sslmode=require")
    with pytest.raises(FatalError, match="scheme"):
        connection_settings("postgresql://u@h/db")


def _facts(flavor: str = "mariadb", version: tuple[int, ...] = (10, 11, 6), **variables: str) -> ServerFacts:
    base = {
        "log_bin": "ON",
        "binlog_format": "ROW",
        "binlog_row_image": "FULL",
        "binlog_row_metadata": "FULL",
        "binlog_row_value_options": "",
    }
    base.update(variables)
    return ServerFacts(".".join(map(str, version)), flavor, version, 1, base)


def test_server_checks_name_each_wrong_setting_and_its_fix() -> None:
    check_server(_facts())
    check_server(_facts("mysql", (8, 0, 36)))
    cases = {
        "binlog_format": ("STATEMENT", "binlog_format is STATEMENT, cdc needs ROW: run SET GLOBAL binlog_format = 'ROW'"),
        "binlog_row_image": ("MINIMAL", "binlog_row_image is MINIMAL, cdc needs FULL"),
        "binlog_row_metadata": ("MINIMAL", "binlog_row_metadata is MINIMAL, cdc needs FULL"),
        "log_bin": ("OFF", "binary logging is off"),
    }
    for name, (value, needle) in cases.items():
        with pytest.raises(FatalError) as err:
            check_server(_facts(**{name: value}))
        assert needle in str(err.value)
        assert err.value.kind == "source_config"
    with pytest.raises(FatalError, match="binlog_row_value_options is 'PARTIAL_JSON'"):
        check_server(_facts("mysql", (8, 0, 36), binlog_row_value_options="PARTIAL_JSON"))
    check_server(_facts(binlog_row_value_options="PARTIAL_JSON"))  # MariaDB has no such thing
    with pytest.raises(FatalError, match="too old"):
        check_server(_facts(version=(10, 4, 30)))
    with pytest.raises(FatalError) as err:
        check_server(_facts(binlog_format="MIXED", binlog_row_image="NOBLOB"))
    assert "binlog_format is MIXED" in str(err.value) and "binlog_row_image is NOBLOB" in str(err.value)
