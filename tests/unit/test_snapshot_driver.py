"""The snapshot driver's watermark rules, with a scripted reader (no database): which rows of a
chunk are emitted, where in the stream, and what progress is saved."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cdc.config import PipelineConfig, SnapshotConfig
from cdc.events import ChangeEvent
from cdc.log import get_logger
from cdc.schema import Column, SchemaRegistry, TableSchema
from cdc.snapshot import SnapshotDriver, new_record
from cdc.snapshot_api import Chunk, SnapshotReader, TableInfo
from cdc.state import SQLiteStore

T = "public.t"
SCHEMA = TableSchema(T, (Column("id", "int4", False), Column("v", "text")), ("id",))
KEYLESS = TableSchema(T, (Column("id", "int4"), Column("v", "text")), ())


class FakeChunk(Chunk):
    __slots__ = ("seen",)

    def __init__(self, *args: Any, seen: set[int]) -> None:
        super().__init__(*args)
        self.seen = seen

    def visible(self, event: ChangeEvent) -> bool:
        return int(event.source["tx"]) in self.seen

    def source_block(self, position: Any, snapshot_id: str) -> dict[str, Any]:
        return {"snapshot": True, "snapshot_id": snapshot_id, "lsn": position}

    def at(self, position: Any) -> tuple[int, ...]:
        return (position, 0)


class FakeReader(SnapshotReader):
    """Serves ``rows`` (id -> v) in key order; each read sees the transactions in ``seen``
    and has the high watermark ``high`` (both set by the test before the read)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def describe(self, table: str) -> TableInfo:
        return TableInfo(table, () if self.world.keyless else ("id",), len(self.world.rows))

    def read_chunk(self, table: str, cursor: Any, limit: int | None) -> Chunk:
        w = self.world
        if w.gate is not None:
            assert w.gate.acquire(timeout=5)
        w.reads += 1
        ids = sorted(i for i in w.rows if cursor is None or i > cursor)
        if limit is not None:
            ids = ids[:limit]
        key = (lambda i: None) if w.keyless else (lambda i: {"id": i})
        rows = [(key(i), {"id": i, "v": w.rows[i]}) for i in ids]
        done = limit is None or len(ids) < limit
        return FakeChunk(
            table, KEYLESS if w.keyless else SCHEMA, rows, ids[-1] if ids else None, done, w.high,
            f"r{w.reads}", seen=set(w.seen),
        )

    def close(self) -> None:
        pass


class World:
    def __init__(self) -> None:
        self.rows: dict[int, str] = {}
        self.seen: set[int] = set()
        self.high = 0
        self.reads = 0
        self.keyless = False
        self.gate: threading.Semaphore | None = None  # set: each read takes one release


class FakeSource:
    connector = "fake"

    def __init__(self, world: World) -> None:
        self.world = world
        self.requests = 0

    def snapshot_reader(self) -> SnapshotReader:
        return FakeReader(self.world)

    def position_reached(self, position: Any, high: Any) -> bool:
        return bool(position >= high)

    def request_position(self) -> None:
        self.requests += 1


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def setup(tmp_path: Path, world: World) -> Any:
    store = SQLiteStore(tmp_path / "state.sqlite")
    pc = PipelineConfig(name="p", source_type="fake", sink_type="fake", source=_Tables(), sink=None)
    pc.snapshot = SnapshotConfig(mode="never", chunk_rows=3)
    registry = SchemaRegistry(store, "p")
    source = FakeSource(world)
    driver = SnapshotDriver(pc, store, source, registry, get_logger(), lambda: None)  # type: ignore[arg-type]
    yield driver, store, source
    driver.close()
    store.close()


class _Tables:
    tables = [T]


def _event(tx: int, op: str, key: int | None, v: str | None = None, before: dict[str, Any] | None = None) -> ChangeEvent:
    from cdc.schema import SchemaVersion

    sv = SchemaVersion.build(SCHEMA, 1)
    after = {"id": key, "v": v} if op in ("c", "u") else None
    return ChangeEvent(f"x:{tx}", op, 0, {"tx": str(tx)}, (str(tx), 0, True), sv,
                       None if key is None or op == "t" else {"id": key}, before, after)


def _keyless_event(tx: int, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> ChangeEvent:
    from cdc.schema import SchemaVersion

    sv = SchemaVersion.build(KEYLESS, 1)
    return ChangeEvent(f"x:{tx}", op, 0, {"tx": str(tx)}, (str(tx), 0, True), sv, None, before, after)


def _request(driver: SnapshotDriver, store: SQLiteStore) -> str:
    record = new_record("p", [T], "request")
    store.add_snapshot("p", record)
    driver.notify()
    return str(record["id"])


def _poll_until(driver: SnapshotDriver, position: int, cond: Any, timeout: float = 5) -> list[ChangeEvent]:
    """Poll at ``position`` until ``cond(driver)`` holds; return the events emitted."""
    out: list[ChangeEvent] = []
    deadline = time.monotonic() + timeout
    while True:
        events, dirty = driver.poll(position, True)
        driver.store.update_snapshots("p", dirty)  # as the pipeline's commit does
        out += events
        if cond(driver):
            return out
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def _arrived(n: int) -> Any:
    return lambda d: len(d._arrived) >= n


def test_rows_wait_for_the_high_watermark_and_unseen_changes_win(setup: Any, world: World) -> None:
    driver, store, source = setup
    world.rows = {1: "a", 2: "b", 3: "c", 4: "d"}
    world.seen = {10}
    world.high = 100
    world.gate = threading.Semaphore(1)  # one read now, the next when the test says so
    sid = _request(driver, store)
    _poll_until(driver, 50, _arrived(1))
    # below the high watermark nothing is emitted, and the source is asked for its position
    assert driver.poll(50, True)[0] == [] and source.requests > 0
    # a change the read saw (tx 10) and one it did not (tx 11) arrive before the rows
    driver.observe([_event(10, "u", 1, "a"), _event(11, "u", 2, "B"), _event(11, "d", 3)])
    events, dirty = driver.poll(100, True)
    assert [(e.op, e.key, e.after) for e in events] == [("r", {"id": 1}, {"id": 1, "v": "a"})]
    assert events[0].id == f"{sid}:0:0:r1:0" and events[0].transaction is None
    assert events[0].source == {"snapshot": True, "snapshot_id": sid, "lsn": 100}
    assert dirty and dirty[0]["progress"][T]["cursor"] == 3 and dirty[0]["progress"][T]["rows_done"] == 1
    store.update_snapshots("p", dirty)
    # a change after the rows were emitted is not the chunk's business any more
    driver.observe([_event(12, "d", 1)])
    world.gate.release(2)
    events = _poll_until(driver, 200, lambda d: d.record is None)
    assert [e.key for e in events] == [{"id": 4}]
    (record,) = store.snapshots("p")
    assert record["state"] == "done" and record["rows_done"] == 2


def test_changes_delivered_while_the_read_is_in_flight_apply_on_arrival(setup: Any, world: World) -> None:
    driver, store, _ = setup
    world.rows = {1: "a", 2: "b"}
    world.high = 10
    _request(driver, store)
    world.gate = threading.Semaphore(0)
    # the first read is in flight (held by the gate) while a change the read will not see is
    # delivered
    _poll_until(driver, 0, lambda d: d._info is not None and d._reading)
    driver.observe([_event(5, "u", 2, "B")])
    world.gate.release(2)
    events = _poll_until(driver, 10, lambda d: d.record is None)
    assert [e.key for e in events] == [{"id": 1}]


def test_unseen_truncate_drops_the_chunk_and_progress_goes_on(setup: Any, world: World) -> None:
    driver, store, _ = setup
    world.rows = {1: "a", 2: "b", 3: "c", 4: "d"}
    world.high = 10
    world.gate = threading.Semaphore(1)
    _request(driver, store)
    _poll_until(driver, 0, _arrived(1))
    driver.observe([_event(7, "t", None)])
    events, dirty = driver.poll(10, True)
    assert events == [] and dirty[0]["progress"][T]["chunks"] == 1
    world.seen = {7}  # the next read sees the truncate
    world.gate.release(2)
    events = _poll_until(driver, 10, lambda d: d.record is None)
    assert [e.key for e in events] == [{"id": 4}]


def test_resume_starts_after_the_saved_cursor(setup: Any, world: World, tmp_path: Path) -> None:
    driver, store, _ = setup
    world.rows = {i: str(i) for i in range(1, 8)}
    world.high = 1
    world.gate = threading.Semaphore(1)
    sid = _request(driver, store)
    _poll_until(driver, 0, _arrived(1))
    events, dirty = driver.poll(1, True)
    assert len(events) == 3
    store.update_snapshots("p", dirty)  # what the commit saves with the checkpoint
    world.gate.release(100)
    driver.close()  # the service stops (the read in flight is dropped)
    # a new driver (the service restarted) continues with chunk 1, after key 3
    again = SnapshotDriver(driver.config, store, driver.source, driver.registry, get_logger(), lambda: None)
    try:
        events = _poll_until(again, 1, lambda d: d.record is None)
    finally:
        again.close()
    assert [e.key["id"] for e in events] == [4, 5, 6, 7]
    assert {e.id.split(":")[2] for e in events} == {"1", "2"}
    (record,) = store.snapshots("p")
    assert record["id"] == sid and record["rows_done"] == 7 and record["state"] == "done"


def test_cancel_stops_the_snapshot(setup: Any, world: World) -> None:
    driver, store, _ = setup
    world.rows = {i: str(i) for i in range(1, 10)}
    world.high = 5
    sid = _request(driver, store)
    _poll_until(driver, 0, _arrived(1))
    store.cancel_snapshot("p", sid)
    driver.notify()
    events, dirty = driver.poll(10, True)
    assert events == [] and driver.table is None
    (record,) = store.snapshots("p")
    assert record["state"] == "cancelled"
    # the pipeline's save does not bring it back
    store.update_snapshots("p", [{**record, "state": "running"}])
    assert store.snapshots("p")[0]["state"] == "cancelled"


def test_keyless_table_applies_unseen_changes_to_the_read(setup: Any, world: World) -> None:
    driver, store, _ = setup
    world.keyless = True
    world.rows = {1: "a", 2: "b", 3: "c"}
    world.high = 10
    _request(driver, store)
    _poll_until(driver, 0, _arrived(1))
    driver.observe([
        _keyless_event(7, "d", {"id": 2, "v": "b"}, None),
        _keyless_event(7, "c", None, {"id": 9, "v": "z"}),
        _keyless_event(8, "u", {"id": 1, "v": "a"}, {"id": 1, "v": "A"}),
    ])
    events = _poll_until(driver, 10, lambda d: d.record is None)
    assert sorted(e.after["v"] for e in events) == ["A", "c", "z"]
    assert all(e.key is None for e in events)


def test_keyless_change_without_a_full_image_reads_again(setup: Any, world: World) -> None:
    driver, store, _ = setup
    world.keyless = True
    world.rows = {1: "a"}
    world.high = 10
    _request(driver, store)
    _poll_until(driver, 0, _arrived(1))
    driver.observe([_keyless_event(7, "d", None, None)])
    world.seen = {7}
    world.rows = {}
    events = _poll_until(driver, 10, lambda d: d.record is None)
    assert events == [] and world.reads == 2


def test_keyless_empty_read_still_emits_rows_inserted_unseen(setup: Any, world: World) -> None:
    driver, store, _ = setup
    world.keyless = True
    world.rows = {}
    world.high = 10
    _request(driver, store)
    _poll_until(driver, 0, _arrived(1))
    driver.observe([_keyless_event(7, "c", None, {"id": 9, "v": "z"})])
    events = _poll_until(driver, 10, lambda d: d.record is None)
    assert [e.after for e in events] == [{"id": 9, "v": "z"}]


def test_a_change_delivered_before_the_read_that_the_read_did_not_see_still_wins(
    setup: Any, world: World
) -> None:
    """PostgreSQL can stream a transaction (its commit record is flushed) while a snapshot taken
    right after still counts it as running: the read then returns the older row, although the
    stream delivered the newer one BEFORE the read began. The snapshot row must not overwrite
    it."""
    driver, store, _ = setup
    world.rows = {1: "a", 2: "old", 3: "c"}
    world.high = 10
    world.gate = threading.Semaphore(0)
    _request(driver, store)
    driver.poll(0, True)  # the table starts: its description is asked for; no read yet
    assert driver.table == T and driver._info is None
    # tx 7 is delivered before the first read starts ...
    driver.observe([_event(7, "u", 2, "new")])
    # ... and the read, taken now, does not see it (its snapshot lists 7 as running)
    world.seen = set()
    world.gate.release(2)
    events = _poll_until(driver, 10, lambda d: d.record is None)
    assert [(e.key, e.after["v"]) for e in events] == [({"id": 1}, "a"), ({"id": 3}, "c")]
