"""Pure pieces of the MySQL source: rename statements, TABLE_MAP member names, plugin values."""

from __future__ import annotations

import ipaddress

import pytest

from sources.mysql.ddl import parse_renames
from sources.mysql.rows import ENUM, SET, inet4_text, inet6_text, table_map_members, uuid_text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("RENAME TABLE a TO b", [("shop.a", "shop.b")]),
        (
            "rename tables shop.a to other.b, `x``y` TO z",
            [("shop.a", "other.b"), ('shop."x`y"', "shop.z")],
        ),
        (
            "RENAME TABLE a TO tmp, b TO a, tmp TO b",
            [("shop.a", "shop.tmp"), ("shop.b", "shop.a"), ("shop.tmp", "shop.b")],
        ),
        ("RENAME TABLE IF EXISTS a WAIT 3 TO b", [("shop.a", "shop.b")]),
        ("/* moved */ RENAME /* x */ TABLE `a` -- c\n TO `b`", [("shop.a", "shop.b")]),
        ("# note\nRENAME TABLE a TO b", [("shop.a", "shop.b")]),
        ("ALTER TABLE a RENAME TO b", [("shop.a", "shop.b")]),
        ("ALTER TABLE a RENAME AS db2.b", [("shop.a", "db2.b")]),
        ("ALTER TABLE a RENAME b", [("shop.a", "shop.b")]),
        ("ALTER TABLE a ADD COLUMN (x INT, y INT), RENAME TO b", [("shop.a", "shop.b")]),
        ("ALTER ONLINE IGNORE TABLE IF EXISTS a NOWAIT RENAME TO b", [("shop.a", "shop.b")]),
        ("/*!40000 ALTER TABLE a RENAME TO b */", [("shop.a", "shop.b")]),
        ("ALTER TABLE a RENAME COLUMN x TO y", []),
        ("ALTER TABLE a RENAME INDEX i TO j, RENAME KEY k TO l", []),
        ("ALTER TABLE a COMMENT 'rename to x'", []),
        ("ALTER TABLE a ADD COLUMN `rename` INT", []),
        ("RENAME USER a TO b", []),
        ("CREATE TABLE a (id INT)", []),
    ],
)
def test_parse_renames(query: str, expected: list[tuple[str, str]]) -> None:
    assert parse_renames(query, "shop") == expected


def test_a_rename_without_a_default_database_needs_qualified_names() -> None:
    assert parse_renames("RENAME TABLE a TO b", "") == []
    assert parse_renames("RENAME TABLE s.a TO s.b", "") == [("s.a", "s.b")]


def _lenenc_str(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def test_table_map_members_are_the_bytes_the_server_wrote() -> None:
    types = bytes([3, ENUM, SET, ENUM])
    body = b"\x01\x00" + b"\x04shop\x00" + b"\x01t\x00" + bytes([len(types)]) + types
    body += b"\x02" + b"\xf7\x01"  # per-type metadata (opaque here)
    body += b"\x00"  # null bitmap
    enums = bytes([2]) + _lenenc_str("café".encode("latin1")) + _lenenc_str(b"b")
    enums += bytes([1]) + _lenenc_str("😀".encode())
    sets = bytes([2]) + _lenenc_str(b"x") + _lenenc_str("ü".encode("latin1"))
    body += bytes([4]) + bytes([4]) + b"\x02\x01a\x00"  # COLUMN_NAME-like field: skipped
    body += bytes([6, len(enums)]) + enums + bytes([5, len(sets)]) + sets
    assert table_map_members(body) == (
        [("café".encode("latin1"), b"b"), ("😀".encode(),)],
        [(b"x", "ü".encode("latin1"))],
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("::1.2.3.4", "::1.2.3.4"),
        ("::", "::"),
        ("::1", "::1"),
        ("1::", "1::"),
        ("1:0:1:1:1:1:1:1", "1::1:1:1:1:1:1"),
        ("1:0:0:1:0:0:0:1", "1:0:0:1::1"),
        ("0:0:1::", "0:0:1::"),
        ("FE80::ABCD", "fe80::abcd"),
    ],
)
def test_inet6_text_as_mariadb_prints_it(text: str, shown: str) -> None:
    assert inet6_text(ipaddress.IPv6Address(text).packed) == shown


def test_uuid_and_inet4_text() -> None:
    raw = bytes.fromhex("123e4567e89b12d3a456426614174000")
    assert uuid_text(raw) == "123e4567-e89b-12d3-a456-426614174000"
    assert inet4_text(bytes([192, 0, 2, 1])) == "192.0.2.1"
