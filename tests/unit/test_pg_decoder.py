"""pgoutput messages to change events and batches, without a server (sources/postgres/decoder.py).

The captured stream (``tests/data/pgoutput/``, see ``test_pgoutput.py``) and hand-built messages
are fed through the relations and decoder layers; catalog facts, the schema registry and the
log are small in-memory stand-ins (``pg_layers.py``). LSNs and xids of the capture change at
every capture, so ids are checked against the messages' own Begin and Commit.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from cdc.errors import FatalError
from cdc.events import ChangeEvent
from cdc.plugin import Batch
from sources.postgres import decoder as decoder_module
from sources.postgres.lsn import Lsn
from sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    RelationColumn,
    Update,
    decode,
)
from sources.postgres.protocol import unix_to_pg_time

from .pg_layers import Log, Registry, facts, make_decoder
from .test_pgoutput import RAW

CAPTURED = ["public.cdc_keyed", "public.cdc_toast", "public.cdc_full"]


def feed_all(dec: Any, msgs: list[Any]) -> list[Batch]:
    batches = []
    for m in msgs:
        b = dec.feed(m, 100)
        if b is not None:
            batches.append(b)
    if dec.pending:
        batches.append(dec.cut())
    return batches


def events_of(batches: list[Batch]) -> list[ChangeEvent]:
    return [e for b in batches for e in b.events]


@pytest.fixture(scope="module")
def captured() -> list[Any]:
    return [decode(b) for b in RAW]


@pytest.fixture(scope="module")
def stream(captured: list[Any]) -> tuple[list[ChangeEvent], list[Any], Registry, Log]:
    registry, log = Registry(), Log()
    # cdc_keyed's primary key is (id, region): index order differs from column order
    dec = make_decoder(
        CAPTURED,
        {
            "public.cdc_keyed": facts(["id", "region"], ["region", "id"]),
            "public.cdc_toast": facts(["id"]),
        },
        registry=registry,
        log=log,
    )
    return events_of(feed_all(dec, captured)), captured, registry, log


def by_table(events: list[ChangeEvent], table: str) -> list[ChangeEvent]:
    return [e for e in events if e.table == table]


def tx_of(captured: list[Any], index: int) -> tuple[Begin, Commit]:
    """The Begin and Commit around message ``index`` of the capture."""
    begin = next(m for m in reversed(captured[:index]) if isinstance(m, Begin))
    commit = next(m for m in captured[index:] if isinstance(m, Commit))
    return begin, commit


def test_insert_default_identity_key_in_index_order(stream: Any) -> None:
    events, captured, _, _ = stream
    ins = [e for e in by_table(events, "public.cdc_keyed") if e.op == "c" and e.key_change is None]
    assert [e.after for e in ins] == [
        {"region": "eu", "id": 1, "name": "one"},
        {"region": "us", "id": 2, "name": "two"},
    ]
    assert [list(e.key) for e in ins] == [["id", "region"], ["id", "region"]]
    assert ins[0].key == {"id": 1, "region": "eu"}
    assert ins[0].before is None and ins[0].unchanged is None
    assert ins[0].schema.key == ("id", "region")
    nullable = {c.name: c.nullable for c in ins[0].schema.columns}
    assert nullable == {"region": False, "id": False, "name": True}


def test_ids_transaction_and_source_block(stream: Any) -> None:
    events, captured, _, _ = stream
    index = next(i for i, m in enumerate(captured) if isinstance(m, Insert) and m.new[0] == b"eu")
    begin, commit = tx_of(captured, index)
    tx = str(Lsn(begin.final_lsn))
    ins = [e for e in by_table(events, "public.cdc_keyed") if e.source["lsn"] == tx]
    assert [e.id for e in ins] == [f"pg:{tx}:0", f"pg:{tx}:1"]
    assert [e.transaction for e in ins] == [(tx, 0, False), (tx, 1, True)]
    assert ins[0].source is ins[1].source  # shared per transaction and table
    assert ins[0].source == {
        "connector": "postgres",
        "pipeline": "p1",
        "db": "shop",
        "schema": "public",
        "table": "cdc_keyed",
        "ts_ms": int((begin.commit_ts / 1_000_000 + 946_684_800) * 1000),
        "tx": str(begin.xid),
        "lsn": tx,
        "snapshot": False,
    }
    assert ins[0].ts_ms == 1_700_000_000_000
    assert str(commit.commit_lsn) == tx


def test_update_without_old_tuple(stream: Any) -> None:
    events, _, _, _ = stream
    upd = [e for e in by_table(events, "public.cdc_keyed") if e.op == "u"]
    assert len(upd) == 1
    assert upd[0].key == {"id": 1, "region": "eu"}
    assert upd[0].before is None
    assert upd[0].after == {"region": "eu", "id": 1, "name": "uno"}
    assert upd[0].transaction is not None and upd[0].transaction[1:] == (0, True)


def test_key_change_is_delete_then_create(stream: Any) -> None:
    events, _, _, _ = stream
    moved = [e for e in by_table(events, "public.cdc_keyed") if e.key_change is not None]
    assert [e.op for e in moved] == ["d", "c"]
    d, c = moved
    assert d.key == {"id": 1, "region": "eu"}
    assert d.before == {"id": 1, "region": "eu"}  # a 'K' old tuple: the key columns only
    assert d.after is None
    assert d.key_change == {"to": {"id": 10, "region": "eu"}}
    assert c.key == {"id": 10, "region": "eu"}
    assert c.after == {"region": "eu", "id": 10, "name": "uno"}
    assert c.key_change == {"from": {"id": 1, "region": "eu"}}
    tx = d.source["lsn"]
    assert (d.id, c.id) == (f"pg:{tx}:0", f"pg:{tx}:1")
    assert (d.transaction, c.transaction) == ((tx, 0, False), (tx, 1, True))


def test_delete_with_key_tuple(stream: Any) -> None:
    events, _, _, _ = stream
    dels = [e for e in by_table(events, "public.cdc_keyed") if e.op == "d" and e.key_change is None]
    assert len(dels) == 1
    assert dels[0].key == {"id": 2, "region": "us"}
    assert dels[0].before == {"id": 2, "region": "us"}
    assert dels[0].after is None


def test_unchanged_toast_is_listed(stream: Any) -> None:
    events, _, _, _ = stream
    ins, upd = by_table(events, "public.cdc_toast")
    assert ins.op == "c" and len(ins.after["big"]) == 20_000
    assert upd.op == "u"
    assert upd.after == {"id": 1, "note": "second"}  # the value was not sent
    assert upd.unchanged == ["big"]
    assert upd.key == {"id": 1}


def test_full_identity_without_key(stream: Any) -> None:
    events, _, _, log = stream
    full = by_table(events, "public.cdc_full")
    ops = [e.op for e in full]
    assert ops == ["c", "c", "u", "d", "t", "c"]
    assert all(e.key is None for e in full)
    assert full[2].before == {"a": 1, "b": "x"} and full[2].after == {"a": 1, "b": "y"}
    assert full[3].before == {"a": 2, "b": None} and full[3].after is None
    assert "key_unknown" not in log.events()  # no key in the catalog: nothing to warn of


def test_full_identity_with_catalog_key() -> None:
    rel = Relation(
        7, "public", "f", "f", (RelationColumn(1, "a", 23, -1), RelationColumn(1, "b", 25, -1))
    )
    dec = make_decoder(["public.f"], {"public.f": facts(["a"])})
    msgs = [
        Begin(Lsn(0x100), unix_to_pg_time(1_700_000_000), 5),
        rel,
        Update(7, "O", [b"1", b"x"], [b"2", b"x"]),  # the key changed: d + c
        Update(7, "O", [b"2", b"x"], [b"2", b"y"]),
        Delete(7, "O", [b"2", b"y"]),
        Commit(0, Lsn(0x100), Lsn(0x180), 0),
    ]
    ev = events_of(feed_all(dec, msgs))
    assert [(e.op, e.key) for e in ev] == [
        ("d", {"a": 1}),
        ("c", {"a": 2}),
        ("u", {"a": 2}),
        ("d", {"a": 2}),
    ]
    assert ev[0].before == {"a": 1, "b": "x"} and ev[0].key_change == {"to": {"a": 2}}
    assert ev[2].before == {"a": 2, "b": "x"}
    assert [e.id for e in ev] == [f"pg:0/100:{i}" for i in range(4)]
    assert ev[-1].transaction == ("0/100", 3, True)


def test_full_identity_key_absent_from_the_message_is_keyless_with_a_warning() -> None:
    log = Log()
    rel = Relation(
        7, "public", "f", "f", (RelationColumn(1, "a", 23, -1), RelationColumn(1, "b", 25, -1))
    )
    dec = make_decoder(["public.f"], {"public.f": facts(["a", "c"])}, log=log)
    ev = events_of(
        feed_all(
            dec,
            [
                Begin(Lsn(0x100), 0, 5),
                rel,
                Insert(7, [b"1", b"x"]),
                Commit(0, Lsn(0x100), Lsn(0x180), 0),
            ],
        )
    )
    assert ev[0].key is None and ev[0].schema.key == ()
    (record,) = [r for r in log.records if r[1] == "key_unknown"]
    assert record[2]["table"] == "public.f" and record[2]["lsn"] == "0/100"
    assert "is (a, c) now, but c did not exist" in record[2]["message"]


def test_truncate_of_several_relations(stream: Any) -> None:
    events, _, _, _ = stream
    t = [e for e in events if e.op == "t"]
    assert [e.table for e in t] == ["public.cdc_keyed", "public.cdc_full"]
    tx = t[0].source["lsn"]
    assert [e.id for e in t] == [f"pg:{tx}:0", f"pg:{tx}:1"]
    assert [e.transaction for e in t] == [(tx, 0, False), (tx, 1, True)]
    assert all(e.key is None and e.before is None and e.after is None for e in t)


def test_truncate_skips_relations_not_captured(captured: list[Any]) -> None:
    dec = make_decoder(["public.cdc_full"])
    ev = events_of(feed_all(dec, captured))
    assert [e.op for e in ev if e.op == "t"] == ["t"]
    assert {e.table for e in ev} == {"public.cdc_full"}


def test_messages_without_rows_make_no_events(captured: list[Any]) -> None:
    dec = make_decoder([])
    assert feed_all(dec, captured) == []
    assert dec.position == captured[-1].end_lsn
    assert not dec.in_tx


def test_schema_version_resolved_once_per_description_at_its_point(stream: Any) -> None:
    _, captured, registry, _ = stream
    names = [s.name for s, _ in registry.calls]
    # cdc_keyed and cdc_full are described again before the TRUNCATE, cdc_full once more later
    assert names == [
        "public.cdc_keyed",
        "public.cdc_toast",
        "public.cdc_full",
        "public.cdc_keyed",
        "public.cdc_full",
        "public.cdc_full",
    ]
    first = next(
        i for i, m in enumerate(captured) if isinstance(m, Relation) and m.name == "cdc_keyed"
    )
    begin, _ = tx_of(captured, first)
    assert registry.calls[0][1] == (begin.final_lsn, 0)
    assert len(registry.versions) == 3  # the same descriptions resolve to the same versions


def test_relation_resent_with_another_key_mid_stream() -> None:
    registry = Registry()
    cols = (RelationColumn(1, "id", 23, -1), RelationColumn(0, "code", 25, -1))
    cols2 = (RelationColumn(0, "id", 23, -1), RelationColumn(1, "code", 25, -1))
    catalog = {"public.t": facts(["id"])}
    dec = make_decoder(["public.t"], catalog, registry=registry)
    msgs: list[Any] = [
        Begin(Lsn(0x100), 0, 5),
        Relation(9, "public", "t", "d", cols),
        Insert(9, [b"1", b"a"]),
        Commit(0, Lsn(0x100), Lsn(0x180), 0),
    ]
    first = events_of(feed_all(dec, msgs))
    catalog["public.t"] = facts(["code"])  # ALTER TABLE ... a new primary key (code)
    msgs = [
        Begin(Lsn(0x200), 0, 6),
        Insert(9, [b"2", b"b"]),  # written before the ALTER: the old description
        Relation(9, "public", "t", "d", cols2),
        Insert(9, [b"3", b"c"]),
        Update(9, "K", [None, b"c"], [b"3", b"d"]),
        Commit(0, Lsn(0x200), Lsn(0x280), 0),
    ]
    second = events_of(feed_all(dec, msgs))
    assert first[0].key == {"id": 1} and first[0].schema.version == 1
    assert [(e.op, e.key, e.schema.version) for e in second] == [
        ("c", {"id": 2}, 1),
        ("c", {"code": "c"}, 2),
        ("d", {"code": "c"}, 2),
        ("c", {"code": "d"}, 2),
    ]
    assert registry.calls[1][1] == (0x200, 1)  # resolved at the next event's point


def test_relation_flags_win_over_a_catalog_key_of_other_columns() -> None:
    # the stream is behind an ALTER: the message flags (id), the catalog says (code) now
    dec = make_decoder(["public.t"], {"public.t": facts(["code"])})
    cols = (RelationColumn(0, "code", 25, -1), RelationColumn(1, "id", 23, -1))
    ev = events_of(
        feed_all(
            dec,
            [
                Begin(Lsn(1), 0, 1),
                Relation(9, "public", "t", "d", cols),
                Insert(9, [b"x", b"1"]),
                Commit(0, Lsn(1), Lsn(2), 0),
            ],
        )
    )
    assert ev[0].key == {"id": 1}


def test_renamed_table_is_followed_by_oid() -> None:
    log, renames = Log(), []  # type: ignore[var-annotated]
    dec = make_decoder(["public.old"], listed={9: "public.old"}, log=log, renames=renames)
    cols = (RelationColumn(1, "id", 23, -1),)
    msgs = [
        Begin(Lsn(0x100), 0, 5),
        Relation(9, "public", "old", "d", cols),
        Insert(9, [b"1"]),
        Commit(0, Lsn(0x100), Lsn(0x180), 0),
        Begin(Lsn(0x200), 0, 6),
        Relation(9, "public", "new", "d", cols),
        Insert(9, [b"2"]),
        Relation(9, "public", "new", "d", cols),  # described again under the same name
        Insert(9, [b"3"]),
        Commit(0, Lsn(0x200), Lsn(0x280), 0),
    ]
    ev = events_of(feed_all(dec, msgs))
    assert [(e.table, e.source["table"]) for e in ev] == [
        ("public.old", "old"),
        ("public.new", "new"),
        ("public.new", "new"),
    ]
    warnings = [r for r in log.records if r[1] == "table_renamed"]
    assert len(warnings) == 1
    assert warnings[0][2]["listed"] == "public.old" and warnings[0][2]["streamed"] == "public.new"
    assert warnings[0][2]["lsn"] == "0/200"
    assert renames == [("public.old", "public.new")]


def test_renamed_to_a_listed_name_is_not_recorded() -> None:
    renames: list[tuple[str, str]] = []
    # the file lists both names: the new one is known, nothing to keep for the next start
    dec = make_decoder(["public.old", "public.new"], listed={9: "public.old"}, renames=renames)
    cols = (RelationColumn(1, "id", 23, -1),)
    ev = events_of(
        feed_all(
            dec,
            [
                Begin(Lsn(1), 0, 1),
                Relation(9, "public", "new", "d", cols),
                Insert(9, [b"1"]),
                Commit(0, Lsn(1), Lsn(2), 0),
            ],
        )
    )
    assert ev[0].table == "public.new"
    assert renames == []


def test_unlisted_relation_changes_are_skipped() -> None:
    dec = make_decoder(["public.a"])
    cols = (RelationColumn(1, "id", 23, -1),)
    msgs = [
        Begin(Lsn(1), 0, 1),
        Relation(8, "public", "b", "d", cols),
        Insert(8, [b"1"]),
        Commit(0, Lsn(1), Lsn(2), 0),
    ]
    assert feed_all(dec, msgs) == []
    assert dec.relations == {8: None}


def test_change_before_its_relation_is_a_protocol_error() -> None:
    dec = make_decoder(["public.a"])
    dec.feed(Begin(Lsn(1), 0, 1))
    with pytest.raises(FatalError) as err:
        dec.feed(Insert(8, [b"1"]))
    assert err.value.kind == "protocol"
    assert str(err.value) == "pgoutput sent a change for relation 8 before describing it"


def test_excluded_column_the_table_lacks_is_a_config_error() -> None:
    dec = make_decoder(["public.a"], exclude={"public.a": {"secret"}})
    dec.feed(Begin(Lsn(1), 0, 1))
    with pytest.raises(FatalError) as err:
        dec.feed(Relation(8, "public", "a", "d", (RelationColumn(1, "id", 23, -1),)))
    assert err.value.kind == "config"
    assert "columns.exclude for public.a names 'secret', which the table does not have" in str(
        err.value
    )


def _tx(lsn: int, relid: int, rows: list[int]) -> list[Any]:
    return [
        Begin(Lsn(lsn), 0, lsn),
        *(Insert(relid, [str(r).encode()]) for r in rows),
        Commit(0, Lsn(lsn), Lsn(lsn + 8), 0),
    ]


def test_batch_cut_at_the_event_limit_inside_one_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decoder_module, "BATCH_EVENTS", 4)
    dec = make_decoder(["public.a"])
    dec.feed(Relation(8, "public", "a", "d", (RelationColumn(1, "id", 23, -1),)))
    batches = feed_all(dec, _tx(0x100, 8, list(range(10))))
    # the newest event is kept back each time: only Commit tells whether it is the last
    assert [len(b.events) for b in batches] == [3, 3, 3, 1]
    assert [b.position for b in batches] == [None, None, None, Lsn(0x108)]
    ids = [e.id for b in batches for e in b.events]
    assert ids == [f"pg:0/100:{i}" for i in range(10)]
    last = [e.transaction[2] for b in batches for e in b.events if e.transaction]
    assert last == [False] * 9 + [True]


def test_batch_cut_at_the_last_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_module, "BATCH_EVENTS", 5)
    dec = make_decoder(["public.a"])
    dec.feed(Relation(8, "public", "a", "d", (RelationColumn(1, "id", 23, -1),)))
    msgs = _tx(0x100, 8, [1, 2, 3]) + _tx(0x200, 8, [4, 5, 6]) + _tx(0x300, 8, [7])
    batches = feed_all(dec, msgs)
    # the limit is reached inside the second transaction: the batch ends at the first Commit
    assert [[e.after["id"] for e in b.events] for b in batches] == [[1, 2, 3], [4, 5, 6, 7]]
    assert [b.position for b in batches] == [Lsn(0x108), Lsn(0x308)]
    assert batches[0].events[-1].transaction == ("0/100", 2, True)


def test_batch_cut_at_a_commit_once_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_module, "BATCH_EVENTS", 3)
    dec = make_decoder(["public.a"])
    dec.feed(Relation(8, "public", "a", "d", (RelationColumn(1, "id", 23, -1),)))
    got = [dec.feed(m) for m in _tx(0x100, 8, [1, 2])]
    assert got == [None] * 4
    got = [dec.feed(m) for m in _tx(0x200, 8, [3])]
    batch = got[1]  # the Insert fills the batch: cut at the previous Commit
    assert batch is not None and [e.after["id"] for e in batch.events] == [1, 2]
    assert batch.position == Lsn(0x108)
    assert got[2] is None and dec.in_tx is False
    rest = dec.cut()
    assert [e.after["id"] for e in rest.events] == [3] and rest.position == Lsn(0x208)


def test_batch_cut_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_module, "BATCH_BYTES", 5000)
    dec = make_decoder(["public.a"])
    dec.feed(Relation(8, "public", "a", "d", (RelationColumn(1, "id", 23, -1),)))
    dec.feed(Begin(Lsn(0x100), 0, 1))
    assert dec.feed(Insert(8, [b"1"]), 1000) is None
    assert dec.feed(Insert(8, [b"2"]), 1000) is None
    batch = dec.feed(Insert(8, [b"3"]), 1000)
    assert batch is not None and len(batch.events) == 2 and batch.position is None
    assert batch.cost == 3 * 1800 + 64


def test_event_bytes_of_the_stream(stream: Any) -> None:
    events, _, _, _ = stream
    line = json.loads(events[0].json)
    assert line["id"] == events[0].id and line["op"] == "c"
    assert orjson.loads(events[0].json)["schema"]["version"] == 1


def test_unchanged_marker_with_whole_old_row_takes_the_old_value() -> None:
    rel = Relation(
        7, "public", "f", "f", (RelationColumn(1, "a", 23, -1), RelationColumn(1, "b", 25, -1))
    )
    dec = make_decoder(["public.f"], {"public.f": facts(["a"])})
    ev = events_of(
        feed_all(
            dec,
            [
                Begin(Lsn(1), 0, 1),
                rel,
                Update(7, "O", [b"1", b"big"], [b"1", UNCHANGED]),
                Commit(0, Lsn(1), Lsn(2), 0),
            ],
        )
    )
    assert ev[0].after == {"a": 1, "b": "big"} and ev[0].unchanged is None


class _Frames:
    """libpq's COPY BOTH reads, replayed: (length, frame) pairs, then end of copy."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = list(frames)

    def get_copy_data(self, _async: int) -> tuple[int, memoryview]:
        if not self.frames:
            return -1, memoryview(b"")
        frame = self.frames.pop(0)
        return len(frame), memoryview(frame)


def test_an_undecodable_message_is_a_fatal_protocol_error_with_its_wal_position() -> None:
    from cdc.errors import ProtocolError
    from sources.postgres.stream import ReplicationStream

    dec = make_decoder(["public.f"], {})
    stream = ReplicationStream("", "db", "slot", "pub", "p", dec, 10.0)
    good = b"w" + (0x1000).to_bytes(8, "big") * 2 + bytes(8) + b"B" + (0x1100).to_bytes(8, "big") + bytes(8) + (5).to_bytes(4, "big")
    bad = b"w" + (0x1234).to_bytes(8, "big") * 2 + bytes(8) + b"Z garbage"  # no such message type
    stream._repl = _Frames([good, bad])  # type: ignore[assignment]
    with pytest.raises(ProtocolError) as info:
        stream.read(1.0)
    assert info.value.kind == "protocol" and not info.value.retriable
    assert "0/1234" in str(info.value) and info.value.position == "0/1234"
