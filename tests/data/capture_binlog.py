"""Capture a MariaDB binlog stream into ``tests/data/binlog/`` for the decoder's unit tests.

Theory of operation: the script starts a throwaway MariaDB (``tests/mysql_server.py``) in each
of three settings, runs the same fixed script of statements on it and reads the binlog back the
way the service does, as a replica (``sources/mysql/_wire.py``: the same session variables,
COM_REGISTER_SLAVE, then a *non-blocking* COM_BINLOG_DUMP from the first binlog file, which the
server ends with an EOF packet). The settings:

- ``file``: GTID strict mode off (the default domain 0), the checksum CRC32;
- ``gtid``: ``gtid_domain_id=7``, ``gtid_strict_mode=ON`` (as the GTID test fixture);
- ``compressed``: ``log_bin_compress=ON`` (QUERY_COMPRESSED and compressed row events) and
  ``binlog_checksum=NONE``.

The statements cover every column type the row decoders handle (integers signed and
unsigned, FLOAT/DOUBLE/DECIMAL, CHAR/VARCHAR/TEXT in utf8mb4, latin1 and binary, the BLOBs,
ENUM/SET in utf8mb4 and latin1, BIT, DATE/TIME/DATETIME/TIMESTAMP with fractions, zero dates,
YEAR, MariaDB JSON, GEOMETRY, UUID/INET4/INET6), inserts, updates with and without a key
change, deletes, a multi-table transaction, a rolled-back one, TRUNCATE, RENAME TABLE, ALTER
TABLE, and a binlog rotation (FLUSH BINARY LOGS) in the middle.

Output per setting, in ``tests/data/binlog/<setting>/`` (small enough to commit):

- ``events.bin``: for each event of the dump, a 4-byte big-endian length and the event's bytes
  exactly as the server sent them (the packet without its leading OK byte);
- ``manifest.json``: the server version and settings, whether the dump carries checksums, the
  statements that were run, the catalog facts the I/O layer would hand to the decoder (MariaDB
  JSON and UUID/INET columns per table), and per event its index, type, file position and a
  short note.

Usage: ``python tests/data/capture_binlog.py`` (needs the mariadbd binary, like the tests).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mysql_server import LocalMariaDB  # noqa: E402

from sources.mysql import _wire, catalog, protocol  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "binlog"
SERVER_ID = 4242

SETTINGS: dict[str, dict[str, Any]] = {
    "file": {},
    "gtid": {"gtid_domain_id": 7, "gtid_strict_mode": True},
    "compressed": {
        "settings": {
            "log-bin-compress": "ON",
            "log-bin-compress-min-len": "10",
            "binlog-checksum": "NONE",
        }
    },
}

TABLES = ["cap.types", "cap.keyed", "cap.nokey", "cap.multi"]

STATEMENTS: list[str] = [
    "CREATE DATABASE cap",
    """CREATE TABLE cap.types (
        id INT NOT NULL PRIMARY KEY,
        c_tiny TINYINT, c_utiny TINYINT UNSIGNED, c_small SMALLINT, c_usmall SMALLINT UNSIGNED,
        c_year YEAR, c_medium MEDIUMINT, c_umedium MEDIUMINT UNSIGNED, c_int INT,
        c_uint INT UNSIGNED, c_big BIGINT, c_ubig BIGINT UNSIGNED,
        c_float FLOAT, c_double DOUBLE, c_dec DECIMAL(12,2), c_dec0 DECIMAL(30,0),
        c_char CHAR(5), c_varchar VARCHAR(50), c_latin1 VARCHAR(20) CHARACTER SET latin1,
        c_bin BINARY(4), c_varbin VARBINARY(10), c_text TEXT, c_tinyblob TINYBLOB,
        c_blob BLOB, c_mediumtext MEDIUMTEXT, c_longblob LONGBLOB,
        c_enum ENUM('small', 'médium', 'large'),
        c_enum_latin1 ENUM('été', 'hiver') CHARACTER SET latin1,
        c_set SET('a', 'b', 'ç'), c_bit BIT(10), c_bit1 BIT(1),
        c_date DATE, c_time TIME, c_time3 TIME(3), c_dt DATETIME, c_dt6 DATETIME(6),
        c_ts TIMESTAMP NULL, c_ts2 TIMESTAMP(2) NULL,
        c_json JSON, c_geo POINT, c_uuid UUID, c_inet4 INET4, c_inet6 INET6
    )""",
    "CREATE TABLE cap.keyed (id INT NOT NULL PRIMARY KEY, v VARCHAR(20) NOT NULL, n INT)",
    "CREATE TABLE cap.nokey (a INT, b VARCHAR(10))",
    "CREATE TABLE cap.multi (k1 INT NOT NULL, k2 VARCHAR(10) NOT NULL, v DOUBLE, "
    "PRIMARY KEY (k2, k1))",
    "CREATE TABLE cap.other (id INT PRIMARY KEY)",
    "SET time_zone = '+00:00'",
    """INSERT INTO cap.types VALUES (
        1, -128, 255, -32768, 65535, 2026, -8388608, 16777215, -2147483648, 4294967295,
        -9223372036854775808, 18446744073709551615, 1.1, 2.5e-300, 1234567890.12,
        123456789012345678901234567890, 'ab', 'héllo wörld', 'çà',
        x'00ff0102', x'cafe', 'long text ✓', x'01', x'0203', 'medium', x'04',
        'médium', 'été', 'a,ç', b'1010101010', b'1',
        '2026-11-28', '-838:59:59', '12:34:56.789', '2026-11-28 13:45:01',
        '2026-11-28 13:45:01.123456', '2026-11-28 13:45:01', '2038-01-19 03:14:07.99',
        '{"a": 1, "big": 123456789012345678901234567890}', ST_GeomFromText('POINT(1 2)'),
        '123e4567-e89b-12d3-a456-426614174000', '192.168.0.1', '2001:db8::1'
    )""",
    "INSERT INTO cap.types (id) VALUES (2)",
    "INSERT INTO cap.types (id, c_set, c_date, c_dt) VALUES (3, '', '0000-00-00', "
    "'0000-00-00 00:00:00')",
    "UPDATE cap.types SET c_int = 7, c_varchar = NULL WHERE id = 1",
    "INSERT INTO cap.keyed VALUES (1, 'one', 10), (2, 'two', 20), (3, 'three', NULL)",
    "UPDATE cap.keyed SET n = 11 WHERE id = 1",
    "UPDATE cap.keyed SET id = 20 WHERE id = 2",
    "DELETE FROM cap.keyed WHERE id = 3",
    "INSERT INTO cap.other VALUES (1)",
    "BEGIN",
    "INSERT INTO cap.keyed VALUES (4, 'four', 40)",
    "INSERT INTO cap.nokey VALUES (1, 'x'), (2, 'y')",
    "INSERT INTO cap.multi VALUES (1, 'a', 0.5)",
    "UPDATE cap.multi SET v = 1.5 WHERE k1 = 1",
    "INSERT INTO cap.other VALUES (2)",
    "COMMIT",
    "BEGIN",
    "INSERT INTO cap.keyed VALUES (99, 'gone', 0)",
    "ROLLBACK",
    "FLUSH BINARY LOGS",
    "UPDATE cap.nokey SET b = 'z' WHERE a = 2",
    "DELETE FROM cap.multi",
    "TRUNCATE TABLE cap.nokey",
    "RENAME TABLE cap.keyed TO cap.keyed2",
    "INSERT INTO cap.keyed2 VALUES (5, 'five', 50)",
    "ALTER TABLE cap.keyed2 ADD COLUMN extra INT",
    "INSERT INTO cap.keyed2 VALUES (6, 'six', 60, 600)",
    "UPDATE cap.keyed2 SET extra = 1 WHERE id = 6",
]


def _type_name(t: int) -> str:
    for name, value in vars(protocol).items():
        if name.endswith("_EVENT") or name.endswith("_EVENT_V1") or name.endswith("_EVENT_V2"):
            if value == t and isinstance(value, int):
                return name
    return f"type {t}"


def capture(name: str, options: dict[str, Any]) -> None:
    out = OUT_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    with LocalMariaDB(**options) as db:
        db.start()
        conn = db.connect()
        try:
            with conn.cursor() as cur:
                for st in STATEMENTS:
                    cur.execute(st)
                cur.execute("SELECT VERSION()")
                version = str(cur.fetchone()[0])
                cur.execute(
                    "SELECT @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, "
                    "@@binlog_checksum, @@gtid_domain_id, @@gtid_strict_mode, @@log_bin_compress"
                )
                row = cur.fetchone()
            facts: dict[str, Any] = {}
            for table in TABLES + ["cap.keyed2"]:
                schema, tbl = table.split(".")
                json_cols = catalog.mariadb_json_columns(conn, schema, tbl)
                plugins = catalog.mariadb_plugin_columns(conn, schema, tbl)
                facts[table] = {"json": sorted(json_cols), "plugins": plugins}
        finally:
            conn.close()
        wire = _wire.BinlogConnection.connect(
            {"host": "127.0.0.1", "port": db.port, "user": "root", "password": "", "charset": "utf8mb4"}
        )
        try:
            wire.prepare(heartbeat_s=1.0, replica_uuid="00000000-0000-0000-0000-00000000cafe", mariadb=True)
            wire.register(SERVER_ID, "cdc:capture")
            wire.dump(SERVER_ID, "mysql-bin.000001", 4, non_block=True)
            frames: list[bytes] = []
            while True:
                packet = wire.read_event()
                if packet is None:
                    break
                frames.append(packet[1:])
            checksum = wire.checksum
        finally:
            wire.close()
    reader = protocol.BinlogReader(checksum=checksum)
    notes = []
    for i, frame in enumerate(frames):
        ev = reader.parse(frame)
        h = ev.header
        note = type(ev).__name__
        if isinstance(ev, protocol.Query):
            note += f": {ev.query[:60]}"
        elif isinstance(ev, protocol.TableMap):
            note += f": {ev.schema}.{ev.table} id {ev.table_id}"
        elif isinstance(ev, protocol.Rotate):
            note += f": {ev.next_file}:{ev.position}"
        elif isinstance(ev, protocol.MariaDBGtid):
            note += f": {ev.gtid}"
        notes.append(
            {"index": i, "type": _type_name(h.type), "file": reader.file, "end": h.log_pos, "note": note}
        )
    with open(out / "events.bin", "wb") as fh:
        for frame in frames:
            fh.write(struct.pack(">I", len(frame)))
            fh.write(frame)
    manifest = {
        "server": f"MariaDB {version}",
        "settings": {
            "binlog_format": row[0],
            "binlog_row_image": row[1],
            "binlog_row_metadata": row[2],
            "binlog_checksum": row[3],
            "gtid_domain_id": row[4],
            "gtid_strict_mode": row[5],
            "log_bin_compress": row[6],
            "server_options": options,
        },
        "dump": {"from": "mysql-bin.000001:4", "replica_server_id": SERVER_ID, "checksum": checksum},
        "statements": STATEMENTS,
        "catalog": facts,
        "events": notes,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"{name}: {len(frames)} events, MariaDB {version}")


def main() -> None:
    for name, options in SETTINGS.items():
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        capture(name, options)


if __name__ == "__main__":
    main()
