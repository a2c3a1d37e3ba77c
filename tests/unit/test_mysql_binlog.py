"""The binlog protocol and decoder, fed with MariaDB 10.11 dumps captured in tests/data/binlog/
(see tests/data/capture_binlog.py): bytes -> messages -> change events, no server reachable."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.errors import FatalError, ProtocolError
from cdc.events import ChangeEvent
from cdc.plugin import Batch
from cdc.schema import SchemaVersion, TableSchema
from sources.mysql import protocol as P
from sources.mysql.collations import CHARSET_OF
from sources.mysql.decoder import MySQLDecoder
from sources.mysql.position import BinlogPosition, GtidPosition
from sources.mysql.rows import columns_from_description, mysql_json

DATA = Path(__file__).resolve().parent.parent / "data" / "binlog"
TABLES = {"cap.types", "cap.keyed", "cap.nokey", "cap.multi"}


def load(name: str) -> tuple[dict[str, Any], list[bytes]]:
    manifest = json.loads((DATA / name / "manifest.json").read_text())
    raw = (DATA / name / "events.bin").read_bytes()
    frames = []
    p = 0
    while p < len(raw):
        (n,) = struct.unpack_from(">I", raw, p)
        frames.append(raw[p + 4 : p + 4 + n])
        p += 4 + n
    return manifest, frames


class Hooks:
    """The decoder's surroundings, in memory: a schema registry by fingerprint, the catalog
    facts the capture recorded."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.versions: dict[str, list[tuple[str, SchemaVersion, tuple[int, int, int]]]] = {}
        self.renames: list[tuple[str, str, str, int, bool]] = []
        self.warnings: list[str] = []
        self.lookups: list[str] = []

    def resolve(self, schema: TableSchema, at: tuple[int, int, int]) -> SchemaVersion:
        history = self.versions.setdefault(schema.name, [])
        fp = schema.fingerprint()
        for f, sv, _ in history:
            if f == fp:
                return sv
        sv = SchemaVersion.build(schema, len(history) + 1)
        history.append((fp, sv, at))
        return sv

    def latest(self, name: str) -> SchemaVersion | None:
        history = self.versions.get(name)
        return history[-1][1] if history else None

    def json_columns(self, name: str) -> frozenset[str]:
        self.lookups.append(f"json {name}")
        return frozenset(self.facts.get(name, {}).get("json", []))

    def plugin_columns(self, name: str) -> dict[str, str]:
        self.lookups.append(f"plugins {name}")
        return dict(self.facts.get(name, {}).get("plugins", {}))

    def current_columns(self, name: str) -> frozenset[str]:
        return frozenset()

    def catalog_table(self, name: str) -> tuple[list[tuple[str, str, bool]], list[str]]:
        return [], []

    def check_excluded(self, name: str, columns: list[str], also: frozenset[str] = frozenset()) -> None:
        pass

    def renamed(self, old: str, new: str, file: str, end_pos: int, exclude_moved: bool) -> None:
        self.renames.append((old, new, file, end_pos, exclude_moved))

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append(event)


def decode(name: str, tables: set[str] | None = None) -> tuple[list[Batch], Hooks, MySQLDecoder]:
    manifest, frames = load(name)
    hooks = Hooks(manifest["catalog"])
    decoder = MySQLDecoder("cap", set(tables or TABLES), {}, hooks, mariadb=True, flavor="mariadb")
    start: BinlogPosition | GtidPosition = BinlogPosition("mysql-bin.000001", 4)
    if name == "gtid":
        start = GtidPosition("", "mysql-bin.000001", 4, "mariadb")
    decoder.start(start)
    reader = P.BinlogReader(checksum=manifest["dump"]["checksum"], file="mysql-bin.000001")
    batches = []
    for frame in frames:
        batch = decoder.feed(reader.parse(frame))
        if batch is not None:
            batches.append(batch)
    batch = decoder.idle_batch()
    if batch is not None:
        batches.append(batch)
    return batches, hooks, decoder


def events_of(batches: list[Batch]) -> list[ChangeEvent]:
    return [e for b in batches for e in b.events]


def plain(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


# -- protocol ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["file", "gtid", "compressed"])
def test_every_captured_event_parses_into_the_message_its_type_names(name: str) -> None:
    manifest, frames = load(name)
    reader = P.BinlogReader(checksum=manifest["dump"]["checksum"])
    assert len(frames) == len(manifest["events"])
    for frame, note in zip(frames, manifest["events"], strict=True):
        ev = reader.parse(frame)
        assert not isinstance(ev, P.Unsupported | P.Ignored), note
        assert note["note"].startswith(type(ev).__name__)
        assert ev.header.log_pos == note["end"]
        assert reader.file == note["file"]


def test_a_dump_starts_with_a_made_up_rotate_then_the_format_description() -> None:
    manifest, frames = load("file")
    reader = P.BinlogReader(checksum=True)
    rotate = reader.parse(frames[0])
    assert isinstance(rotate, P.Rotate)
    assert (rotate.next_file, rotate.position, rotate.header.log_pos, rotate.header.timestamp) == (
        "mysql-bin.000001",
        4,
        0,
        0,
    )
    assert rotate.header.flags & P.LOG_EVENT_ARTIFICIAL_F
    fde = reader.parse(frames[1])
    assert isinstance(fde, P.FormatDescription)
    assert fde.binlog_version == 4
    assert fde.server_version.startswith("10.11.")
    assert "MariaDB" in fde.server_version
    assert fde.checksum_alg == P.CHECKSUM_CRC32
    assert fde.post_header_lengths[P.TABLE_MAP_EVENT - 1] == 8
    gtid_list = reader.parse(frames[2])
    assert isinstance(gtid_list, P.GtidList) and gtid_list.gtids == ()
    checkpoint = reader.parse(frames[3])
    assert isinstance(checkpoint, P.BinlogCheckpoint) and checkpoint.file == "mysql-bin.000001"


def test_mariadb_gtid_events_name_domain_server_and_sequence() -> None:
    for name, domain in (("file", 0), ("gtid", 7)):
        _, frames = load(name)
        reader = P.BinlogReader(checksum=True)
        gtids = [ev for ev in map(reader.parse, frames) if isinstance(ev, P.MariaDBGtid)]
        assert [g.gtid for g in gtids] == [f"{domain}-1-{i}" for i in range(1, 25)]
        ddl = gtids[0]  # CREATE DATABASE: a standalone statement
        assert ddl.standalone and ddl.domain_id == domain and ddl.header.server_id == 1
        assert not gtids[6].standalone  # the first INSERT: a transaction ended by an XID


def test_the_second_file_starts_with_the_gtid_state_of_the_first() -> None:
    _, frames = load("gtid")
    reader = P.BinlogReader(checksum=True)
    lists = [ev for ev in map(reader.parse, frames) if isinstance(ev, P.GtidList)]
    assert [ev.gtids for ev in lists] == [(), ((7, 1, 16),)]


def test_a_damaged_event_fails_its_checksum_with_the_position() -> None:
    _, frames = load("file")
    reader = P.BinlogReader(checksum=True)
    for frame in frames[:17]:
        reader.parse(frame)
    table_map = bytearray(frames[17])
    table_map[30] ^= 0x01
    with pytest.raises(ProtocolError) as err:
        reader.parse(bytes(table_map))
    assert err.value.kind == "protocol"
    assert err.value.position == "mysql-bin.000001:3133"  # where the TABLE_MAP starts
    assert "CRC32" in str(err.value)


def test_a_truncated_event_is_a_protocol_error() -> None:
    _, frames = load("file")
    reader = P.BinlogReader(checksum=True)
    reader.parse(frames[0])
    reader.parse(frames[1])
    with pytest.raises(ProtocolError, match="the header says"):
        reader.parse(frames[5][:-10])
    with pytest.raises(ProtocolError, match="shorter than its header"):
        reader.parse(frames[5][:10])
    # a body that lies about its own lengths (checksum recomputed): still a protocol error
    query = bytearray(frames[5][:-4])
    query[19 + 8] = 200  # the default schema's length runs past the event
    query += struct.pack("<I", zlib.crc32(bytes(query)))
    ev = reader.parse(bytes(query))
    assert isinstance(ev, P.Query)  # the name is cut short, not read past the event


def test_events_this_build_cannot_read_are_reported_not_skipped() -> None:
    header = struct.pack("<IBIIIH", 1_700_000_000, P.TRANSACTION_PAYLOAD_EVENT, 1, 19 + 8, 500, 0)
    ev = P.BinlogReader().parse(header + b"\0" * 8)
    assert isinstance(ev, P.Unsupported)
    assert "binlog_transaction_compression" in ev.reason
    unknown = struct.pack("<IBIIIH", 1, 99, 1, 19, 300, 0)
    assert isinstance(P.BinlogReader().parse(unknown), P.Unsupported)
    ignorable = struct.pack("<IBIIIH", 1, 99, 1, 19, 300, 0x80)
    assert isinstance(P.BinlogReader().parse(ignorable), P.Ignored)
    decoder = MySQLDecoder("p", set(), {}, Hooks({}))
    decoder.start(BinlogPosition("mysql-bin.000007", 4))
    with pytest.raises(ProtocolError) as err:
        decoder.feed(ev)
    assert err.value.position == "mysql-bin.000007:473"
    with pytest.raises(ProtocolError, match="START_ENCRYPTION"):
        decoder.feed(P.BinlogReader().parse(struct.pack("<IBIIIH", 1, 164, 1, 19, 300, 0)))


def test_mysql_gtid_event_with_commit_timestamps() -> None:
    sid = bytes.fromhex("3e11fa4771ca11e19e33c80aa9429562")
    body = (
        b"\x01" + sid + struct.pack("<Q", 42) + b"\x02" + struct.pack("<QQ", 7, 8)
        + (1_700_000_000_123_456 | 1 << 55).to_bytes(7, "little")
        + (1_690_000_000_000_001).to_bytes(7, "little")
    )
    header = struct.pack("<IBIIIH", 1_700_000_000, P.GTID_LOG_EVENT, 5, 19 + len(body), 1000, 0)
    ev = P.BinlogReader().parse(header + body)
    assert isinstance(ev, P.MySQLGtid)
    assert ev.gtid == "3e11fa47-71ca-11e1-9e33-c80aa9429562:42"
    assert (ev.last_committed, ev.sequence_number) == (7, 8)
    assert ev.immediate_commit_us == 1_700_000_000_123_456
    assert ev.original_commit_us == 1_690_000_000_000_001


def test_table_map_optional_metadata_of_every_type() -> None:
    _, frames = load("file")
    reader = P.BinlogReader(checksum=True)
    tm = next(ev for ev in map(reader.parse, frames) if isinstance(ev, P.TableMap))
    assert (tm.schema, tm.table, tm.table_id) == ("cap", "types", 18)
    desc = P.table_map_columns(tm.body, mariadb=True)
    cols = {c.name: c for c in desc.columns}
    assert desc.has_names and len(desc.columns) == 43
    assert desc.primary_key == (0,)
    # YEAR counts among the numeric columns of the signedness bits (and is unsigned): were it
    # skipped, every flag after it would belong to the next column
    unsigned = [n for n, c in cols.items() if c.unsigned]
    assert unsigned == ["c_utiny", "c_usmall", "c_year", "c_umedium", "c_uint", "c_ubig"]
    assert not cols["id"].nullable and cols["c_int"].nullable
    assert CHARSET_OF[cols["c_varchar"].collation or 0] == "utf8mb4"
    assert CHARSET_OF[cols["c_latin1"].collation or 0] == "latin1"
    assert CHARSET_OF[cols["c_bin"].collation or 0] == "binary"
    assert cols["c_enum"].members == (b"small", "médium".encode(), b"large")
    assert cols["c_enum_latin1"].members == ("été".encode("latin1"), b"hiver")
    assert CHARSET_OF[cols["c_enum_latin1"].collation or 0] == "latin1"
    assert cols["c_set"].members == (b"a", b"b", "ç".encode())
    assert (cols["c_dec"].precision, cols["c_dec"].decimals) == (12, 2)
    assert cols["c_bit"].bits == 10 and cols["c_dt6"].fsp == 6 and cols["c_ts2"].fsp == 2
    assert cols["c_geo"].geometry_type == 1  # POINT
    assert cols["c_varchar"].max_length == 200 and cols["c_char"].max_length == 20
    metas = {c.name: c for c in columns_from_description(desc, frozenset({"c_json"}), {"c_uuid": "uuid"})}
    assert metas["c_enum_latin1"].values == ("été", "hiver")
    assert metas["c_uuid"].plugin == "uuid" and metas["c_json"].json


# -- decoder -----------------------------------------------------------------------------------


def test_decoded_events_ids_ops_keys_and_values() -> None:
    batches, hooks, decoder = decode("file")
    events = events_of(batches)
    summary = [(e.id, e.op, e.source["table"], e.key, e.transaction[2] if e.transaction else None) for e in events]
    assert summary == [
        ("mysql:mysql-bin.000001:2325:0", "c", "types", {"id": 1}, True),
        ("mysql:mysql-bin.000001:4045:0", "c", "types", {"id": 2}, True),
        ("mysql:mysql-bin.000001:4770:0", "c", "types", {"id": 3}, True),
        ("mysql:mysql-bin.000001:5566:0", "u", "types", {"id": 1}, True),
        ("mysql:mysql-bin.000001:6895:0", "c", "keyed", {"id": 1}, False),
        ("mysql:mysql-bin.000001:6895:1", "c", "keyed", {"id": 2}, False),
        ("mysql:mysql-bin.000001:6895:2", "c", "keyed", {"id": 3}, True),
        ("mysql:mysql-bin.000001:7209:0", "u", "keyed", {"id": 1}, True),
        ("mysql:mysql-bin.000001:7474:0", "d", "keyed", {"id": 2}, False),
        ("mysql:mysql-bin.000001:7474:1", "c", "keyed", {"id": 20}, True),
        ("mysql:mysql-bin.000001:7740:0", "d", "keyed", {"id": 3}, True),
        ("mysql:mysql-bin.000001:8207:0", "c", "keyed", {"id": 4}, False),
        ("mysql:mysql-bin.000001:8207:1", "c", "nokey", None, False),
        ("mysql:mysql-bin.000001:8207:2", "c", "nokey", None, False),
        ("mysql:mysql-bin.000001:8207:3", "c", "multi", {"k2": "a", "k1": 1}, False),
        ("mysql:mysql-bin.000001:8207:4", "u", "multi", {"k2": "a", "k1": 1}, True),
        ("mysql:mysql-bin.000002:342:0", "u", "nokey", None, True),
        ("mysql:mysql-bin.000002:588:0", "d", "multi", {"k2": "a", "k1": 1}, True),
        ("mysql:mysql-bin.000002:868:0", "t", "nokey", None, True),
        ("mysql:mysql-bin.000002:1147:0", "c", "keyed2", {"id": 5}, True),
        ("mysql:mysql-bin.000002:1562:0", "c", "keyed2", {"id": 6}, True),
        ("mysql:mysql-bin.000002:1834:0", "u", "keyed2", {"id": 6}, True),
    ]
    key_change = events[8:10]
    assert key_change[0].before == {"id": 2, "v": "two", "n": 20} and key_change[0].after is None
    assert key_change[0].key_change == {"to": {"id": 20}}
    assert key_change[1].key_change == {"from": {"id": 2}}
    assert events[7].before == {"id": 1, "v": "one", "n": 10}
    assert events[7].after == {"id": 1, "v": "one", "n": 11}
    assert events[10].before == {"id": 3, "v": "three", "n": None}
    assert events[16].before == {"a": 2, "b": "y"} and events[16].after == {"a": 2, "b": "z"}
    source = events[4].source
    assert source == {
        "connector": "mysql",
        "pipeline": "cap",
        "db": "cap",
        "schema": "cap",
        "table": "keyed",
        "ts_ms": source["ts_ms"],
        "tx": "0-1-11",
        "file": "mysql-bin.000001",
        "pos": 6895,
        "server_id": 1,
        "gtid": "0-1-11",
        "snapshot": False,
    }
    assert batches[-1].position == BinlogPosition("mysql-bin.000002", 2119)
    assert decoder.position() == BinlogPosition("mysql-bin.000002", 2119)
    # the other table's rows are never decoded, and the rolled-back transaction is not there
    assert not any(e.source["table"] == "other" for e in events)
    assert not any((e.after or {}).get("id") == 99 for e in events)


def test_every_column_type_decodes_to_the_contract_value() -> None:
    batches, hooks, _ = decode("file")
    first = events_of(batches)[0]
    assert first.after is not None
    assert orjson.dumps(first.after["c_json"]) == b'{"a": 1, "big": 123456789012345678901234567890}'
    assert plain({k: v for k, v in first.after.items() if k != "c_json"}) == {
        "id": 1,
        "c_tiny": -128,
        "c_utiny": 255,
        "c_small": -32768,
        "c_usmall": 65535,
        "c_year": 2026,
        "c_medium": -8388608,
        "c_umedium": 16777215,
        "c_int": -2147483648,
        "c_uint": 4294967295,
        "c_big": -9223372036854775808,
        "c_ubig": 18446744073709551615,
        "c_float": 1.1,
        "c_double": 2.5e-300,
        "c_dec": "1234567890.12",
        "c_dec0": "123456789012345678901234567890",
        "c_char": "ab",
        "c_varchar": "héllo wörld",
        "c_latin1": "çà",
        "c_bin": "AP8BAg==",
        "c_varbin": "yv4=",
        "c_text": "long text ✓",
        "c_tinyblob": "AQ==",
        "c_blob": "AgM=",
        "c_mediumtext": "medium",
        "c_longblob": "BA==",
        "c_enum": "médium",
        "c_enum_latin1": "été",
        "c_set": ["a", "ç"],
        "c_bit": "1010101010",
        "c_bit1": "1",
        "c_date": "2026-11-28",
        "c_time": "-838:59:59.000000",
        "c_time3": "12:34:56.789000",
        "c_dt": "2026-11-28T13:45:01.000000",
        "c_dt6": "2026-11-28T13:45:01.123456",
        "c_ts": "2026-11-28T13:45:01.000000Z",
        "c_ts2": "2038-01-19T03:14:07.990000Z",
        "c_geo": "AAAAAAEBAAAAAAAAAAAA8D8AAAAAAAAAQA==",
        "c_uuid": "123e4567-e89b-12d3-a456-426614174000",
        "c_inet4": "192.168.0.1",
        "c_inet6": "2001:db8::1",
    }
    nulls = events_of(batches)[1].after
    assert nulls is not None and nulls["id"] == 2 and all(v is None for k, v in nulls.items() if k != "id")
    zero = events_of(batches)[2].after
    assert zero is not None and (zero["c_set"], zero["c_date"], zero["c_dt"]) == (
        [],
        "0000-00-00",
        "0000-00-00 00:00:00",
    )
    schema = first.schema
    assert isinstance(schema, SchemaVersion) and schema.version == 1
    types = {c.name: c.type for c in schema.columns}
    assert types["c_ubig"] == "bigint unsigned" and types["c_json"] == "json"
    assert types["c_enum_latin1"] == "enum('été','hiver')" and types["c_uuid"] == "uuid"
    assert types["c_geo"] == "point" and types["c_varchar"] == "varchar(50)"
    # catalog facts asked once per description, for the table that needs them
    assert hooks.lookups == ["json cap.types", "plugins cap.types"]


def test_rename_is_followed_and_alter_makes_a_new_schema_version() -> None:
    batches, hooks, decoder = decode("file")
    assert hooks.renames == [("cap.keyed", "cap.keyed2", "mysql-bin.000002", 1147, False)]
    assert "cap.keyed2" in decoder.tables and "cap.keyed" not in decoder.tables
    events = events_of(batches)
    before_alter, after_alter = events[19], events[20]
    assert before_alter.schema.version == 1 and after_alter.schema.version == 2
    assert [c.name for c in after_alter.schema.columns] == ["id", "v", "n", "extra"]
    assert after_alter.after == {"id": 6, "v": "six", "n": 60, "extra": 600}
    truncate = events[18]
    assert truncate.op == "t" and truncate.schema.name == "cap.nokey"
    assert truncate.before is None and truncate.after is None and truncate.key is None
    # schema versions are resolved at (file index, transaction start, seq)
    assert [at for _, _, at in hooks.versions["cap.keyed2"]] == [(2, 1147, 0), (2, 1562, 0)]


def test_gtid_positions_follow_each_transaction() -> None:
    batches, _, decoder = decode("gtid")
    positions = [b.position for b in batches if b.position is not None]
    assert positions[-1] == GtidPosition("7-1-24", "mysql-bin.000002", 2119, "mariadb")
    assert str(positions[-1]) == "gtid:7-1-24@mysql-bin.000002:2119"
    events = events_of(batches)
    assert events[0].source["gtid"] == "7-1-7" and events[0].source["tx"] == "7-1-7"
    assert events[0].id == "mysql:mysql-bin.000001:2325:0"
    assert len(events) == 22


def test_compressed_events_decode_to_the_same_changes() -> None:
    _, frames = load("compressed")
    reader = P.BinlogReader(checksum=False)
    types = {reader.parse(f).header.type for f in frames}
    assert P.QUERY_COMPRESSED_EVENT in types and P.WRITE_ROWS_COMPRESSED_EVENT_V1 in types
    assert P.UPDATE_ROWS_COMPRESSED_EVENT_V1 in types and P.DELETE_ROWS_COMPRESSED_EVENT_V1 in types
    plain_batches, _, _ = decode("file")
    packed_batches, hooks, _ = decode("compressed")
    a, b = events_of(plain_batches), events_of(packed_batches)
    assert [(e.op, e.key, plain(e.before), plain(e.after)) for e in a] == [
        (e.op, e.key, plain(e.before), plain(e.after)) for e in b
    ]
    assert hooks.renames[0][:2] == ("cap.keyed", "cap.keyed2")


def test_table_ids_are_forgotten_at_rotation() -> None:
    manifest, frames = load("file")
    hooks = Hooks(manifest["catalog"])
    decoder = MySQLDecoder("cap", {"cap.nokey"}, {}, hooks)
    decoder.start(BinlogPosition("mysql-bin.000001", 4))
    reader = P.BinlogReader(checksum=True)
    for frame in frames[:64]:
        decoder.feed(reader.parse(frame))
    assert decoder._by_id  # noqa: SLF001 - the table-id map holds the first file's ids
    decoder.feed(reader.parse(frames[64]))  # ROTATE
    assert not decoder._by_id  # noqa: SLF001


def test_unlisted_tables_cost_no_description_and_a_position_still_moves() -> None:
    batches, hooks, decoder = decode("file", tables={"cap.absent"})
    assert events_of(batches) == [] and hooks.lookups == [] and hooks.versions == {}
    assert decoder.position() == BinlogPosition("mysql-bin.000002", 2119)


def test_excluded_key_column_is_fatal() -> None:
    manifest, frames = load("file")
    decoder = MySQLDecoder("cap", {"cap.keyed"}, {"cap.keyed": frozenset({"id"})}, Hooks({}))
    decoder.start(BinlogPosition("mysql-bin.000001", 4))
    reader = P.BinlogReader(checksum=True)
    with pytest.raises(FatalError, match="key column 'id'"):
        for frame in frames:
            decoder.feed(reader.parse(frame))


# -- MySQL binary JSON -------------------------------------------------------------------------


def test_mysql_binary_json_values() -> None:
    # {"a": [1, true, "x"], "b": null} in MySQL's binary form (small object, small array)
    arr = (
        struct.pack("<HH", 3, 2 + 2 + 9 + 2)
        + bytes([5]) + struct.pack("<H", 1)  # int16 1, inline
        + bytes([4]) + struct.pack("<H", 1)  # true, inline
        + bytes([12]) + struct.pack("<H", 13)  # string at offset 13
        + b"\x01x"
    )
    keys_at = 4 + 2 * 4 + 2 * 3
    obj = (
        struct.pack("<HH", 2, keys_at + 2 + len(arr))
        + struct.pack("<HH", keys_at, 1)
        + struct.pack("<HH", keys_at + 1, 1)
        + bytes([2]) + struct.pack("<H", keys_at + 2)  # the array
        + bytes([4]) + struct.pack("<H", 0)  # null, inline
        + b"ab"
        + arr
    )
    assert mysql_json(b"\x00" + obj) == {"a": [1, True, "x"], "b": None}
    assert mysql_json(b"\x0c\x03abc") == "abc"
    assert mysql_json(b"\x0a" + struct.pack("<Q", 2**64 - 1)) == 2**64 - 1
    assert mysql_json(b"\x0b" + struct.pack("<d", 0.5)) == 0.5
    decimal = b"\x0f\xf6\x05" + b"\x05\x02" + b"\x80\x7b\x05"  # opaque DECIMAL(5,2) 123.05
    assert orjson.dumps(mysql_json(decimal)) == b"123.05"
    with pytest.raises(ValueError):
        mysql_json(b"\x00" + struct.pack("<HH", 1, 400))


def test_heartbeat_names_the_file_and_position_the_server_stands_at() -> None:
    body = b"mysql-bin.000003"
    header = struct.pack("<IBIIIH", 0, P.HEARTBEAT_LOG_EVENT, 1, 19 + len(body) + 4, 328, 0)
    event = header + body
    event += struct.pack("<I", zlib.crc32(event))
    ev = P.BinlogReader(checksum=True).parse(b"\x00" + event, 1)
    assert isinstance(ev, P.Heartbeat)
    assert (ev.file, ev.header.log_pos) == ("mysql-bin.000003", 328)
    decoder = MySQLDecoder("p", set(), {}, Hooks({}))
    decoder.start(BinlogPosition("mysql-bin.000003", 4))
    assert decoder.feed(ev) is None and decoder.idle_batch() is None
