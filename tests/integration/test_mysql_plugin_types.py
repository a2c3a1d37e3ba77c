"""MariaDB type plugins (UUID, INET4, INET6) and ENUM/SET member names, streamed vs read.

Against the real MariaDB fixture: a :class:`MySQLSource` in this process streams the changes,
its snapshot reader reads the same rows, and a plain ``SELECT`` says what the server holds. The
three must agree value for value (the snapshot core matches rows to streamed events byte for
byte) and the stream's schema must equal the snapshot's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_mysql_snapshot_reader import (
    Harness,
    Stream,
    dumps,
    read_all,
    rows_of,
    schema_of,
)
from tests.mariadb_fixtures import MyDB


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """MySQL sources of this test (stream and snapshot reader), closed at its end."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


# -- UUID / INET4 / INET6 -----------------------------------------------------------------------

UUIDS = [
    "123e4567-e89b-12d3-a456-426614174000",  # version 1
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "0190c5a3-1b2c-7def-8123-456789abcdef",  # version 7
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",  # version 4
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
]
INET6 = [
    "2001:db8::1",
    "::ffff:192.0.2.1",
    "::1.2.3.4",
    "::",
    "::1",
    "1:0:1:1:1:1:1:1",  # a single zero word: MariaDB still writes "::"
    "1:0:0:1:0:0:0:1",
    "fe80::abcd:ef01:2345:6789",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "0:0:1::",
]
INET4 = ["192.0.2.1", "0.0.0.0", "255.255.255.255", "10.1.2.3", "127.0.0.1", "1.0.0.1"]


def test_uuid_and_inet_stream_as_the_servers_text_equal_to_the_snapshot(
    mydb: MyDB, harness: Harness
) -> None:
    mydb.execute("CREATE TABLE ips (k UUID NOT NULL PRIMARY KEY, a INET6, b INET4, u UUID)")
    table = mydb.table("ips")
    source = harness.source(mydb, [table])
    source.open(None)
    for i, k in enumerate(UUIDS):
        a = INET6[i % len(INET6)]
        b = INET4[i % len(INET4)]
        mydb.execute(("INSERT INTO ips VALUES (%s, %s, %s, %s)", (k, a, b, UUIDS[-1 - i])))
    mydb.execute(
        ("INSERT INTO ips VALUES (%s, NULL, NULL, NULL)", ("a0000000-0000-4000-8000-000000000001",))
    )
    for j, a in enumerate(INET6[len(UUIDS) :]):  # the rest of the INET6 values, by update
        mydb.execute(("UPDATE ips SET a = %s WHERE k = %s", (a, UUIDS[j])))
    mydb.execute(("DELETE FROM ips WHERE k = %s", (UUIDS[0],)))
    n = len(UUIDS) + 1 + (len(INET6) - len(UUIDS)) + 1
    events = Stream(source).wait_events(n)
    assert [e.op for e in events] == ["c"] * (len(UUIDS) + 1) + ["u"] * (
        len(INET6) - len(UUIDS)
    ) + ["d"]

    # the schema names the types as the server writes them
    types = {c.name: c.type for c in events[0].schema.columns}
    assert types == {"k": "uuid", "a": "inet6", "b": "inet4", "u": "uuid"}

    # every value as the server's own text (CAST(... AS CHAR)), NULLs as null, keys too
    server = {
        r[0]: {"k": r[0], "a": r[1], "b": r[2], "u": r[3]}
        for r in mydb.query(
            "SELECT CAST(k AS CHAR), CAST(a AS CHAR), CAST(b AS CHAR), CAST(u AS CHAR) FROM ips"
        )
    }
    final: dict[str, dict[str, Any]] = {}
    for e in events:
        assert e.key is not None
        if e.op == "d":
            assert e.before is not None and e.key == {"k": e.before["k"]}
            final.pop(e.key["k"])
        else:
            assert e.after is not None and e.key == {"k": e.after["k"]}
            final[e.key["k"]] = e.after
    assert final == server
    shown = {e.after["a"] for e in events if e.after} - {None}
    assert len(shown) == len(INET6)
    assert {"::ffff:192.0.2.1", "::1.2.3.4", "1::1:1:1:1:1:1", "1:0:0:1::1", "::"} <= shown
    assert events[0].after == {"k": UUIDS[0], "a": INET6[0], "b": INET4[0], "u": UUIDS[-1]}
    assert events[-1].before == {"k": UUIDS[0], "a": "1:0:0:1::1", "b": INET4[0], "u": UUIDS[-1]}

    # the snapshot reads the same rows, value for value, with the same schema (paged by the
    # UUID key, so the cursor goes through the stored bytes)
    reader = harness.reader(source)
    for limit in (2, None):
        chunks = read_all(reader, table, limit)
        rows = rows_of(chunks)
        assert {dumps(k): dumps(a) for k, a in rows} == {
            dumps({"k": k}): dumps(v) for k, v in final.items()
        }
        for chunk in chunks:
            assert chunk.schema == schema_of(events[0])


# -- ENUM / SET members in each charset ----------------------------------------------------------

ENUM_DDL = """
CREATE TABLE members (
  id INT NOT NULL PRIMARY KEY,
  el ENUM('café', 'œuvre', 'plain') CHARACTER SET latin1,
  sl SET('é', 'ü', 'x') CHARACTER SET latin1,
  eu ENUM('café', '€', 'ø') CHARACTER SET utf8mb4,
  su SET('ä', '中文', 'z') CHARACTER SET utf8mb4,
  eb ENUM('café', 'Ø') COLLATE utf8mb4_bin,
  sb SET('é', 'É') COLLATE latin1_bin,
  ex ENUM('é', 'z') CHARACTER SET binary,
  sx SET('ß', 'z') CHARACTER SET binary
)
"""

ENUM_ROWS = [
    "INSERT INTO members VALUES (1, 'café', 'é,ü', '€', 'ä,中文', 'Ø', 'é,É', 'é', 'ß,z')",
    "INSERT INTO members VALUES (2, 'œuvre', 'x', 'café', '', 'café', 'É', 'z', '')",
    "INSERT INTO members (id) VALUES (3)",
]


def _server_rows(db: MyDB) -> dict[int, dict[str, Any]]:
    """The rows as SELECT returns them (text columns as str; a binary charset's bytes as the
    UTF-8 text they are; SETs split at their commas)."""
    out: dict[int, dict[str, Any]] = {}
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM members")
            names = [d[0] for d in cur.description]
            for row in cur.fetchall():
                doc: dict[str, Any] = {}
                for name, value in zip(names, row, strict=True):
                    if isinstance(value, bytes):
                        value = value.decode("utf-8")
                    if name.startswith("s") and value is not None:
                        value = value.split(",") if value else []
                    doc[name] = value
                out[doc["id"]] = doc
    finally:
        conn.close()
    return out


def test_enum_and_set_members_decode_with_the_columns_charset(mydb: MyDB, harness: Harness) -> None:
    mydb.execute(ENUM_DDL)
    table = mydb.table("members")
    source = harness.source(mydb, [table])
    source.open(None)
    for sql in ENUM_ROWS:
        mydb.execute(sql)
    events = Stream(source).wait_events(len(ENUM_ROWS))
    streamed = {e.after["id"]: e.after for e in events if e.after}

    server = _server_rows(mydb)
    assert server[1]["el"] == "café" and server[1]["sx"] == ["ß", "z"]  # the fixture itself
    assert streamed == server

    # the member names in the schema too (as COLUMN_TYPE writes them)
    types = {c.name: c.type for c in events[0].schema.columns}
    assert types["el"] == "enum('café','œuvre','plain')"
    assert types["su"] == "set('ä','中文','z')"
    assert types["ex"] == "enum('é','z')"

    reader = harness.reader(source)
    chunks = read_all(reader, table, None)
    assert {dumps(k): dumps(a) for k, a in rows_of(chunks)} == {
        dumps({"id": i}): dumps(row) for i, row in streamed.items()
    }
    assert chunks[0].schema == schema_of(events[0])
