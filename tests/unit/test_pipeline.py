"""The pipeline loop's delivery guarantee, with in-memory stand-ins for a source and a sink:
write -> flush -> checkpoint -> ack, retries resume from the checkpoint, fatal errors stop
only the pipeline, heartbeats advance the checkpoint, memory stays bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdc import registry
from cdc.config import PipelineConfig, ServiceConfig, SnapshotConfig
from cdc.errors import FatalError, RetriableError
from cdc.events import ChangeEvent
from cdc.pipeline import BoundedBuffer, Pipeline
from cdc.plugin import Batch, Sink, Source, setting
from cdc.schema import Column, SchemaVersion, TableSchema
from cdc.state import SQLiteStore

SV = SchemaVersion.build(TableSchema("public.t", (Column("id", "int4"),), ("id",)), 1)


@dataclass
class FakeSourceConfig:
    heartbeat_s: float = setting(0.2, doc="")


@dataclass
class FakeSinkConfig:
    pass


class World:
    """What the fakes share: the source's transactions and the log of calls."""

    def __init__(self, transactions: int, per_tx: int = 3) -> None:
        self.transactions = transactions
        self.per_tx = per_tx
        self.calls: list[tuple[str, Any]] = []
        self.durable: list[str] = []
        self.pending: list[str] = []
        self.fail_flush_once = False
        self.fail_open_fatal = False
        self.acked = 0
        self.heartbeat_at: int | None = None
        self.split = False
        self.violations: list[Any] = []
        self.lock = threading.Lock()


WORLD: World


class FakeSource(Source):
    Config = FakeSourceConfig
    connector = "fake"

    def open(self, checkpoint: str | None, *, adopt: bool = False) -> int:
        if WORLD.fail_open_fatal:
            raise FatalError("the source refuses", kind="source_config")
        self.next_tx = int(checkpoint) + 1 if checkpoint else 1
        self.held: list[ChangeEvent] = []
        WORLD.calls.append(("open", checkpoint))
        return self.next_tx - 1

    def read(self, timeout: float) -> Batch | None:
        if self.next_tx > WORLD.transactions:
            if WORLD.heartbeat_at is not None and WORLD.heartbeat_at > WORLD.transactions:
                pos, WORLD.heartbeat_at = WORLD.heartbeat_at, None
                return Batch([], pos)
            time.sleep(min(timeout, 0.01))
            return None
        if self.held:  # the rest of a transaction split over two batches
            time.sleep(0.002)  # ... still on its way: the dispatcher catches up meanwhile
            events, self.held = self.held, []
            tx = self.next_tx
            self.next_tx += 1
            return Batch(events, tx)
        tx = self.next_tx
        events = [
            ChangeEvent(f"fake:{tx}:{i}", "c", 0, {}, (str(tx), i, i == WORLD.per_tx - 1), SV, {"id": tx}, None, {"id": tx})
            for i in range(WORLD.per_tx)
        ]
        if WORLD.split and tx % 2 == 0:  # like a transaction larger than a batch
            self.held = events[1:]
            return Batch(events[:1], None)
        self.next_tx += 1
        return Batch(events, tx)

    def ack(self, position: Any) -> None:
        with WORLD.lock:
            if str(position) not in [c[1] for c in WORLD.calls if c[0] == "checkpoint"]:
                WORLD.violations.append(("ack before checkpoint", position))
            WORLD.acked = position

    def close(self) -> None:
        pass


class FakeSink(Sink):
    Config = FakeSinkConfig

    def open(self, resume: str | None) -> None:
        WORLD.pending.clear()

    def write_schema(self, schema: SchemaVersion) -> None:
        pass

    def write(self, events: Sequence[ChangeEvent]) -> None:
        WORLD.pending.extend(e.id for e in events)

    def flush(self) -> str | None:
        if WORLD.fail_flush_once and WORLD.pending:
            WORLD.fail_flush_once = False
            raise RetriableError("sink down", kind="sink_io")
        WORLD.durable.extend(WORLD.pending)
        WORLD.pending.clear()
        return None

    def close(self) -> None:
        pass


class RecordingStore(SQLiteStore):
    def save_checkpoint(self, pipeline: str, position: str, sink: str | None, snapshots: Any = ()) -> None:
        # the checkpoint only covers what the sink made durable
        # (recorded, not asserted here: the pipeline would take an AssertionError for a
        # failure to retry from)
        tx = int(position)
        beyond = [i for i in WORLD.durable if int(i.split(":")[1]) > tx]
        undelivered = [i for i in WORLD.pending if int(i.split(":")[1]) <= tx]
        if beyond or undelivered:
            WORLD.violations.append((position, beyond[:3], undelivered[:3]))
        WORLD.calls.append(("checkpoint", position))
        super().save_checkpoint(pipeline, position, sink, snapshots)


@pytest.fixture(autouse=True)
def fakes() -> Any:
    registry._cache[("source", "fake")] = FakeSource
    registry._cache[("sink", "fake")] = FakeSink
    yield
    registry._cache.pop(("source", "fake"), None)
    registry._cache.pop(("sink", "fake"), None)


def _pipeline(tmp_path: Path) -> tuple[Pipeline, RecordingStore]:
    pc = PipelineConfig(
        name="p", source=FakeSourceConfig(), sink=FakeSinkConfig(), snapshot=SnapshotConfig(mode="never"),
        source_type="fake", sink_type="fake",
    )
    sc = ServiceConfig(pipelines=[pc], config_dir=str(tmp_path))
    store = RecordingStore(tmp_path / "state.sqlite")
    return Pipeline(pc, sc, store), store


def _wait(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_every_event_delivered_and_checkpoint_follows_flush(tmp_path: Path) -> None:
    global WORLD
    WORLD = World(transactions=200)
    p, store = _pipeline(tmp_path)
    p.start()
    _wait(lambda: WORLD.acked == 200)
    p.stop()
    assert p.join(5)
    assert len(WORLD.durable) == 600 and len(set(WORLD.durable)) == 600
    assert WORLD.violations == []
    assert store.get_checkpoint("p").position == "200"  # type: ignore[union-attr]
    assert p.status.state == "stopped"


def test_retriable_sink_error_resumes_from_checkpoint_without_loss(tmp_path: Path) -> None:
    global WORLD
    WORLD = World(transactions=300)
    WORLD.fail_flush_once = True
    p, store = _pipeline(tmp_path)
    p.start()
    _wait(lambda: WORLD.acked == 300, timeout=15)
    p.stop()
    p.join(5)
    opens = [c for c in WORLD.calls if c[0] == "open"]
    assert len(opens) == 2 and opens[1][1] is not None  # the restart resumed from the checkpoint
    assert set(WORLD.durable) == {f"fake:{t}:{i}" for t in range(1, 301) for i in range(3)}
    assert WORLD.violations == []
    assert p.status.retries == 1


def test_fatal_error_fails_only_this_pipeline(tmp_path: Path) -> None:
    global WORLD
    WORLD = World(transactions=1)
    WORLD.fail_open_fatal = True
    p, _ = _pipeline(tmp_path)
    p.start()
    assert p.join(5)
    assert p.status.state == "failed"
    assert p.status.last_error is not None and p.status.last_error["kind"] == "source_config"


def test_heartbeat_advances_checkpoint_while_idle(tmp_path: Path) -> None:
    global WORLD
    WORLD = World(transactions=2)
    p, store = _pipeline(tmp_path)
    p.start()
    _wait(lambda: WORLD.acked == 2)
    WORLD.heartbeat_at = 50
    _wait(lambda: WORLD.acked == 50)
    p.stop()
    p.join(5)
    assert store.get_checkpoint("p").position == "50"  # type: ignore[union-attr]


def test_bounded_buffer_blocks_producer_when_full() -> None:
    buf = BoundedBuffer(100)
    assert buf.put("a", 60, 0.1)
    assert not buf.put("b", 60, 0.05)  # would exceed the bound
    assert buf.get(0.1) == "a"
    assert buf.put("b", 60, 0.1)
    assert buf.put("huge", 10_000, 0.1) is False  # waits while something is queued
    assert buf.get(0.1) == "b"
    assert buf.put("huge", 10_000, 0.1)  # a single oversized item passes when empty


def test_checkpoints_match_the_sink_when_transactions_span_batches(tmp_path: Path) -> None:
    # RecordingStore asserts at every checkpoint that the sink holds nothing beyond it, so a
    # resume token taken at that moment is exactly the checkpoint's point.
    global WORLD
    WORLD = World(transactions=400)
    WORLD.split = True
    p, store = _pipeline(tmp_path)
    p.start()
    _wait(lambda: WORLD.acked == 400, timeout=15)
    p.stop()
    p.join(5)
    assert WORLD.violations == []
    assert sorted(WORLD.durable) == sorted(f"fake:{t}:{i}" for t in range(1, 401) for i in range(3))
    assert store.get_checkpoint("p").position == "400"  # type: ignore[union-attr]
