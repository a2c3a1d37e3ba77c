"""pgoutput decoding, replication framing and LSNs, from bytes captured off PostgreSQL 15.

The capture (``tests/data/pgoutput/``, made by ``tests/data/capture_pgoutput.py``) changes at
every run in its LSNs, xids, OIDs and commit times, so these tests find relations by name and
check those numbers only for consistency, and check the values the capture script wrote exactly.
"""

from __future__ import annotations

import json
import pickle
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from sources.postgres.lsn import Lsn
from sources.postgres.pgoutput import (
    TRUNCATE_RESTART_IDENTITY,
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputError,
    Relation,
    RelationColumn,
    Truncate,
    Type,
    Update,
    decode,
)
from sources.postgres.protocol import (
    PG_EPOCH_UNIX,
    Keepalive,
    ProtocolError,
    XLogData,
    parse_copy_data,
    pg_time_to_unix,
    standby_status_update,
    unix_to_pg_time,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "pgoutput"


def load_raw() -> list[bytes]:
    blob = (DATA / "messages.bin").read_bytes()
    out = []
    pos = 0
    while pos < len(blob):
        (size,) = struct.unpack_from(">I", blob, pos)
        out.append(blob[pos + 4 : pos + 4 + size])
        pos += 4 + size
    assert pos == len(blob)
    return out


RAW = load_raw()
MANIFEST: dict[str, Any] = json.loads((DATA / "manifest.json").read_text())


@pytest.fixture(scope="module")
def msgs() -> list[Any]:
    return [decode(b) for b in RAW]


def relation(msgs: list[Any], name: str) -> Relation:
    return next(m for m in msgs if isinstance(m, Relation) and m.name == name)


def changes(msgs: list[Any], name: str) -> list[Any]:
    relid = relation(msgs, name).relid
    return [m for m in msgs if isinstance(m, Insert | Update | Delete) and m.relid == relid]


# --- the capture as a whole ---------------------------------------------------------------------


def test_capture_is_small_and_matches_its_manifest(msgs: list[Any]) -> None:
    assert sum(len(b) for b in RAW) < 200_000
    assert [chr(b[0]) for b in RAW] == [m["type"] for m in MANIFEST["messages"]]
    assert [type(m).__name__ for m in msgs] == [m["note"] for m in MANIFEST["messages"]]
    assert MANIFEST["session_settings"]["IntervalStyle"] == "iso_8601"


def test_every_message_kind_is_decoded(msgs: list[Any]) -> None:
    kinds = {type(m) for m in msgs}
    assert kinds == {
        Begin,
        Commit,
        Origin,
        Relation,
        Type,
        Insert,
        Update,
        Delete,
        Truncate,
        Message,
    }


def test_transactions_are_bracketed_by_begin_and_commit(msgs: list[Any]) -> None:
    begin: Begin | None = None
    last_end = Lsn(0)
    seen = 0
    for m in msgs:
        if isinstance(m, Begin):
            assert begin is None
            assert type(m.final_lsn) is Lsn and m.final_lsn > last_end
            assert m.xid > 0
            begin = m
        elif isinstance(m, Commit):
            assert begin is not None
            assert m.flags == 0
            assert m.commit_lsn == begin.final_lsn
            assert m.end_lsn > m.commit_lsn
            assert m.commit_ts == begin.commit_ts
            last_end = m.end_lsn
            begin = None
            seen += 1
        elif isinstance(m, Message) and not m.flags & 1:
            assert begin is None  # a non-transactional message stands alone
        else:
            assert begin is not None, m
    assert begin is None
    assert seen == 12


def test_commit_times_are_microseconds_since_2000(msgs: list[Any]) -> None:
    begin = next(m for m in msgs if isinstance(m, Begin))
    assert isinstance(begin.commit_ts, int)
    unix = pg_time_to_unix(begin.commit_ts)
    assert 1_700_000_000 < unix < time.time() + 60


# --- relations and types ------------------------------------------------------------------------


def test_relation_columns_flags_types_and_typmods(msgs: list[Any]) -> None:
    rel = relation(msgs, "cdc_types")
    assert rel.namespace == "public"
    assert rel.replica_identity == "d"
    assert len(rel.columns) == 47
    assert all(isinstance(c, RelationColumn) for c in rel.columns)
    cols = {c.name: c for c in rel.columns}
    assert [c.name for c in rel.columns if c.flags & 1] == ["id"]
    assert cols["id"] == RelationColumn(1, "id", 23, -1)
    expected = {
        "c_int2": (21, -1),
        "c_int8": (20, -1),
        "c_oid": (26, -1),
        "c_num": (1700, (12 << 16 | 2) + 4),  # numeric(12,2)
        "c_num_any": (1700, -1),
        "c_f4": (700, -1),
        "c_f8": (701, -1),
        "c_varchar": (1043, 50 + 4),
        "c_bpchar": (1042, 5 + 4),
        "c_bit": (1560, 10),
        "c_varbit": (1562, 16),
        "c_time3": (1083, 3),
        "c_ts0": (1114, 0),
        "c_tstz": (1184, -1),
        "c_json": (114, -1),
        "c_jsonb": (3802, -1),
        "c_int4arr": (1007, -1),
        "c_int2d": (1007, -1),
        "c_boxarr": (1020, -1),
    }
    for name, (oid, typmod) in expected.items():
        assert (cols[name].flags, cols[name].type_oid, cols[name].typmod) == (0, oid, typmod), name


def test_composite_key_and_replica_identity_full_flags(msgs: list[Any]) -> None:
    keyed = relation(msgs, "cdc_keyed")
    assert keyed.replica_identity == "d"
    assert [(c.name, c.flags) for c in keyed.columns] == [("region", 1), ("id", 1), ("name", 0)]
    full = relation(msgs, "cdc_full")
    assert full.replica_identity == "f"
    # Under FULL pgoutput flags every column as part of the identity.
    assert [(c.name, c.flags, c.type_oid) for c in full.columns] == [("a", 1, 23), ("b", 1, 25)]


def test_type_messages_precede_the_relation_that_uses_them(msgs: list[Any]) -> None:
    rel_index = next(i for i, m in enumerate(msgs) if isinstance(m, Relation))
    types = [m for m in msgs[:rel_index] if isinstance(m, Type)]
    rel = msgs[rel_index]
    cols = {c.name: c for c in rel.columns}
    by_oid = {t.oid: t for t in types}
    assert by_oid[cols["c_mood"].type_oid] == Type(cols["c_mood"].type_oid, "public", "cdc_mood")
    assert by_oid[cols["c_moodarr"].type_oid].name == "_cdc_mood"
    # A domain's Type message names its base type, in pg_catalog (empty namespace).
    assert by_oid[cols["c_posint"].type_oid] == Type(cols["c_posint"].type_oid, "", "int4")
    assert len(types) == 3


# --- row changes --------------------------------------------------------------------------------


def test_insert_tuples_hold_text_bytes_and_none_for_null(msgs: list[Any]) -> None:
    ins = changes(msgs, "cdc_types")
    assert all(isinstance(m, Insert) for m in ins)
    row1, row2, row3, row4 = (m.new for m in ins)
    cols = [c.name for c in relation(msgs, "cdc_types").columns]
    r1 = dict(zip(cols, row1, strict=True))
    assert r1["id"] == b"1"
    assert r1["c_int8"] == b"9223372036854775807"
    assert r1["c_text"] == 'héllo, "world"'.encode()
    assert r1["c_bpchar"] == b"ab   "
    assert r1["c_bytea"] == b"\\x00ff10"
    assert r1["c_tstz"] == b"2026-11-28 12:45:01.123+00"  # peeked with TimeZone=UTC
    assert r1["c_interval"] == b"P1DT2H3M4.5S"  # IntervalStyle=iso_8601
    assert r1["c_f4"] == b"1.1" and r1["c_f8"] == b"0.1"  # shortest exact
    assert r1["c_json"] == b'{\n  "a": 12345678901234567890.123456789,\n\t"b": [1, 2.50, -0]\r\n}'
    assert r1["c_textarr"] == b'{"a b","c\\"d",NULL,"NULL","",x}'
    r2 = dict(zip(cols, row2, strict=True))
    assert r2["c_uuid"] is None and r2["c_text"] == b"" and r2["c_bytea"] == b"\\x"
    assert r2["c_date"] == b"0044-03-15 BC"
    assert row4 == [b"4"] + [None] * 46
    assert all(type(v) is bytes for v in row1)
    assert sum(v is None for v in row3) == 47 - 8


def test_update_without_key_change_has_no_old_tuple(msgs: list[Any]) -> None:
    upd = changes(msgs, "cdc_keyed")[2]
    assert upd == Update(upd.relid, None, None, [b"eu", b"1", b"uno"])


def test_update_changing_the_key_sends_the_old_key_only(msgs: list[Any]) -> None:
    upd = changes(msgs, "cdc_keyed")[3]
    assert isinstance(upd, Update)
    assert upd.old_kind == "K"
    assert upd.old == [b"eu", b"1", None]  # non-key columns are not sent (null)
    assert upd.new == [b"eu", b"10", b"uno"]


def test_delete_under_default_identity_sends_the_key(msgs: list[Any]) -> None:
    d = changes(msgs, "cdc_keyed")[4]
    assert d == Delete(d.relid, "K", [b"us", b"2", None])


def test_replica_identity_full_sends_the_whole_old_row(msgs: list[Any]) -> None:
    ins1, ins2, upd, dele, ins3 = changes(msgs, "cdc_full")
    assert ins2.new == [b"2", None]
    assert upd.old_kind == "O" and upd.old == [b"1", b"x"] and upd.new == [b"1", b"y"]
    assert dele.old_kind == "O" and dele.old == [b"2", None]
    assert ins3.new == [b"3", b"from origin"]


def test_unchanged_toast_value_is_the_unchanged_sentinel(msgs: list[Any]) -> None:
    ins, upd = changes(msgs, "cdc_toast")
    big = ins.new[2]
    assert len(big) == MANIFEST["big_text_length"] == 20_000
    assert big.startswith(b"00000,00001,")
    assert upd.old_kind is None and upd.old is None
    assert upd.new[:2] == [b"1", b"second"]
    assert upd.new[2] is UNCHANGED


def test_truncate_lists_both_tables_in_order(msgs: list[Any]) -> None:
    (t,) = [m for m in msgs if isinstance(m, Truncate)]
    assert t.options == TRUNCATE_RESTART_IDENTITY
    assert t.relids == (relation(msgs, "cdc_keyed").relid, relation(msgs, "cdc_full").relid)
    assert type(t.relids) is tuple


def test_logical_messages_transactional_and_not(msgs: list[Any]) -> None:
    tx, non_tx = [m for m in msgs if isinstance(m, Message)]
    assert tx.flags & 1 and tx.prefix == "cdc" and tx.content == b"hello"
    assert not non_tx.flags & 1 and non_tx.prefix == "cdc" and non_tx.content == b"\x00\xff"
    assert type(tx.lsn) is Lsn and non_tx.lsn > tx.lsn


def test_origin_follows_begin(msgs: list[Any]) -> None:
    i = next(i for i, m in enumerate(msgs) if isinstance(m, Origin))
    assert isinstance(msgs[i - 1], Begin)
    assert msgs[i] == Origin(Lsn.parse("0/ABCDEF"), "cdc_test_origin")


# --- decode() input and errors ------------------------------------------------------------------


def test_decode_accepts_memoryview_and_bytearray() -> None:
    for raw in RAW:
        assert decode(memoryview(raw)) == decode(raw) == decode(bytearray(raw))


def test_decode_matches_a_hand_built_insert() -> None:
    vals: list[Any] = [b"42", None, b"paid", b""]
    body = b"".join(b"n" if v is None else b"t" + struct.pack(">I", len(v)) + v for v in vals)
    msg = b"I" + struct.pack(">I", 16384) + b"N" + struct.pack(">H", 4) + body
    assert decode(msg) == Insert(16384, vals)


def test_binary_column_value_is_refused() -> None:
    msg = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"b" + struct.pack(">I", 4)
    with pytest.raises(PgOutputError, match="binary"):
        decode(msg + b"\x00\x00\x00\x01")
    upd = b"U" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"b\x00\x00\x00\x00"
    with pytest.raises(PgOutputError, match="binary"):
        decode(upd)


@pytest.mark.parametrize(
    ("buf", "match"),
    [
        (b"Z\x00", "unknown pgoutput message type"),
        (b"S\x00\x00\x00\x01\x01", "Stream Start"),
        (b"", "malformed"),
    ],
)
def test_unknown_or_empty_message_is_refused(buf: bytes, match: str) -> None:
    with pytest.raises(PgOutputError, match=match):
        decode(buf)


def test_truncated_messages_raise_pgoutput_error() -> None:
    for raw in RAW:
        for cut in {1, len(raw) // 2, len(raw) - 1}:
            with pytest.raises(PgOutputError):
                decode(raw[:cut])


def test_pgoutput_error_is_a_value_error() -> None:
    assert issubclass(PgOutputError, ValueError)


def test_unchanged_is_a_unique_sentinel() -> None:
    assert repr(UNCHANGED) == "UNCHANGED"
    assert type(UNCHANGED)() is UNCHANGED
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
    assert UNCHANGED is not None and UNCHANGED != b""


# --- LSN ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("16/B374D848", 0x16_B374D848),
        ("0/1", 1),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
        ("1/0", 1 << 32),
    ],
)
def test_lsn_parses_and_prints_like_postgresql(text: str, value: int) -> None:
    lsn = Lsn.parse(text)
    assert lsn == value and isinstance(lsn, int)
    assert str(lsn) == text
    assert f"{lsn}" == text
    assert repr(lsn) == f"Lsn('{text}')"


def test_lsn_normalises_case_and_leading_zeros() -> None:
    assert str(Lsn.parse("016/b374d848")) == "16/B374D848"
    assert str(Lsn.parse("00000000/00000001")) == "0/1"


@pytest.mark.parametrize("bad", ["", "16B374D848", "0x1/0", "1/2/3", " 1/2", "G/0", "1/123456789"])
def test_lsn_rejects_malformed_text(bad: str) -> None:
    with pytest.raises(ValueError):
        Lsn.parse(bad)


def test_lsn_orders_as_an_integer_and_stays_in_range() -> None:
    assert Lsn.parse("0/FFFFFFFF") < Lsn.parse("1/0") < Lsn.parse("16/B374D848")
    assert sorted([Lsn(3), Lsn(1), Lsn(2)]) == [1, 2, 3]
    assert f"{Lsn(255):x}" == "ff"
    assert hash(Lsn(7)) == hash(7)
    with pytest.raises(ValueError):
        Lsn(-1)
    with pytest.raises(ValueError):
        Lsn(2**64)


# --- replication framing ------------------------------------------------------------------------


def test_xlogdata_frame_carries_one_pgoutput_message() -> None:
    payload = RAW[5]  # the first Insert
    frame = b"w" + struct.pack(">QQq", 0x16_B374D848, 0x16_B374D900, 849_154_104_587_273) + payload
    x = parse_copy_data(frame)
    assert isinstance(x, XLogData)
    assert x == XLogData(
        Lsn.parse("16/B374D848"), Lsn.parse("16/B374D900"), 849_154_104_587_273, payload
    )
    assert type(x.data_start) is Lsn and type(x.wal_end) is Lsn
    assert isinstance(decode(x.payload), Insert)
    mv = parse_copy_data(memoryview(frame))
    assert isinstance(mv, XLogData) and isinstance(mv.payload, memoryview)
    assert decode(mv.payload) == decode(payload)


@pytest.mark.parametrize("reply", [False, True])
def test_keepalive_frame(reply: bool) -> None:
    frame = b"k" + struct.pack(">Qq?", 0x1_00000010, -5, reply)
    k = parse_copy_data(frame)
    assert k == Keepalive(Lsn.parse("1/10"), -5, reply)
    assert k.reply_requested is reply


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "empty"),
        (b"x123", "unknown"),
        (b"k\x00\x00", "truncated"),
        (b"w" + b"\x00" * 20, "truncated"),
    ],
)
def test_bad_copy_data_is_refused(frame: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_copy_data(frame)


def test_standby_status_update_layout() -> None:
    msg = standby_status_update(Lsn.parse("16/B374D848"), 0x10, 0x0F, now_us=123_456, reply=True)
    assert len(msg) == 1 + 8 * 4 + 1
    assert msg[:1] == b"r"
    assert struct.unpack(">QQQq?", msg[1:]) == (0x16_B374D848, 0x10, 0x0F, 123_456, True)
    assert standby_status_update(1, 1, 1, now_us=0)[-1] == 0


def test_standby_status_update_defaults_to_the_current_time() -> None:
    before = unix_to_pg_time(time.time())
    (clock,) = struct.unpack_from(">q", standby_status_update(0, 0, 0), 25)
    assert before <= clock <= unix_to_pg_time(time.time())


def test_pg_time_conversions_round_trip() -> None:
    assert PG_EPOCH_UNIX == 946_684_800
    assert pg_time_to_unix(0) == 946_684_800.0
    assert unix_to_pg_time(946_684_800) == 0
    assert unix_to_pg_time(946_684_799.5) == -500_000
    us = 849_154_104_587_273
    assert unix_to_pg_time(pg_time_to_unix(us)) == us
    assert pg_time_to_unix(us) == pytest.approx(1_795_838_904.587273)
