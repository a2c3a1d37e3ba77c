"""Capture raw pgoutput messages into ``tests/data/pgoutput/`` for the decoder's unit tests.

Theory of operation: against a scratch database (wal_level=logical, superuser, UTF-8), the
script creates a few ``cdc_*`` tables covering the built-in types the value mapping handles,
an enum, a domain, a REPLICA IDENTITY FULL table without a primary key and a table whose large
text column is stored out of line (TOAST, ``STORAGE EXTERNAL`` so it is not compressed inline).
It then creates a publication and a logical slot with ``pgoutput``, runs a fixed script of
changes (inserts, an update without and one with a key change, an update that leaves the
TOASTed column unchanged, deletes, a TRUNCATE of two tables, a transactional and a
non-transactional ``pg_logical_emit_message``, and one transaction with a replication origin),
and reads every message back with ``pg_logical_slot_peek_binary_changes``. The peek renders
column values with the *calling* session's settings, so the peeking connection sets TimeZone,
DateStyle, IntervalStyle, extra_float_digits and bytea_output exactly like the service's
replication connection does.

Output (all small enough to commit):

- ``messages.bin``: for each message, a 4-byte big-endian length and the message bytes,
  exactly as pgoutput wrote them (the payload of an XLogData frame);
- ``manifest.json``: the server version and settings, the SQL that was run, and per message
  its index, LSN, xid, type byte and a short note.

LSNs, xids, relation OIDs and commit times change at every capture; the tests only rely on the
relations' names and the values written here. Usage::

    python tests/data/capture_pgoutput.py "host=127.0.0.1 port=46543 user=postgres dbname=capture"

It drops and recreates its own objects (``cdc_*`` tables and types, publication ``cdc_pub``,
slot ``cdc_capture``) and drops the slot again at the end.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import psycopg

OUT_DIR = Path(__file__).resolve().parent / "pgoutput"
SLOT = "cdc_capture"
PUBLICATION = "cdc_pub"
ORIGIN = "cdc_test_origin"

SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}

# 20,000 characters; STORAGE EXTERNAL keeps it out of line and uncompressed, so it is TOASTed.
BIG_TEXT = "".join(f"{i:05d}," for i in range(20_000 // 6 + 1))[:20_000]

SETUP = [
    "DROP PUBLICATION IF EXISTS cdc_pub",
    "DROP TABLE IF EXISTS cdc_types, cdc_keyed, cdc_toast, cdc_full",
    "DROP DOMAIN IF EXISTS cdc_posint",
    "DROP TYPE IF EXISTS cdc_mood",
    "CREATE TYPE cdc_mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE DOMAIN cdc_posint AS integer CHECK (VALUE > 0)",
    """CREATE TABLE cdc_types (
        id integer PRIMARY KEY,
        c_int2 smallint, c_int8 bigint, c_oid oid,
        c_num numeric(12,2), c_num_any numeric,
        c_f4 real, c_f8 double precision, c_bool boolean,
        c_text text, c_varchar varchar(50), c_bpchar char(5), c_name name, c_char "char",
        c_uuid uuid, c_inet inet, c_cidr cidr, c_mac macaddr, c_mac8 macaddr8, c_xml xml,
        c_bytea bytea, c_bit bit(10), c_varbit varbit(16),
        c_date date, c_time time, c_time3 time(3), c_timetz timetz,
        c_ts timestamp, c_ts0 timestamp(0), c_tstz timestamptz, c_interval interval,
        c_json json, c_jsonb jsonb,
        c_money money, c_range int4range, c_tstzrange tstzrange, c_point point, c_box box,
        c_mood cdc_mood, c_posint cdc_posint,
        c_int4arr integer[], c_textarr text[], c_int2d integer[], c_moodarr cdc_mood[],
        c_boxarr box[], c_bytea_arr bytea[], c_jsonb_arr jsonb[]
    )""",
    """CREATE TABLE cdc_keyed (
        region text NOT NULL, id integer NOT NULL, name text,
        PRIMARY KEY (id, region)
    )""",
    "CREATE TABLE cdc_toast (id integer PRIMARY KEY, note text, big text)",
    "ALTER TABLE cdc_toast ALTER COLUMN big SET STORAGE EXTERNAL",
    "CREATE TABLE cdc_full (a integer, b text)",
    "ALTER TABLE cdc_full REPLICA IDENTITY FULL",
    "CREATE PUBLICATION cdc_pub FOR TABLE cdc_types, cdc_keyed, cdc_toast, cdc_full",
]

_TYPES_ROW_1 = """INSERT INTO cdc_types VALUES (
    1, -32768, 9223372036854775807, 4294967295,
    '19.90', '123456789012345678901234567890.000000000000000000001',
    '1.1', '0.1', true,
    'héllo, "world"', 'varchar', 'ab', 'a_name', 'x',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '10.0.0.0/8',
    '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '<a>x</a>',
    '\\x00ff10', B'0000001011', B'101',
    '2026-11-28', '13:45:01.123456', '13:45:01.5', '13:45:01.123456+02',
    '2026-11-28 13:45:01.123456', '2026-11-28 13:45:01.7', '2026-11-28 13:45:01.123+01',
    '1 day 2 hours 3 minutes 4.5 seconds',
    E'{\\n  "a": 12345678901234567890.123456789,\\n\\t"b": [1, 2.50, -0]\\r\\n}',
    '{"b": 1.50, "a": [true, null]}',
    '1234.5', '[1,10)', '[2026-01-01 00:00+00,2027-01-01 00:00+00)', '(1.5,2)', '(1,1),(0,0)',
    'happy', 42,
    '{1,2,3}', '{"a b","c\\"d",NULL,"NULL","",x}', '{{1,2},{3,NULL}}', '{sad,happy}',
    '{(1,1),(0,0);(3,3),(2,2)}', '{"\\\\x01ff",NULL}', ARRAY['{"k": [1, "v"]}'::jsonb]
)"""

_TYPES_ROW_2 = """INSERT INTO cdc_types VALUES (
    2, 0, -9223372036854775808, 0,
    'NaN', 'Infinity',
    'NaN', '-Infinity', false,
    '', '', '', '', '',
    NULL, '::1', '2001:db8::/32', NULL, NULL, NULL,
    '\\x', B'0000000000', B'',
    '0044-03-15 BC', '00:00:00', '23:59:59', '13:45:01+05:30',
    'infinity', '0044-03-15 12:00:00 BC', '-infinity', 'P-1Y-2M3DT-4H',
    '1e400', 'null',
    '-0.01', 'empty', NULL, NULL, NULL,
    'sad', NULL,
    '{}', '{}', '[0:1]={7,8}', NULL,
    NULL, '{}', NULL
)"""

_TYPES_ROW_3 = (
    "INSERT INTO cdc_types (id, c_f4, c_f8, c_num_any, c_date, c_tstz, c_time, c_timetz)"
    " VALUES (3, '-0', '1e+100', '-0.000', 'infinity', '0044-03-15 12:00:00+00 BC',"
    " '24:00:00', '00:00:00.000001-03:00:15')"
)

# Each step is (note, list of statements). A step is one transaction unless noted otherwise.
STEPS: list[tuple[str, list[str]]] = [
    ("insert three rows into cdc_types", [_TYPES_ROW_1, _TYPES_ROW_2, _TYPES_ROW_3]),
    ("insert an all-NULL row into cdc_types", ["INSERT INTO cdc_types (id) VALUES (4)"]),
    (
        "insert into cdc_keyed",
        [
            "INSERT INTO cdc_keyed VALUES ('eu', 1, 'one'), ('us', 2, 'two')",
        ],
    ),
    ("update cdc_keyed without a key change", ["UPDATE cdc_keyed SET name = 'uno' WHERE id = 1"]),
    ("update cdc_keyed changing the key", ["UPDATE cdc_keyed SET id = 10 WHERE id = 1"]),
    ("delete from cdc_keyed", ["DELETE FROM cdc_keyed WHERE id = 2"]),
    (
        "insert into cdc_toast a large out-of-line value",
        [f"INSERT INTO cdc_toast VALUES (1, 'first', '{BIG_TEXT}')"],
    ),
    (
        "update cdc_toast leaving the TOASTed column unchanged",
        ["UPDATE cdc_toast SET note = 'second' WHERE id = 1"],
    ),
    (
        "REPLICA IDENTITY FULL: insert, update, delete on cdc_full",
        [
            "INSERT INTO cdc_full VALUES (1, 'x'), (2, NULL)",
            "UPDATE cdc_full SET b = 'y' WHERE a = 1",
            "DELETE FROM cdc_full WHERE a = 2",
        ],
    ),
    ("truncate two tables", ["TRUNCATE cdc_keyed, cdc_full RESTART IDENTITY"]),
    ("transactional logical message", ["SELECT pg_logical_emit_message(true, 'cdc', 'hello')"]),
    (
        "non-transactional logical message",
        ["SELECT pg_logical_emit_message(false, 'cdc', '\\x00ff'::bytea)"],
    ),
]


def _set_session(conn: psycopg.Connection) -> None:
    for name, value in SESSION_SETTINGS.items():
        conn.execute(f"SET {name} = '{value}'")


def _note(data: bytes) -> str:
    kind = chr(data[0])
    return {
        "B": "Begin",
        "C": "Commit",
        "O": "Origin",
        "R": "Relation",
        "Y": "Type",
        "I": "Insert",
        "U": "Update",
        "D": "Delete",
        "T": "Truncate",
        "M": "Message",
    }.get(kind, f"unknown {kind!r}")


def capture(dsn: str, out_dir: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _set_session(conn)
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (SLOT,),
        )
        conn.execute(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin"
            " WHERE roname = %s",
            (ORIGIN,),
        )
        for sql in SETUP:
            conn.execute(sql)
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))

        ran: list[dict[str, object]] = []
        for note, statements in STEPS:
            if note.startswith("non-transactional"):
                for sql in statements:
                    conn.execute(sql)
            else:
                with conn.transaction():
                    for sql in statements:
                        conn.execute(sql)
            ran.append({"note": note, "sql": [_shorten(s) for s in statements]})

        # One transaction carrying a replication origin, so pgoutput sends an Origin message.
        conn.execute("SELECT pg_replication_origin_create(%s)", (ORIGIN,))
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", (ORIGIN,))
        with conn.transaction():
            conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
            conn.execute("INSERT INTO cdc_full VALUES (3, 'from origin')")
        conn.execute("SELECT pg_replication_origin_session_reset()")
        ran.append(
            {
                "note": f"insert under replication origin {ORIGIN!r} (origin LSN 0/ABCDEF)",
                "sql": ["INSERT INTO cdc_full VALUES (3, 'from origin')"],
            }
        )

        # Peek on a session with the service's settings: output functions use them.
        rows = conn.execute(
            "SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_peek_binary_changes("
            "%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
            (SLOT, PUBLICATION),
        ).fetchall()
        conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
        conn.execute("SELECT pg_replication_origin_drop(%s)", (ORIGIN,))

    out_dir.mkdir(parents=True, exist_ok=True)
    blob = bytearray()
    messages = []
    for index, (lsn, xid, data) in enumerate(rows):
        data = bytes(data)
        blob += struct.pack(">I", len(data)) + data
        messages.append(
            {"index": index, "lsn": lsn, "xid": xid, "type": chr(data[0]), "note": _note(data)}
        )
    (out_dir / "messages.bin").write_bytes(bytes(blob))
    manifest = {
        "description": "pgoutput proto_version 1 messages, text mode, messages 'true'",
        "format": "messages.bin: per message, 4-byte big-endian length then the bytes",
        "server_version": version,
        "session_settings": SESSION_SETTINGS,
        "slot": SLOT,
        "publication": PUBLICATION,
        "big_text_length": len(BIG_TEXT),
        "steps": ran,
        "messages": messages,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(rows)} messages ({len(blob)} bytes) to {out_dir}", file=sys.stderr)


def _shorten(sql: str) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= 300 else sql[:200] + f"... ({len(sql)} characters)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="libpq connection string of a scratch database")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args()
    capture(args.dsn, args.out)


if __name__ == "__main__":
    main()
