"""What the MySQL/MariaDB -> file pipeline delivers (CONTRACT.md sections 2-4 and 7).

Every test runs the real ``cdc run`` against a fresh database on MariaDB 10.11 (the fixtures in
``conftest.py``: ``mydb`` with binlog file positions, ``mydb_any`` with file and then GTID
positions), makes changes with plain SQL once the pipeline is ``running`` (its start position
is fixed from then on), waits for the file sink to hold them (deadlines, never fixed sleeps)
and checks the events exactly.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import (
    CdcService,
    dedupe,
    find_log,
    fold,
    log_records,
    read_complete_events,
    read_events,
    read_schemas,
    run_until_exit,
    wait_for,
    write_config,
)
from tests.mariadb_fixtures import MyDB
from tests.mysql_server import LocalMariaDB
from tests.mysql_server import free_port as another_port

# -- helpers ------------------------------------------------------------------------------------


def my_pipeline(name: str, dsn: str, tables: list[str], out: Path, **extra: Any) -> dict[str, Any]:
    source = {"type": "mysql", "dsn": dsn, "tables": tables, "heartbeat_s": 1}
    source.update(extra.pop("source", {}))
    p: dict[str, Any] = {
        "name": name,
        "source": source,
        "snapshot": {"mode": "never"},
        "sink": {"type": "file", "path": str(out)},
    }
    p.update(extra)
    return p


def wait_events(out: Path, n: int, svc: CdcService | None = None, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until the sink holds at least ``n`` events; every schema version an event uses must
    already be in schemas.jsonl."""

    def enough() -> list[dict[str, Any]] | None:
        if svc is not None and svc.proc.poll() is not None:
            raise AssertionError(f"cdc exited with {svc.proc.returncode}:\n{svc.logs()[-4000:]}")
        events = read_complete_events(out)
        have = {(s["name"], s["version"]) for s in read_schemas(out)}
        for e in events:
            assert (e["schema"]["name"], e["schema"]["version"]) in have, e["id"]
        return events if len(events) >= n else None

    try:
        return wait_for(enough, timeout, what=f"{n} events in {out}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        have = len(read_complete_events(out)) if out.exists() else 0
        logs = svc.logs()[-4000:] if svc is not None else ""
        raise AssertionError(f"{exc}; have {have}\n--- cdc log ---\n{logs}") from None


@contextmanager
def service(tmp_path: Path, port: int, pipelines: list[dict[str, Any]]) -> Iterator[CdcService]:
    """`cdc run` on these pipelines until they run; stopped (exit 0) at the end."""
    config = write_config(tmp_path, pipelines, api_port=port)
    with CdcService(config) as svc:
        for p in pipelines:
            svc.wait_state(p["name"], "running")
        yield svc
        code = svc.stop()
        assert code == 0, svc.logs()[-4000:]


def schema_defs(out: Path, table: str) -> dict[int, dict[str, Any]]:
    defs: dict[int, dict[str, Any]] = {}
    for d in read_schemas(out):
        if d["name"] == table:
            defs.setdefault(d["version"], d)
    return defs


def col_types(definition: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["type"] for c in definition["columns"]}


def assert_ids_stable(events: list[dict[str, Any]]) -> None:
    """A re-delivered event is byte-identical but for the emission time."""
    by_id: dict[str, dict[str, Any]] = {}
    for e in events:
        e2 = {k: v for k, v in e.items() if k != "ts_ms"}
        if e["id"] in by_id:
            assert by_id[e["id"]] == e2, f"{e['id']} delivered twice with different content"
        by_id[e["id"]] = e2


def table_state(db: MyDB, table: str, key: list[str], columns: str) -> dict[bytes, dict[str, Any]]:
    """Rows as fold() shows them, for tables of ints and strings."""
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {columns} FROM {table}")
            names = [d[0] for d in cur.description]
            out = {}
            for row in cur.fetchall():
                doc = dict(zip(names, row, strict=True))
                out[orjson.dumps({k: doc[k] for k in key}, option=orjson.OPT_SORT_KEYS)] = doc
            return out
    finally:
        conn.close()


ID_RE = re.compile(r"^mysql:mysql-bin\.\d{6}:\d+:\d+$")


# -- 1. values ----------------------------------------------------------------------------------

TYPES_DDL = """
CREATE TABLE types (
  id INT NOT NULL PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  dec1 DECIMAL(12,2), dec2 DECIMAL(30,10), dec3 DECIMAL(5,0),
  f FLOAT, d DOUBLE,
  c CHAR(5), vc VARCHAR(50), tx TEXT, lt LONGTEXT, l1 CHAR(10) CHARACTER SET latin1,
  bn BINARY(4), vb VARBINARY(10), bl BLOB,
  dt DATE, tm TIME(6), tm0 TIME, dtm DATETIME(6), dtm0 DATETIME, ts TIMESTAMP(6) NULL, yr YEAR,
  js JSON, en ENUM('a','b','it''s'), st SET('x','y','z'),
  b10 BIT(10), b1 BIT(1), b64 BIT(64)
)
"""

EXPECTED_TYPES = {
    "id": "int",
    "ti": "tinyint",
    "tiu": "tinyint unsigned",
    "si": "smallint",
    "siu": "smallint unsigned",
    "mi": "mediumint",
    "miu": "mediumint unsigned",
    "i": "int",
    "iu": "int unsigned",
    "bi": "bigint",
    "biu": "bigint unsigned",
    "dec1": "decimal(12,2)",
    "dec2": "decimal(30,10)",
    "dec3": "decimal(5,0)",
    "f": "float",
    "d": "double",
    "c": "char(5)",
    "vc": "varchar(50)",
    "tx": "text",
    "lt": "longtext",
    "l1": "char(10)",
    "bn": "binary(4)",
    "vb": "varbinary(10)",
    "bl": "blob",
    "dt": "date",
    "tm": "time(6)",
    "tm0": "time",
    "dtm": "datetime(6)",
    "dtm0": "datetime",
    "ts": "timestamp(6)",
    "yr": "year",
    "js": "json",
    "en": "enum('a','b','it''s')",
    "st": "set('x','y','z')",
    "b10": "bit(10)",
    "b1": "bit(1)",
    "b64": "bit(64)",
}

JSON_TEXT = '{"a": [1, 2.50, "x"],\n "big": 123456789012345678901234567890, "s": "é😀"}'

ROW1 = """INSERT INTO types VALUES (1,
  -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
  -9223372036854775808, 18446744073709551615,
  -1234567890.12, 12345678901234567890.0123456789, -99999,
  1.1, -2.5e-300,
  'ab', 'héllo 😀', 'text', REPEAT('x', 70000), 'café',
  x'01', x'00ff', x'deadbeef',
  '2026-11-28', '-838:59:59', '838:59:59', '2026-11-28 13:45:01.123456', '2026-11-28 13:45:01',
  '2026-11-28 12:45:01.123456', 2026,
  %s, 'it''s', 'x,z', b'0000001011', b'1', x'ffffffffffffffff')"""

ROW3 = """INSERT INTO types (id, dec1, dec2, dec3, f, d, dt, tm, tm0, dtm, dtm0, ts, yr, en, st, b10, c, bn, vb)
  VALUES (3, 0, -0.0000000001, 0, 0, 0, '0000-00-00', '-00:00:01.5', '00:00:00',
  '0000-00-00 00:00:00', '2026-11-00 10:00:00', '0000-00-00 00:00:00', 0, 'zzz', '', b'0',
  '', x'', x'')"""

ROW4 = """INSERT INTO types (id, dt, dtm, tm) VALUES (4, '2026-00-15', '2026-11-00 10:00:00.5', '23:59:59.999999')"""

EXPECTED_ROW1: dict[str, Any] = {
    "id": 1,
    "ti": -128,
    "tiu": 255,
    "si": -32768,
    "siu": 65535,
    "mi": -8388608,
    "miu": 16777215,
    "i": -2147483648,
    "iu": 4294967295,
    "bi": -9223372036854775808,
    "biu": 18446744073709551615,
    "dec1": "-1234567890.12",
    "dec2": "12345678901234567890.0123456789",
    "dec3": "-99999",
    "f": 1.1,
    "d": -2.5e-300,
    "c": "ab",
    "vc": "héllo 😀",
    "tx": "text",
    "lt": "x" * 70000,
    "l1": "café",
    "bn": "AQAAAA==",
    "vb": "AP8=",
    "bl": "3q2+7w==",
    "dt": "2026-11-28",
    "tm": "-838:59:59.000000",
    "tm0": "838:59:59.000000",
    "dtm": "2026-11-28T13:45:01.123456",
    "dtm0": "2026-11-28T13:45:01.000000",
    "ts": "2026-11-28T12:45:01.123456Z",
    "yr": 2026,
    "en": "it's",
    "st": ["x", "z"],
    "b10": "0000001011",
    "b1": "1",
    "b64": "1" * 64,
}

EXPECTED_ROW3: dict[str, Any] = {
    "dec1": "0.00",
    "dec2": "-0.0000000001",
    "dec3": "0",
    "f": 0.0,
    "d": 0.0,
    "dt": "0000-00-00",
    "tm": "-00:00:01.500000",
    "tm0": "00:00:00.000000",
    "dtm": "0000-00-00 00:00:00.000000",
    "dtm0": "2026-11-00 10:00:00",
    "ts": "0000-00-00 00:00:00.000000",
    "yr": 0,
    "en": "",
    "st": [],
    "b10": "0000000000",
    "c": "",
    "bn": "AAAAAA==",
    "vb": "",
    "js": None,
    "ti": None,
    "biu": None,
}


def test_every_type_maps_as_the_contract_says(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute(TYPES_DDL)
    table = mydb.table("types")
    out, out2 = tmp_path / "out", tmp_path / "out2"
    pipelines = [
        my_pipeline("types", mydb.dsn(), [table], out),
        my_pipeline(
            "types_str",
            mydb.dsn(),
            [table],
            out2,
            values={"bigint": "string"},
            columns={"exclude": {table: ["lt", "tx"]}},
        ),
    ]
    with service(tmp_path, free_port, pipelines) as svc:
        conn = mydb.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00', sql_mode = ''")
                cur.execute(ROW1, (JSON_TEXT,))
                cur.execute("INSERT INTO types (id) VALUES (2)")
                cur.execute(ROW3)
                cur.execute(ROW4)
                cur.execute("UPDATE types SET vc = 'changed', st = 'y' WHERE id = 1")
                cur.execute("DELETE FROM types WHERE id = 2")
        finally:
            conn.close()
        events = wait_events(out, 6, svc)
        events2 = wait_events(out2, 6, svc)

    assert [e["op"] for e in events] == ["c", "c", "c", "c", "u", "d"]
    row1 = events[0]["after"]
    assert {k: row1[k] for k in EXPECTED_ROW1} == EXPECTED_ROW1
    assert row1["js"]["a"] == [1, 2.5, "x"] and row1["js"]["s"] == "é😀"
    # the JSON value is spliced in verbatim: big numbers keep every digit, on one line
    raw = (out / "events-000001.jsonl").read_text(encoding="utf-8")
    assert '"js":{"a": [1, 2.50, "x"],  "big": 123456789012345678901234567890, "s": "é😀"}' in raw
    assert set(row1) == set(EXPECTED_TYPES)
    row2 = events[1]["after"]
    assert row2["id"] == 2 and all(v is None for k, v in row2.items() if k != "id")
    row3 = events[2]["after"]
    assert {k: row3[k] for k in EXPECTED_ROW3} == EXPECTED_ROW3
    row4 = events[3]["after"]
    assert (row4["dt"], row4["dtm"], row4["tm"]) == ("2026-00-15", "2026-11-00 10:00:00.500000", "23:59:59.999999")
    upd = events[4]
    assert upd["before"] == row1
    assert upd["after"] == row1 | {"vc": "changed", "st": ["y"]}
    assert upd["key"] == {"id": 1}
    assert events[5]["before"] == row2 and events[5]["after"] is None and events[5]["key"] == {"id": 2}

    (definition,) = schema_defs(out, table).values()
    assert col_types(definition) == EXPECTED_TYPES
    assert definition["key"] == ["id"]
    assert {c["name"]: c["nullable"] for c in definition["columns"]}["id"] is False

    # values.bigint: string and columns.exclude, in a second pipeline over the same table
    s1 = events2[0]["after"]
    assert (s1["bi"], s1["biu"], s1["i"]) == ("-9223372036854775808", "18446744073709551615", -2147483648)
    assert "lt" not in s1 and "tx" not in s1
    (definition2,) = schema_defs(out2, table).values()
    assert [c["name"] for c in definition2["columns"]] == [n for n in EXPECTED_TYPES if n not in ("lt", "tx")]
    assert events2[4]["before"]["biu"] == "18446744073709551615"


# -- 2. stream semantics --------------------------------------------------------------------------

STREAM_DDL = (
    "CREATE TABLE orders (id INT PRIMARY KEY, status VARCHAR(20) NOT NULL, total DECIMAL(10,2))",
    "CREATE TABLE items (order_id INT NOT NULL, sku VARCHAR(10) NOT NULL, qty INT, PRIMARY KEY (sku, order_id))",
    "CREATE TABLE log (msg VARCHAR(20), n INT)",
    "CREATE TABLE other (id INT PRIMARY KEY)",
)


def test_changes_transactions_keys_and_truncate(mydb_any: MyDB, tmp_path: Path, free_port: int) -> None:
    db = mydb_any
    db.execute(*STREAM_DDL, "INSERT INTO orders VALUES (99, 'before start', 1)")
    orders, items, log, other = (db.table(t) for t in ("orders", "items", "log", "other"))
    out = tmp_path / "out"
    with service(tmp_path, free_port, [my_pipeline("shop", db.dsn(), [orders, items, log], out)]) as svc:
        db.execute("INSERT INTO orders VALUES (1, 'new', 10.50)")
        conn = db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("INSERT INTO orders VALUES (2, 'new', 5)")
                cur.execute("INSERT INTO items VALUES (2, 'a', 1), (2, 'b', 2)")
                cur.execute("INSERT INTO other VALUES (1)")
                cur.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
                cur.execute("INSERT INTO log VALUES ('hello', 1)")
                cur.execute("COMMIT")
        finally:
            conn.close()
        db.execute(
            "UPDATE orders SET id = 10 WHERE id = 1",
            "UPDATE items SET qty = 5 WHERE sku = 'a'",
            "UPDATE log SET n = 2",
            "DELETE FROM log",
            "DELETE FROM orders WHERE id = 2",
            "TRUNCATE TABLE items",
            "TRUNCATE other",
            "INSERT INTO other VALUES (2)",
        )
        events = wait_events(out, 13, svc)
        status = svc.pipeline("shop")
        records = log_records(svc.logs())

    ops = [(e["schema"]["name"].split(".")[1], e["op"]) for e in events]
    assert ops == [
        ("orders", "c"),
        ("orders", "c"), ("items", "c"), ("items", "c"), ("orders", "u"), ("log", "c"),
        ("orders", "d"), ("orders", "c"),
        ("items", "u"),
        ("log", "u"),
        ("log", "d"),
        ("orders", "d"),
        ("items", "t"),
    ]
    # no state: started at the server's position, logged; the row written before is not streamed
    assert find_log(records, "starting_at_current_position") is not None
    assert all(e["after"] is None or e["after"].get("id") != 99 for e in events)

    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids) and all(ID_RE.match(i) for i in ids)

    # the multi-table transaction: contiguous, in statement order, seq from 0, last on the end
    tx = [e for e in events if e["transaction"]["id"] == events[1]["transaction"]["id"]]
    assert tx == events[1:6]
    assert [e["transaction"]["seq"] for e in tx] == [0, 1, 2, 3, 4]
    assert [e["transaction"]["last"] for e in tx] == [False, False, False, False, True]
    assert all(e["transaction"]["last"] for e in (events[0], events[8], events[9], events[10], events[11], events[12]))
    assert tx[2]["key"] == {"sku": "b", "order_id": 2}  # key order, not column order
    assert list(tx[2]["key"]) == ["sku", "order_id"]

    src = events[0]["source"]
    assert src["connector"] == "mysql" and src["pipeline"] == "shop" and src["snapshot"] is False
    assert src["db"] == src["schema"] == db.name and src["table"] == "orders"
    assert src["server_id"] == 1 and isinstance(src["ts_ms"], int)
    assert abs(src["ts_ms"] / 1000 - time.time()) < 120
    assert re.match(r"^mysql-bin\.\d{6}$", src["file"]) and src["pos"] > 0
    assert events[0]["id"] == f"mysql:{src['file']}:{src['pos']}:0"
    domain = 7 if db.gtid else 0
    assert re.match(rf"^{domain}-1-\d+$", src["gtid"]) and src["tx"] == src["gtid"]
    assert events[0]["transaction"]["id"] == f"{src['file']}:{src['pos']}"

    # key change: d of the old key, then c of the new, linked both ways
    kd, kc = events[6], events[7]
    assert kd["key"] == {"id": 1} and kd["key_change"] == {"to": {"id": 10}} and kd["after"] is None
    assert kd["before"] == {"id": 1, "status": "paid", "total": "10.50"}
    assert kc["key"] == {"id": 10} and kc["key_change"] == {"from": {"id": 1}} and kc["before"] is None
    assert kc["after"] == {"id": 10, "status": "paid", "total": "10.50"}

    # keyless table: key null, the whole old row in before
    lu, ld = events[9], events[10]
    assert lu["key"] is None and lu["before"] == {"msg": "hello", "n": 1} and lu["after"] == {"msg": "hello", "n": 2}
    assert ld["key"] is None and ld["before"] == {"msg": "hello", "n": 2} and ld["after"] is None

    t = events[12]
    assert (t["key"], t["before"], t["after"]) == (None, None, None)
    assert t["schema"] == {"name": items, "version": 1}
    assert other not in {e["schema"]["name"] for e in events}

    position = status["checkpoint"]["position"]
    if db.gtid:
        assert re.match(r"^gtid:(\d+-\d+-\d+,)*7-1-\d+(,\d+-\d+-\d+)*@mysql-bin\.\d{6}:\d+$", position), position
    else:
        assert re.match(r"^mysql-bin\.\d{6}:\d+$", position), position


def test_big_transaction_streams_through_whole(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute("CREATE TABLE big (id INT PRIMARY KEY, v VARCHAR(30))")
    table = mydb.table("big")
    out = tmp_path / "out"
    n = 6000
    with service(tmp_path, free_port, [my_pipeline("big", mydb.dsn(), [table], out)]) as svc:
        mydb.execute(f"INSERT INTO big SELECT seq, CONCAT('row ', seq) FROM seq_1_to_{n}")
        mydb.execute("UPDATE big SET v = CONCAT(v, '!')")
        events = wait_events(out, 2 * n, svc, timeout=60)
    assert len(events) == 2 * n
    for part in (events[:n], events[n:]):
        assert len({e["transaction"]["id"] for e in part}) == 1
        assert [e["transaction"]["seq"] for e in part] == list(range(n))
        assert [e["transaction"]["last"] for e in part] == [False] * (n - 1) + [True]
    assert events[-1]["after"] == {"id": n, "v": f"row {n}!"}


# -- 3. schema versions ---------------------------------------------------------------------------


def test_alter_table_read_after_the_fact_keeps_each_events_schema(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY, a INT, b VARCHAR(10))")
    table = mydb.table("t")
    out = tmp_path / "out"
    pipelines = [my_pipeline("alter", mydb.dsn(), [table], out)]
    with service(tmp_path, free_port, pipelines) as svc:
        mydb.execute("INSERT INTO t VALUES (1, 1, 'one')")
        wait_events(out, 1, svc)
    # while the service is stopped: write, ALTER, write, ALTER, write
    mydb.execute(
        "INSERT INTO t VALUES (2, 2, 'two')",
        "ALTER TABLE t ADD COLUMN c DATETIME(3), DROP COLUMN b",
        "INSERT INTO t VALUES (3, 3, '2026-11-28 10:00:00.123')",
        "ALTER TABLE t MODIFY a BIGINT UNSIGNED",
        "INSERT INTO t VALUES (4, 18446744073709551615, NULL)",
        "ALTER TABLE t ADD INDEX (a)",  # not a column change: no new version
        "INSERT INTO t VALUES (5, 5, NULL)",
    )
    with service(tmp_path, free_port, pipelines) as svc:
        wait_events(out, 5, svc)
        mydb.execute("ALTER TABLE t ADD COLUMN d ENUM('x','y') NOT NULL DEFAULT 'y'", "UPDATE t SET a = 6 WHERE id = 5")
        events = wait_events(out, 6, svc)

    got = [(e["after"]["id"], e["schema"]["version"], sorted(e["after"])) for e in events]
    assert got == [
        (1, 1, ["a", "b", "id"]),
        (2, 1, ["a", "b", "id"]),
        (3, 2, ["a", "c", "id"]),
        (4, 3, ["a", "c", "id"]),
        (5, 3, ["a", "c", "id"]),
        (5, 4, ["a", "c", "d", "id"]),
    ]
    assert events[1]["after"] == {"id": 2, "a": 2, "b": "two"}
    assert events[2]["after"] == {"id": 3, "a": 3, "c": "2026-11-28T10:00:00.123000"}
    assert events[3]["after"]["a"] == 18446744073709551615
    assert events[5]["before"] == {"id": 5, "a": 5, "c": None, "d": "y"}
    defs = schema_defs(out, table)
    assert sorted(defs) == [1, 2, 3, 4]
    assert col_types(defs[1]) == {"id": "int", "a": "int", "b": "varchar(10)"}
    assert col_types(defs[2]) == {"id": "int", "a": "int", "c": "datetime(3)"}
    assert col_types(defs[3]) == {"id": "int", "a": "bigint unsigned", "c": "datetime(3)"}
    assert col_types(defs[4]) == {"id": "int", "a": "bigint unsigned", "c": "datetime(3)", "d": "enum('x','y')"}
    assert [c["nullable"] for c in defs[4]["columns"]] == [False, True, True, False]


# -- 4. checkpoints and resume --------------------------------------------------------------------


def test_restart_across_flush_binary_logs_resumes_exactly(mydb_any: MyDB, tmp_path: Path, free_port: int) -> None:
    db = mydb_any
    db.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))", "CREATE TABLE other (id INT)")
    table = db.table("t")
    out = tmp_path / "out"
    pipelines = [my_pipeline("rot", db.dsn(), [table], out)]
    with service(tmp_path, free_port, pipelines) as svc:
        db.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        wait_events(out, 2, svc)
    db.execute(
        "INSERT INTO t VALUES (3, 'c')",
        "FLUSH BINARY LOGS",
        "UPDATE t SET v = 'cc' WHERE id = 3",
        "INSERT INTO other VALUES (1)",
        "FLUSH BINARY LOGS",
        "DELETE FROM t WHERE id = 1",
    )
    with service(tmp_path, free_port, pipelines) as svc:
        events = wait_events(out, 5, svc)
        db.execute("FLUSH BINARY LOGS", "INSERT INTO other VALUES (2)")
        newest = db.server.query("SHOW MASTER STATUS")[0][0]
        # idle on the listed table: the checkpoint still follows into the newest binlog
        wait_for(lambda: newest in (svc.pipeline("rot")["checkpoint"]["position"] or ""), 20, what="checkpoint in " + newest)
    events = read_events(out)
    assert [(e["op"], (e["after"] or e["before"])["id"]) for e in events] == [
        ("c", 1), ("c", 2), ("c", 3), ("u", 3), ("d", 1)
    ]
    assert len({e["id"] for e in events}) == 5
    assert len({e["source"]["file"] for e in events}) == 3
    assert fold(events, table) == table_state(db, table, ["id"], "id, v")


def _writer(db: MyDB, stop: threading.Event, counter: list[int]) -> None:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            i = 0
            while not stop.is_set() and i < 600:
                i += 1
                cur.execute("INSERT INTO t VALUES (%s, %s, %s)", (i, i, f"v{i}"))
                if i % 3 == 0:
                    cur.execute("UPDATE t SET n = n + 1, s = CONCAT(s, '+') WHERE id = %s", (i - 1,))
                if i % 7 == 0:
                    cur.execute("BEGIN")
                    cur.execute("UPDATE t SET n = n * 2 WHERE id BETWEEN %s AND %s", (i - 5, i))
                    cur.execute("DELETE FROM t WHERE id = %s", (i - 6,))
                    cur.execute("COMMIT")
                counter[0] = i
    finally:
        conn.close()


def test_kill_9_then_restart_loses_nothing(mydb_any: MyDB, tmp_path: Path, free_port: int) -> None:
    db = mydb_any
    db.execute("CREATE TABLE t (id INT PRIMARY KEY, n INT, s VARCHAR(600))")
    table = db.table("t")
    out = tmp_path / "out"
    config = write_config(tmp_path, [my_pipeline("crash", db.dsn(), [table], out)], api_port=free_port)
    stop = threading.Event()
    counter = [0]
    writer = threading.Thread(target=_writer, args=(db, stop, counter), daemon=True)
    with CdcService(config) as svc:
        svc.wait_state("crash", "running")
        writer.start()
        wait_for(lambda: len(read_complete_events(out)) >= 200, 30, what="200 events before the kill")
        svc.kill()
    writer.join(60)
    assert counter[0] == 600
    with CdcService(config) as svc:
        svc.wait_state("crash", "running")
        expected = table_state(db, table, ["id"], "id, n, s")

        def caught_up() -> bool:
            return fold(read_complete_events(out), table) == expected

        wait_for(caught_up, 60, what="the sink to fold into the table")
        assert svc.stop() == 0
    events = read_events(out)
    assert_ids_stable(events)
    assert fold(dedupe(events), table) == expected


def test_database_restart_and_crash_are_ridden_out(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))")
    table = mydb.table("t")
    out = tmp_path / "out"
    with service(tmp_path, free_port, [my_pipeline("dbdown", mydb.dsn(), [table], out)]) as svc:
        mydb.execute("INSERT INTO t VALUES (1, 'a')")
        wait_events(out, 1, svc)
        mydb.server.restart()
        mydb.execute("INSERT INTO t VALUES (2, 'b')")
        wait_events(out, 2, svc, timeout=60)
        mydb.server.kill()
        mydb.server.start()
        mydb.execute("UPDATE t SET v = 'c' WHERE id = 2")
        events = wait_events(out, 3, svc, timeout=60)
        wait_for(lambda: svc.pipeline("dbdown")["state"] == "running", 30, what="running again")
    assert [(e["op"], (e["after"] or {}).get("id")) for e in dedupe(events)] == [("c", 1), ("c", 2), ("u", 2)]
    assert fold(dedupe(read_events(out)), table) == table_state(mydb, table, ["id"], "id, v")


def test_idle_tables_still_advance_the_checkpoint(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY)", "CREATE TABLE busy (id INT PRIMARY KEY)")
    out = tmp_path / "out"
    with service(tmp_path, free_port, [my_pipeline("idle", mydb.dsn(), [mydb.table("t")], out)]) as svc:
        first = svc.pipeline("idle")["checkpoint"]["position"]
        for i in range(20):
            mydb.execute(f"INSERT INTO busy VALUES ({i})")
        end = mydb.server.query("SHOW MASTER STATUS")[0]
        target = f"{end[0]}:{end[1]}"
        wait_for(lambda: svc.pipeline("idle")["checkpoint"]["position"] == target, 20, what=f"checkpoint at {target}")
    assert first != target
    assert read_events(out) == []


def test_purged_binlog_past_the_checkpoint_is_fatal_with_the_way_back(mydb_any: MyDB, tmp_path: Path, free_port: int) -> None:
    db = mydb_any
    db.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    out = tmp_path / "out"
    pipelines = [my_pipeline("purged", db.dsn(), [db.table("t")], out)]
    with service(tmp_path, free_port, pipelines) as svc:
        db.execute("INSERT INTO t VALUES (1)")
        wait_events(out, 1, svc)
    db.execute("FLUSH BINARY LOGS", "INSERT INTO t VALUES (2)", "FLUSH BINARY LOGS")
    newest = db.server.query("SHOW MASTER STATUS")[0][0]

    def purged() -> bool:
        # MariaDB keeps a binlog until InnoDB has made its transactions durable (about a second
        # here): purge until the older files are gone
        db.server.execute(f"PURGE BINARY LOGS TO '{newest}'")
        return [r[0] for r in db.server.query("SHOW BINARY LOGS")] == [newest]

    wait_for(purged, 30, interval=0.2, what=f"binlogs before {newest} purged")
    code, records, stderr = run_until_exit(write_config(tmp_path, pipelines, api_port=free_port), timeout=60)
    assert code == 1, stderr[-3000:]
    failed = find_log(records, "pipeline_failed")
    assert failed is not None, stderr[-3000:]
    assert failed["error_kind"] == "binlog_purged"
    message = failed["error"]
    assert "purged" in message and re.search(r"cdc drop \S+ purged --yes", message) and "snapshot" in message


# -- 5. the server's settings, grants and replica id ------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[LocalMariaDB]:
    """A MariaDB of this module's own, started with binlog_format=STATEMENT."""
    server = LocalMariaDB(settings={"binlog-format": "STATEMENT"})
    try:
        server.start()
        server.execute("CREATE DATABASE shop", "CREATE TABLE shop.t (id INT PRIMARY KEY)")
        yield server
    finally:
        server.cleanup()


def _fails_with(tmp_path: Path, port: int, dsn: str, tables: list[str], *needles: str, **extra: Any) -> str:
    config = write_config(tmp_path, [my_pipeline("bad", dsn, tables, tmp_path / "out", **extra)], api_port=port)
    code, records, stderr = run_until_exit(config, timeout=60)
    failed = find_log(records, "pipeline_failed")
    assert code == 1 and failed is not None, stderr[-3000:]
    message: str = failed["error"]
    for needle in needles:
        assert needle in message, message
    return message


def test_each_bad_server_setting_gives_a_clear_error(scratch: LocalMariaDB, tmp_path: Path, free_port: int) -> None:
    dsn, tables = scratch.dsn(), ["shop.t"]
    message = _fails_with(tmp_path, free_port, dsn, tables, "binlog_format is STATEMENT", "SET GLOBAL binlog_format = 'ROW'")
    assert "binlog_row_image" not in message
    try:
        scratch.execute("SET GLOBAL binlog_format = 'ROW'", "SET GLOBAL binlog_row_image = 'MINIMAL'")
        _fails_with(tmp_path, free_port, dsn, tables, "binlog_row_image is MINIMAL", "binlog_row_image = 'FULL'")
        scratch.execute("SET GLOBAL binlog_row_image = 'FULL'", "SET GLOBAL binlog_row_metadata = 'MINIMAL'")
        _fails_with(tmp_path, free_port, dsn, tables, "binlog_row_metadata is MINIMAL", "binlog_row_metadata = 'FULL'")
        scratch.execute("SET GLOBAL binlog_row_metadata = 'FULL'")
        scratch.settings["log-bin"] = None
        scratch.restart()
        _fails_with(tmp_path, free_port, dsn, tables, "binary logging is off", "log_bin")
    finally:
        scratch.settings["log-bin"] = "mysql-bin"
        scratch.settings["binlog-format"] = "ROW"
        scratch.restart()


def test_missing_grants_each_give_a_clear_error(mariadb: LocalMariaDB, mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY)", "CREATE TABLE u (id INT PRIMARY KEY)")
    tables = [mydb.table("t"), mydb.table("u")]
    user = f"u{mydb.name[-8:]}"
    mariadb.execute(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'",
        f"GRANT REPLICATION CLIENT, SELECT ON *.* TO '{user}'@'%'",
    )
    try:
        dsn = mydb.dsn(user, "pw")
        _fails_with(tmp_path, free_port, dsn, tables, "lacks REPLICATION SLAVE", "GRANT REPLICATION SLAVE ON *.*")
        mariadb.execute(f"REVOKE ALL PRIVILEGES ON *.* FROM '{user}'@'%'", f"GRANT REPLICATION SLAVE ON *.* TO '{user}'@'%'")
        mariadb.execute(f"GRANT SELECT ON `{mydb.name}`.`t` TO '{user}'@'%'")
        message = _fails_with(tmp_path, free_port, dsn, tables, "lacks REPLICATION CLIENT", f"lacks SELECT on {mydb.table('u')}")
        assert f"SELECT on {mydb.table('t')}" not in message
        assert "pw" not in message
        mariadb.execute(f"GRANT REPLICATION CLIENT ON *.* TO '{user}'@'%'")
        _fails_with(tmp_path, free_port, dsn, tables, f"lacks SELECT on {mydb.table('u')}", "GRANT SELECT ON")
        _fails_with(tmp_path, free_port, mydb.dsn(), [mydb.table("nope")], f"the table {mydb.table('nope')} does not exist")
    finally:
        mariadb.execute(f"DROP USER '{user}'@'%'")


def test_server_id_collisions_are_fatal(mariadb: LocalMariaDB, mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    table = mydb.table("t")
    # the server's own id
    (tmp_path / "own").mkdir()
    _fails_with(tmp_path / "own", free_port, mydb.dsn(), [table], "server_id 1 is the MySQL server's own", source={"server_id": 1})

    user = f"r{mydb.name[-8:]}"
    mariadb.execute(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'",
        f"GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO '{user}'@'%'",
    )
    a_dir, b_dir, c_dir = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a_dir, b_dir, c_dir):
        d.mkdir()
    try:
        config_a = write_config(a_dir, [my_pipeline("first", mydb.dsn(), [table], a_dir / "out", source={"server_id": 4242})], api_port=free_port)
        with CdcService(config_a) as a:
            a.wait_state("first", "running")
            # a second pipeline with the same id, allowed to list replicas: refused at start
            _fails_with(b_dir, another_port(), mydb.dsn(), [table], "server_id 4242 is already used by a replica", source={"server_id": 4242})
            assert a.pipeline("first")["state"] == "running"
            # one that may not list replicas starts; the server then drops the first one's
            # stream, which reports the collision
            config_c = write_config(c_dir, [my_pipeline("third", mydb.dsn(user, "pw"), [table], c_dir / "out", source={"server_id": 4242})], api_port=another_port())
            with CdcService(config_c) as c:
                c.wait_state("third", "running")
                assert find_log(log_records(c.logs()), "server_id_unchecked") is not None
                assert a.proc.wait(30) == 1  # its only pipeline failed, so the service ends
                failed = find_log(log_records(a.logs()), "pipeline_failed")
                assert failed is not None and failed["error_kind"] == "server_id_collision"
                assert "another replica connected to the server with this pipeline's server_id 4242" in failed["error"]
                assert c.pipeline("third")["state"] == "running"
                assert c.stop() == 0
    finally:
        mariadb.execute(f"DROP USER '{user}'@'%'")
