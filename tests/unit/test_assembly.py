"""The shared transaction/batch assembly (cdc/assembly.py): ids, the last-event mark, key
changes, and where batches are cut. Both sources' decoders use it; their own tests feed
captured bytes through it, these pin its rules directly."""

from __future__ import annotations

from cdc.assembly import TxAssembler
from cdc.schema import Column, SchemaVersion

VERSION = SchemaVersion(
    "public.t", 1, (Column("id", "integer", False),), ("id",), {"name": "public.t", "version": 1}, {}
)
SOURCE: dict[str, object] = {"table": "t"}


def make(batch_events: int = 10, batch_bytes: int = 1 << 20) -> TxAssembler:
    return TxAssembler("x", batch_events=batch_events, batch_bytes=batch_bytes, clock=lambda: 12.5)


def insert(a: TxAssembler, n: int) -> None:
    a.emit("c", SOURCE, VERSION, {"id": n}, None, {"id": n})


def test_ids_and_the_last_mark() -> None:
    a = make()
    a.begin("tx1")
    insert(a, 1)
    insert(a, 2)
    a.commit()
    a.begin("tx2")
    insert(a, 3)
    a.commit()
    events, whole, _ = a.take()
    assert whole
    assert [e.id for e in events] == ["x:tx1:0", "x:tx1:1", "x:tx2:0"]
    assert [e.transaction for e in events] == [("tx1", 0, False), ("tx1", 1, True), ("tx2", 0, True)]
    assert {e.ts_ms for e in events} == {12500}


def test_a_key_change_is_delete_then_create() -> None:
    a = make()
    a.begin("t")
    a.update(SOURCE, VERSION, {"id": 1}, {"id": 1}, {"id": 2}, {"id": 2})
    a.update(SOURCE, VERSION, {"id": 2}, {"id": 2}, {"id": 2}, {"id": 2})
    a.update(SOURCE, VERSION, None, None, {"id": 3}, {"id": 3})  # old key unknown: an update
    a.commit()
    events, _, _ = a.take()
    assert [(e.op, e.key, e.key_change) for e in events] == [
        ("d", {"id": 1}, {"to": {"id": 2}}),
        ("c", {"id": 2}, {"from": {"id": 1}}),
        ("u", {"id": 2}, None),
        ("u", {"id": 3}, None),
    ]
    assert events[0].before == {"id": 1} and events[0].after is None
    assert events[1].before is None and events[1].after == {"id": 2}


def test_a_cut_inside_a_transaction_keeps_its_newest_event_back() -> None:
    a = make(batch_events=3)
    a.begin("big")
    for n in range(3):
        insert(a, n)
    assert a.full()
    events, whole, _ = a.take()
    assert not whole
    assert [e.id for e in events] == ["x:big:0", "x:big:1"]
    a.commit()  # the kept-back event is the last one
    events, whole, _ = a.take()
    assert whole and [(e.id, e.transaction) for e in events] == [("x:big:2", ("big", 2, True))]


def test_a_cut_inside_a_transaction_ends_at_the_last_commit() -> None:
    a = make()
    a.begin("a")
    insert(a, 1)
    a.commit()
    a.begin("b")
    insert(a, 2)
    insert(a, 3)
    events, whole, _ = a.take()
    assert whole and [e.id for e in events] == ["x:a:0"]
    assert [e.id for e in a.out] == ["x:b:0", "x:b:1"]


def test_full_by_bytes() -> None:
    a = make(batch_bytes=100)
    a.begin("t")
    insert(a, 1)
    a.cost = 150
    assert not a.full()  # one event inside a transaction: a cut would hand over nothing
    insert(a, 2)
    assert a.full()
    a.commit()
    assert a.full()
    _, _, cost = a.take()
    assert cost == 150 and a.cost == 0 and not a.full()
