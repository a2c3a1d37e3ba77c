"""The MySQL/MariaDB snapshot chunk reader (sources/mysql/snapshot.py, cdc.snapshot_api).

Against the real MariaDB fixtures (``mydb``: binlog file positions; ``mydb_any``: file, then GTID
positions). The binlog stream is the reference: a test opens a :class:`MySQLSource` in this
process (its own state file, no service), makes changes with plain SQL, reads the streamed
events with deadlines (never fixed sleeps), reads the same rows with the source's snapshot
reader, and checks that each row is the streamed event's row byte for byte (``orjson.dumps`` of
``key`` and ``after``, since the snapshot core matches rows to events by ``orjson.dumps(key)``)
with the same schema. Then: keyset paging, keys of every kind in the index's order, the
watermarks and visibility of a read, keyless tables and ``describe()``.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from cdc.config import ColumnsConfig, PipelineConfig, ValuesConfig
from cdc.errors import FatalError, RetriableError
from cdc.events import ChangeEvent
from cdc.plugin import PluginContext
from cdc.schema import SchemaRegistry, TableSchema
from cdc.snapshot_api import Chunk, SnapshotReader
from cdc.state import SQLiteStore
from sources.mysql import MySQLConfig, MySQLSource
from sources.mysql.position import BinlogPosition, file_index
from tests.helpers import wait_for
from tests.mariadb_fixtures import MyDB
from tests.mysql_server import LocalMariaDB, free_port

# -- helpers ------------------------------------------------------------------------------------


class Harness:
    """MySQL sources (stream and snapshot reader) of a test, closed at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._sources: list[MySQLSource] = []
        self._readers: list[SnapshotReader] = []
        self._stores: list[SQLiteStore] = []

    def source(
        self,
        db: MyDB,
        tables: list[str],
        name: str = "snap",
        *,
        bigint: str = "number",
        exclude: dict[str, list[str]] | None = None,
        dsn: str | None = None,
    ) -> MySQLSource:
        store = SQLiteStore(self.tmp_path / f"{name}.db")
        self._stores.append(store)
        config = MySQLConfig(dsn=dsn or db.dsn(), tables=tables, heartbeat_s=1)
        pipeline = PipelineConfig(
            name=name,
            source=config,
            sink=None,
            columns=ColumnsConfig(exclude=exclude or {}),
            values=ValuesConfig(bigint=bigint),  # type: ignore[arg-type]
        )
        ctx = PluginContext(
            pipeline, store, structlog.get_logger(), str(self.tmp_path), SchemaRegistry(store, name)
        )
        source = MySQLSource(config, ctx)
        self._sources.append(source)
        return source

    def reader(self, source: MySQLSource) -> SnapshotReader:
        reader = source.snapshot_reader()
        self._readers.append(reader)
        return reader

    def close(self) -> None:
        for r in self._readers:
            r.close()
        for s in self._sources:
            s.close()
        for st in self._stores:
            st.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


class Stream:
    """What an opened source streamed: the events of the listed tables and every position."""

    def __init__(self, source: MySQLSource) -> None:
        self.source = source
        self.events: list[ChangeEvent] = []
        self.positions: list[Any] = []  # (position, number of events delivered before it)

    def pump(self, timeout: float = 0.2) -> None:
        batch = self.source.read(timeout)
        if batch is not None:
            self.events.extend(batch.events)
            if batch.position is not None:
                self.positions.append((batch.position, len(self.events)))

    def wait_events(self, n: int, timeout: float = 30) -> list[ChangeEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            assert time.monotonic() < deadline, (
                f"timed out waiting for {n} streamed events (have {len(self.events)})"
            )
            self.pump()
        return self.events

    def wait_reached(self, high: Any, timeout: float = 30) -> Any:
        """The first position the stream hands over that reaches ``high``."""
        deadline = time.monotonic() + timeout
        while True:
            for position, _ in self.positions:
                if self.source.position_reached(position, high):
                    return position
            assert time.monotonic() < deadline, (
                f"the stream did not reach {high} (last: {self.positions[-1:]})"
            )
            self.pump()


def read_all(reader: SnapshotReader, table: str, limit: int | None) -> list[Chunk]:
    """Every chunk of ``table``, the cursor passed back through JSON as the core stores it."""
    chunks: list[Chunk] = []
    cursor: Any = None
    while True:
        chunk = reader.read_chunk(table, cursor, limit)
        chunks.append(chunk)
        assert len(chunks) < 10_000
        if chunk.done:
            return chunks
        assert chunk.rows, "a chunk that is not done has rows"
        cursor = orjson.loads(orjson.dumps(chunk.cursor))


def rows_of(chunks: list[Chunk]) -> list[tuple[dict[str, Any] | None, dict[str, Any]]]:
    return [row for c in chunks for row in c.rows]


def schema_of(event: ChangeEvent) -> TableSchema:
    return TableSchema(event.schema.name, event.schema.columns, event.schema.key)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _differences(
    read: dict[str, Any], streamed: dict[str, Any] | None
) -> dict[str, tuple[bytes, bytes]]:
    """column -> (read, streamed) JSON where they differ (an assertion message)."""
    streamed = streamed or {}
    names = list(dict.fromkeys([*read, *streamed]))
    return {
        n: (dumps(read.get(n, "<absent>")), dumps(streamed.get(n, "<absent>")))
        for n in names
        if dumps(read.get(n, "<absent>")) != dumps(streamed.get(n, "<absent>"))
    }


# -- (a) values: every type, equal to the stream's ----------------------------------------------

TYPES_DDL = """
CREATE TABLE types (
  id INT NOT NULL PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  iz INT(6) ZEROFILL, bz BIGINT ZEROFILL,
  dec1 DECIMAL(12,2), dec2 DECIMAL(30,10), dec3 DECIMAL(5,0), decz DECIMAL(6,2) ZEROFILL,
  f FLOAT, fd FLOAT(7,3), d DOUBLE, dd DOUBLE(10,2),
  c CHAR(5), vc VARCHAR(50), tx TEXT, tt TINYTEXT, mt MEDIUMTEXT, lt LONGTEXT,
  l1 CHAR(10) CHARACTER SET latin1, lv VARCHAR(20) CHARACTER SET latin1, u3 VARCHAR(10) CHARACTER SET utf8mb3,
  bn BINARY(4), vb VARBINARY(10), bl BLOB, tb TINYBLOB,
  dt DATE, tm TIME(6), tm0 TIME, tm3 TIME(3), dtm DATETIME(6), dtm0 DATETIME, dtm2 DATETIME(2),
  ts TIMESTAMP(6) NULL, ts0 TIMESTAMP NULL, yr YEAR,
  js JSON, en ENUM('a','b','it''s'), enl ENUM('cafe','b\\\\c') CHARACTER SET latin1, st SET('x','y','z'),
  b10 BIT(10), b1 BIT(1), b64 BIT(64),
  g POINT, gg GEOMETRY, uu UUID, i6 INET6, i4 INET4
)
"""

JSON_TEXT = '{"a": [1, 2.50, "x"],\n "big": 123456789012345678901234567890, "s": "é😀"}'

TYPE_ROWS = [
    # every column set, extremes
    (
        """INSERT INTO types VALUES (1,
        -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
        -9223372036854775808, 18446744073709551615, 42, 7,
        -1234567890.12, 12345678901234567890.0123456789, -99999, 1.5,
        1.1, 12.345, -2.5e-300, 0.1,
        'ab', 'héllo 😀', 'text', 'tiny', 'medium', REPEAT('x', 70000),
        'café', 'œuvre €', 'ünï',
        x'01', x'00ff', x'deadbeef', x'',
        '2026-11-28', '-838:59:59', '838:59:59', '-00:00:01.5', '2026-11-28 13:45:01.123456', '2026-11-28 13:45:01', '2026-11-28 13:45:01.07',
        '2026-11-28 12:45:01.123456', '2038-01-19 03:14:07', 2026,
        %s, 'it''s', 'b\\\\c', 'x,z', b'0000001011', b'1', x'ffffffffffffffff',
        POINT(1, 2), ST_GeomFromText('LINESTRING(0 0, 1 1)'), '123e4567-e89b-12d3-a456-426614174000', '2001:db8::1', '10.1.2.3')""",
        (JSON_TEXT,),
    ),
    # all NULL
    ("INSERT INTO types (id) VALUES (2)", None),
    # zeros, empties, zero dates
    (
        """INSERT INTO types (id, ti, bi, biu, iz, bz, dec1, dec2, dec3, decz, f, fd, d, dd, c, vc, tx, bn, vb, bl,
        dt, tm, tm0, tm3, dtm, dtm0, dtm2, ts, ts0, yr, js, en, enl, st, b10, b1, b64)
        VALUES (3, 0, 0, 0, 0, 0, 0, -0.0000000001, 0, 0, 0, 0, 0, 0, '', '', '', x'', x'', x'',
        '0000-00-00', '00:00:00', '-00:00:00.000001', '00:00:00', '0000-00-00 00:00:00', '2026-11-00 10:00:00',
        '0000-00-00 00:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', 0, '[]', 'zzz', 'cafe', '', b'0', b'0', 0)""",
        None,
    ),
    # partly zero dates, odd floats, JSON scalars, year 0 with a real date
    (
        """INSERT INTO types (id, dt, dtm, dtm2, tm, f, d, dd, fd, js, yr, st, bi, biu)
        VALUES (4, '2026-00-15', '2026-11-00 10:00:00.5', '0000-01-01 00:00:00.99', '23:59:59.999999',
        16777217, 0.1e0 + 0.2e0, -12345678.91, -9999.999, '"just a string"', 1901, 'y', -1, 9223372036854775808)""",
        None,
    ),
    (
        """INSERT INTO types (id, f, d, js, dt, dtm, ts) VALUES (5, 3.4028234e38, 1.7976931348623157e308, 'null',
        '0000-01-01', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01')""",
        None,
    ),
    (
        "INSERT INTO types (id, f, d, js) VALUES (6, -1.17549435e-38, 5e-324, '12345678901234567890.000')",
        None,
    ),
    ('INSERT INTO types (id, f, d, js) VALUES (7, 0.3, 1e22, \'{"k":"v\\\\n","e":[]}\')', None),
]

KEYED_DDL = (
    "CREATE TABLE ukey (z INT, x INT NOT NULL, y VARCHAR(10) NOT NULL, v TEXT, UNIQUE KEY uz (z), UNIQUE KEY uxy (y, x))",
    "CREATE TABLE ckey (a INT NOT NULL, b VARCHAR(10) NOT NULL, c BIGINT UNSIGNED NOT NULL, v INT, PRIMARY KEY (c, b, a))",
)


def _insert_types(db: MyDB) -> None:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00', sql_mode = ''")
            for sql, args in TYPE_ROWS:
                cur.execute(sql, args)
            cur.execute(
                "INSERT INTO ukey VALUES (1, 1, 'b', 'one'), (NULL, 2, 'a', 'two'), (3, 1, 'a', NULL)"
            )
            cur.execute(
                "INSERT INTO ckey VALUES (1, 'x', 18446744073709551615, 1), (2, 'x', 1, 2), (1, 'y', 1, 3), (1, 'x', 1, 4)"
            )
    finally:
        conn.close()


@pytest.mark.parametrize(
    "options",
    [{}, {"bigint": "string"}, {"exclude": ["lt", "tx", "js", "g"]}],
    ids=["default", "bigint_string", "exclude"],
)
def test_chunk_rows_are_the_streamed_rows_value_for_value(
    mydb: MyDB, harness: Harness, options: dict[str, Any]
) -> None:
    mydb.execute(TYPES_DDL, *KEYED_DDL)
    tables = [mydb.table("types"), mydb.table("ukey"), mydb.table("ckey")]
    exclude = {tables[0]: options["exclude"]} if "exclude" in options else None
    source = harness.source(mydb, tables, bigint=options.get("bigint", "number"), exclude=exclude)
    source.open(None)
    _insert_types(mydb)
    stream = Stream(source)
    n_rows = len(TYPE_ROWS) + 3 + 4
    events = stream.wait_events(n_rows)
    assert [e.op for e in events] == ["c"] * n_rows

    reader = harness.reader(source)
    for table in tables:
        streamed = [e for e in events if e.schema.name == table]
        assert streamed
        for limit in (2, None):  # paged (cursors), and the whole table in one read
            chunks = read_all(reader, table, limit)
            rows = rows_of(chunks)
            assert len(rows) == len(streamed)
            by_key = {dumps(e.key): e for e in streamed}
            for key, after in rows:
                event = by_key.pop(dumps(key))  # the same key, byte for byte
                assert dumps(after) == dumps(event.after), (
                    table,
                    key,
                    _differences(after, event.after),
                )
                if table != tables[0]:  # (JSON values are orjson.Fragments: no == for them)
                    assert after == event.after
            assert by_key == {}
            for chunk in chunks:
                assert chunk.schema == schema_of(streamed[0])
                assert chunk.schema.fingerprint() == schema_of(streamed[0]).fingerprint()

    # a few values spelled out, so that "equal to the stream" is not "equally wrong"
    info = reader.describe(tables[0])
    assert info.key == ("id",)
    (row1,) = [a for k, a in rows_of(read_all(reader, tables[0], 1)) if k == {"id": 1}]
    big = "18446744073709551615" if options.get("bigint") == "string" else 18446744073709551615
    assert (row1["biu"], row1["iz"], row1["decz"], row1["f"], row1["fd"], row1["dd"]) == (
        big,
        42,
        "1.50",
        1.1,
        12.345,
        0.1,
    )
    assert (row1["tm"], row1["tm3"], row1["dtm2"], row1["ts"]) == (
        "-838:59:59.000000",
        "-00:00:01.500000",
        "2026-11-28T13:45:01.070000",
        "2026-11-28T12:45:01.123456Z",
    )
    assert (row1["enl"], row1["st"], row1["b10"], row1["uu"], row1["i4"]) == (
        "b\\c",
        ["x", "z"],
        "0000001011",
        "123e4567-e89b-12d3-a456-426614174000",
        "10.1.2.3",
    )
    if "exclude" in options:
        assert not {"lt", "tx", "js", "g"} & set(row1)
    else:
        assert row1["lt"] == "x" * 70000
        assert b'"js":{"a": [1, 2.50, "x"],  "big": 123456789012345678901234567890' in dumps(row1)
    assert reader.describe(tables[1]).key == ("y", "x")  # the first unique NOT NULL index
    assert reader.describe(tables[2]).key == ("c", "b", "a")


def test_schema_follows_an_alter_between_chunks(mydb: MyDB, harness: Harness) -> None:
    mydb.execute(
        "CREATE TABLE t (id INT PRIMARY KEY, a INT)", "INSERT INTO t VALUES (1, 1), (2, 2), (3, 3)"
    )
    table = mydb.table("t")
    source = harness.source(mydb, [table])
    source.open(None)
    reader = harness.reader(source)
    first = reader.read_chunk(table, None, 2)
    assert [c.name for c in first.schema.columns] == ["id", "a"]
    mydb.execute(
        "ALTER TABLE t ADD COLUMN b ENUM('x','y') NOT NULL DEFAULT 'y', MODIFY a BIGINT",
        "INSERT INTO t VALUES (4, 4, 'x')",
    )
    (event,) = Stream(source).wait_events(1)
    second = reader.read_chunk(table, orjson.loads(orjson.dumps(first.cursor)), 2)
    assert second.schema == schema_of(event)
    assert second.rows == [
        ({"id": 3}, {"id": 3, "a": 3, "b": "y"}),
        ({"id": 4}, {"id": 4, "a": 4, "b": "x"}),
    ]
    assert dumps(second.rows[1][1]) == dumps(event.after)


# -- (b) keyset paging --------------------------------------------------------------------------


def test_keyset_paging_of_a_composite_key(mydb: MyDB, harness: Harness) -> None:
    mydb.execute(
        "CREATE TABLE pages (a INT NOT NULL, b VARCHAR(20) NOT NULL, v INT, PRIMARY KEY (b, a))",
        "INSERT INTO pages SELECT seq % 7, CONCAT('k', seq DIV 7), seq FROM seq_1_to_2500",
    )
    table = mydb.table("pages")
    reader = harness.reader(harness.source(mydb, [table]))
    assert reader.describe(table).key == ("b", "a")
    chunks = read_all(reader, table, 1000)
    assert [len(c.rows) for c in chunks] == [1000, 1000, 500]
    assert [c.done for c in chunks] == [False, False, True]
    keys = [dumps(k) for k, _ in rows_of(chunks)]
    assert len(set(keys)) == 2500
    expected = [{"b": b, "a": a} for b, a in mydb.query("SELECT b, a FROM pages ORDER BY b, a")]
    assert [k for k, _ in rows_of(chunks)] == expected
    assert all(list(k) == ["b", "a"] for k, _ in rows_of(chunks))
    for c in chunks[:-1]:  # the cursor names the chunk's last row, and survives JSON
        assert orjson.loads(orjson.dumps(c.cursor)) == c.cursor
        assert c.rows[-1][0] is not None
    assert {c.read_token for c in chunks} == {chunks[0].read_token}  # nothing changed in between
    # an exact multiple: the last chunk is empty and done, and keeps the cursor it was given
    mydb.execute("DELETE FROM pages WHERE v > 2000")
    chunks = read_all(reader, table, 1000)
    assert [len(c.rows) for c in chunks] == [1000, 1000, 0]
    assert chunks[-1].cursor == orjson.loads(orjson.dumps(chunks[-2].cursor))


# -- (c) keys of every kind page in the index's order ------------------------------------------------

KEY_TABLES = {
    "k_utf8": (
        "k VARCHAR(20) COLLATE utf8mb4_general_ci",
        [
            "a",
            "B",
            "c",
            " x",
            "x y",
            "😀",
            "it's",
            "back\\slash",
            "nul\0byte",
            "Ω",
            "zz",
            "Zza",
            "é",
        ],
    ),
    "k_bin": (
        "k VARBINARY(8)",
        [b"", b"\x00", b"\x00\x00", b"\x7f", b"\xff", b"a", b"A", b"\xff\x00", b"\x00\xff"],
    ),
    "k_binary": ("k BINARY(3)", [b"\x00", b"\x01", b"\xff\xff\xff", b"a", b"ab"]),
    "k_latin1": (
        "k VARCHAR(10) CHARACTER SET latin1 COLLATE latin1_swedish_ci",
        ["a", "z", "ä", "é", "ö", "å", "b", "Ü"],
    ),
    "k_utf8bin": ("k CHAR(5) COLLATE utf8mb4_bin", ["a", "B", "b", "A", "é", "E", "~"]),
    "k_uuid": (
        "k UUID",
        [
            "ffffffff-0000-4000-8000-000000000000",
            "00000000-ffff-4000-8000-000000000000",
            "11111111-2222-1333-8444-555555555555",
            "11111111-2222-1334-8444-555555555555",
            "11111112-2222-1333-8444-555555555555",
            "00000000-0000-0000-0000-000000000000",
        ],
    ),
    "k_ubig": (
        "k BIGINT UNSIGNED",
        [0, 1, 9223372036854775807, 9223372036854775808, 18446744073709551615],
    ),
    "k_int": ("k INT", [-2147483648, -1, 0, 1, 2147483647]),
    "k_dec": (
        "k DECIMAL(20,4)",
        ["-99999.9999", "-0.0001", "0", "0.0001", "12.5", "1234567890123456.0000"],
    ),
    "k_dt": (
        "k DATETIME(6)",
        [
            "1000-01-01 00:00:00",
            "2026-11-28 13:45:01.123456",
            "2026-11-28 13:45:01.123457",
            "9999-12-31 23:59:59.999999",
        ],
    ),
    "k_ts": (
        "k TIMESTAMP(3)",
        ["1970-01-01 00:00:01", "2026-03-29 01:30:00.5", "2038-01-19 03:14:07.999"],
    ),
    "k_time": ("k TIME", ["-838:59:59", "-00:00:01", "00:00:00", "12:00:00", "838:59:59"]),
    "k_enum": ("k ENUM('z','a','m')", ["a", "m", "z"]),
    "k_set": ("k SET('p','q','r')", ["", "p", "q", "p,q", "r", "p,r", "q,r", "p,q,r"]),
    "k_bit": ("k BIT(12)", [0, 1, 255, 256, 4095]),
    "k_year": ("k YEAR", [1901, 2000, 2155]),
    "k_float": ("k FLOAT", [-3.5, 0.1, 1.1, 16777216, 3.4e38]),
}


@pytest.mark.parametrize("name", sorted(KEY_TABLES))
def test_keys_of_every_kind_page_in_the_index_order(
    mydb: MyDB, harness: Harness, name: str
) -> None:
    column, values = KEY_TABLES[name]
    mydb.execute(f"CREATE TABLE {name} ({column} NOT NULL PRIMARY KEY, n INT)")
    conn = mydb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            for n, v in enumerate(values):
                cur.execute(f"INSERT INTO {name} VALUES (%s, %s)", (v, n))
    finally:
        conn.close()
    table = mydb.table(name)
    source = harness.source(mydb, [table])
    reader = harness.reader(source)
    # one ordered read of everything is the index's order; pages of 1, 2 and 3 rows give it too
    (whole,) = read_all(reader, table, 100)
    assert len(whole.rows) == len(values)
    assert [n for (n,) in mydb.query(f"SELECT n FROM {name} ORDER BY k")] == [
        a["n"] for _, a in whole.rows
    ]
    for limit in (1, 2, 3):
        chunks = read_all(reader, table, limit)
        assert rows_of(chunks) == whole.rows, limit
        assert sum(len(c.rows) for c in chunks) == len(values)


def test_a_composite_key_of_enum_and_binary_pages_in_order(mydb: MyDB, harness: Harness) -> None:
    mydb.execute(
        "CREATE TABLE ce (e ENUM('z','a') NOT NULL, b VARBINARY(4) NOT NULL, d DATE NOT NULL, PRIMARY KEY (e, b, d))",
        "INSERT INTO ce SELECT IF(seq % 2, 'a', 'z'), UNHEX(LPAD(HEX(seq % 5), 2, '0')), '2026-01-01' + INTERVAL (seq % 3) DAY "
        "FROM seq_1_to_30",
    )
    table = mydb.table("ce")
    reader = harness.reader(harness.source(mydb, [table]))
    expected = [
        (e, b, d.isoformat()) for e, b, d in mydb.query("SELECT e, b, d FROM ce ORDER BY e, b, d")
    ]
    chunks = read_all(reader, table, 4)
    got = [(k["e"], base64.b64decode(k["b"]), k["d"]) for k, _ in rows_of(chunks)]
    assert got == expected


# -- (d) watermarks and visibility -------------------------------------------------------------------


def _master(db: MyDB) -> BinlogPosition:
    file, pos = db.server.query("SHOW MASTER STATUS")[0][:2]
    return BinlogPosition(str(file), int(pos))


def _order(event: ChangeEvent) -> tuple[int, int]:
    return (file_index(event.source["file"]), event.source["pos"])


def test_visibility_and_high_watermark(mydb_any: MyDB, harness: Harness) -> None:
    db = mydb_any
    db.execute("CREATE TABLE vis (id INT PRIMARY KEY, v INT)")
    table = db.table("vis")
    source = harness.source(db, [table])
    start = source.open(None)
    stream = Stream(source)
    reader = harness.reader(source)

    db.execute("INSERT INTO vis VALUES (1, 1), (2, 1)")  # T1: before the read
    after_t1 = _master(db)
    chunk = reader.read_chunk(table, None, 100)
    # the stream reaches the high watermark with T1, without waiting for anything later
    reached = stream.wait_reached(chunk.high)
    assert [n for p, n in stream.positions if p is reached] == [2]
    assert not source.position_reached(start, chunk.high)
    db.execute("UPDATE vis SET v = 2 WHERE id = 1")  # T2: after the read
    after_t2 = _master(db)
    db.execute("INSERT INTO vis VALUES (3, 1)")  # T3
    t1a, t1b, t2, t3 = stream.wait_events(4)

    assert chunk.rows == [({"id": 1}, {"id": 1, "v": 1}), ({"id": 2}, {"id": 2, "v": 1})]
    assert chunk.visible(t1a) and chunk.visible(t1b)
    assert not chunk.visible(t2) and not chunk.visible(t3)
    high = chunk.high
    assert high.order >= after_t1.order  # everything committed before the read
    assert high.order <= _order(t2) < after_t2.order  # nothing after: T2 starts at or after it
    assert high.order < after_t2.order
    assert chunk.read_token == f"{file_index(high.file)}.{high.pos}"
    assert type(reached).__name__ == ("GtidPosition" if db.gtid else "BinlogPosition")

    # where rows emitted at a stream position stand, and their source block
    assert chunk.at(reached) == (file_index(reached.file), reached.pos, -1)
    block = chunk.source_block(reached, "snap-1")
    assert block == {
        "connector": "mysql", "pipeline": "snap", "db": db.name, "schema": db.name, "table": "vis",
        "ts_ms": block["ts_ms"], "tx": None, "file": reached.file, "pos": reached.pos,
        "server_id": 1, "snapshot": True, "snapshot_id": "snap-1",
    }  # fmt: skip
    assert abs(block["ts_ms"] / 1000 - time.time()) < 120
    assert chunk.source_block(reached, "snap-1") is not block


def test_visible_events_fold_into_exactly_the_rows_read_under_concurrent_writes(
    mydb_any: MyDB, harness: Harness
) -> None:
    db = mydb_any
    db.execute("CREATE TABLE busy (id INT PRIMARY KEY, v INT NOT NULL)")
    table = db.table("busy")
    source = harness.source(db, [table])
    source.open(None)
    stream = Stream(source)
    reader = harness.reader(source)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        rnd = random.Random(7)
        conn = db.connect()
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    k = rnd.randrange(60)
                    op = rnd.random()
                    if op < 0.5:
                        cur.execute(
                            "INSERT INTO busy VALUES (%s, 0) ON DUPLICATE KEY UPDATE v = v + 1",
                            (k,),
                        )
                    elif op < 0.8:
                        cur.execute("BEGIN")
                        cur.execute(
                            "UPDATE busy SET v = v + 10 WHERE id BETWEEN %s AND %s", (k, k + 5)
                        )
                        cur.execute("DELETE FROM busy WHERE id = %s", (rnd.randrange(60),))
                        cur.execute("COMMIT")
                    else:
                        cur.execute("DELETE FROM busy WHERE id = %s", (k,))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    chunks = []
    try:
        wait_for(
            lambda: (stream.pump(), len(stream.events) > 50)[1],
            30,
            interval=0,
            what="writes streamed",
        )
        for _ in range(5):
            chunks.append(reader.read_chunk(table, None, 1000))
            for _ in range(10):
                stream.pump(0.05)
    finally:
        stop.set()
        writer.join(30)
    assert not errors, errors
    for chunk in chunks:
        stream.wait_reached(chunk.high)
        state: dict[bytes, dict[str, Any]] = {}
        seen = [e for e in stream.events if chunk.visible(e)]
        # visibility is a prefix of the stream: every event it saw comes before every one it did not
        flags = [chunk.visible(e) for e in stream.events]
        assert flags == sorted(flags, reverse=True)
        for e in seen:
            if e.op == "d":
                state.pop(dumps(e.key), None)
            else:
                state[dumps(e.key)] = e.after  # type: ignore[assignment]
        assert {dumps(k): a for k, a in chunk.rows} == state
        assert all(_order(e) < chunk.high.order for e in seen)


def test_high_is_reached_after_a_binlog_rotation_without_another_transaction(
    mydb_any: MyDB, harness: Harness
) -> None:
    db = mydb_any
    db.execute("CREATE TABLE rot (id INT PRIMARY KEY)", "INSERT INTO rot VALUES (1)")
    table = db.table("rot")
    source = harness.source(db, [table])
    source.open(None)
    stream = Stream(source)
    db.execute("FLUSH BINARY LOGS")
    newest = _master(db)
    chunk = harness.reader(source).read_chunk(table, None, 10)
    assert chunk.rows == [({"id": 1}, {"id": 1})]
    assert chunk.high.file == newest.file
    reached = stream.wait_reached(chunk.high, timeout=20)
    assert reached.file == newest.file


# -- (e) keyless tables ------------------------------------------------------------------------------


def test_a_keyless_table_is_read_whole(mydb: MyDB, harness: Harness) -> None:
    mydb.execute(
        "CREATE TABLE nokey (msg VARCHAR(20), n INT, UNIQUE KEY (n))",
        "INSERT INTO nokey VALUES ('a', 1), ('a', 2), ('b', NULL), ('b', NULL), (NULL, 5)",
    )
    table = mydb.table("nokey")
    source = harness.source(mydb, [table])
    reader = harness.reader(source)
    assert reader.describe(table).key == ()  # a unique index with a nullable column is no key
    chunk = reader.read_chunk(table, None, None)
    assert chunk.done and chunk.cursor is None
    assert all(k is None for k, _ in chunk.rows)
    assert sorted(dumps(a) for _, a in chunk.rows) == sorted(
        dumps(a)
        for a in [
            {"msg": "a", "n": 1},
            {"msg": "a", "n": 2},
            {"msg": "b", "n": None},
            {"msg": "b", "n": None},
            {"msg": None, "n": 5},
        ]
    )
    assert chunk.schema.key == ()
    # the same rows streamed: equal, key null
    source.open(None)
    mydb.execute("INSERT INTO nokey VALUES ('c', 9)")
    (event,) = Stream(source).wait_events(1)
    again = reader.read_chunk(table, None, None)
    assert event.key is None and again.schema == schema_of(event)
    assert dumps(event.after) in [dumps(a) for _, a in again.rows]


# -- (f) describe() and errors -------------------------------------------------------------------------


def test_describe_names_the_key_and_refuses_what_cannot_be_read(
    mariadb: LocalMariaDB, mydb: MyDB, harness: Harness
) -> None:
    mydb.execute(
        "CREATE TABLE k2 (a INT NOT NULL, b CHAR(3) NOT NULL, v INT, PRIMARY KEY (b, a))",
        "INSERT INTO k2 VALUES (1, 'x', 1), (2, 'y', 2)",
        "ANALYZE TABLE k2",
        "CREATE TABLE secret (id INT PRIMARY KEY)",
    )
    table = mydb.table("k2")
    source = harness.source(mydb, [table])
    reader = harness.reader(source)
    info = reader.describe(table)
    assert (info.name, info.key) == (table, ("b", "a"))
    assert isinstance(info.rows_estimated, int) and info.rows_estimated >= 0

    with pytest.raises(FatalError) as missing:
        reader.describe(mydb.table("nope"))
    assert missing.value.kind == "snapshot_refused" and "does not exist" in str(missing.value)
    with pytest.raises(FatalError) as missing_read:
        reader.read_chunk(mydb.table("nope"), None, 10)
    assert missing_read.value.kind == "snapshot_refused"
    reader.describe(table)  # the connection is still good after a refusal

    # a user without SELECT on the table
    user = f"s{mydb.name[-8:]}"
    mariadb.execute(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'",
        f"GRANT SELECT ON `{mydb.name}`.`k2` TO '{user}'@'%'",
    )
    try:
        limited = harness.reader(harness.source(mydb, [table], "limited", dsn=mydb.dsn(user, "pw")))
        assert limited.describe(table).key == ("b", "a")
        with pytest.raises(FatalError) as denied:
            limited.describe(mydb.table("secret"))
        assert denied.value.kind == "snapshot_refused"
        assert "GRANT SELECT ON" in str(denied.value) and "pw" not in str(denied.value)
    finally:
        mariadb.execute(f"DROP USER '{user}'@'%'")

    # a key column excluded by columns.exclude
    excluded = harness.reader(harness.source(mydb, [table], "excl", exclude={table: ["a"]}))
    with pytest.raises(FatalError) as bad:
        excluded.read_chunk(table, None, 10)
    assert "key column" in str(bad.value)

    # nobody listening: retriable
    port = free_port()
    unreachable = harness.reader(
        harness.source(
            mydb, [table], "down", dsn=f"mysql://root@127.0.0.1:{port}?connect_timeout=2"
        )
    )
    with pytest.raises(RetriableError):
        unreachable.describe(table)
    unreachable.close()


def test_a_lost_connection_is_retriable_and_the_next_read_reconnects(
    mydb: MyDB, harness: Harness
) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1), (2)")
    table = mydb.table("t")
    reader = harness.reader(harness.source(mydb, [table]))
    assert len(reader.read_chunk(table, None, 10).rows) == 2
    mydb.server.execute(f"KILL {reader._conn.thread_id()}")  # type: ignore[attr-defined]
    with pytest.raises(RetriableError):
        reader.read_chunk(table, None, 10)
    assert len(reader.read_chunk(table, None, 10).rows) == 2
    reader.close()
    reader.close()


def test_rows_of_16_mib_and_more_arrive_whole(
    mariadb: LocalMariaDB, mydb: MyDB, harness: Harness
) -> None:
    """A row of 16 MiB or more comes split over several protocol packets."""
    (before,) = mariadb.query("SELECT @@GLOBAL.max_allowed_packet")[0]
    mariadb.execute("SET GLOBAL max_allowed_packet = 67108864")
    try:
        mydb.execute(
            "CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB, t LONGTEXT)",
            "INSERT INTO big VALUES (1, 'a', 'x'), (2, REPEAT('b', 17000000), REPEAT('é', 8400000)), "
            "(3, REPEAT('c', 16777210), 'z'), (4, 'd', REPEAT('y', 300000))",
        )
        table = mydb.table("big")
        reader = harness.reader(harness.source(mydb, [table]))
        for limit in (1, 3, None):
            chunks = read_all(reader, table, limit)
            got = [
                (k, len(base64.b64decode(a["b"])), len(a["t"]), a["t"][:2])
                for k, a in rows_of(chunks)
            ]
            assert sorted(got, key=lambda g: g[0]["id"]) == [  # type: ignore[index]
                ({"id": 1}, 1, 1, "x"),
                ({"id": 2}, 17000000, 8400000, "éé"),
                ({"id": 3}, 16777210, 1, "z"),
                ({"id": 4}, 1, 300000, "yy"),
            ]
    finally:
        mariadb.execute(f"SET GLOBAL max_allowed_packet = {int(before)}")
