"""`kill -9` of `cdc run`, again and again, while a writer keeps committing.

For PostgreSQL 15 and MariaDB (binlog file positions), each with the file sink and with the
Kafka sink (and PostgreSQL 15 with the nats, redis and rabbitmq sinks): two pre-filled tables are snapshotted (``snapshot.mode: initial``, small chunks, so
the snapshot is in flight during the first kills) while a writer commits small transactions on
both (inserts, updates, deletes) the whole time. The service is killed with SIGKILL
:data:`KILLS` times, each time after a seeded random 0.3-1.5 s of running past its recovery,
and restarted at once. After the last restart the writer stops and the test waits until the
sink folds into the tables; then, with the service stopped:

- folding the sink's events (de-duplicated by id) in delivery order gives exactly both tables;
- every change whose commit the server acknowledged is in the sink (lost == 0);
- each stream (the file; each Kafka partition; the RabbitMQ queue bound with ``#``),
  de-duplicated, is strictly in commit order;
- the file sink holds no duplicate at all (it cuts its files back to the checkpoint at start),
  nor do the redis sink (it skips what Redis already holds) and the nats sink (JetStream drops
  what is published again by Nats-Msg-Id).

The nats and redis sinks (PostgreSQL only) run on a server of their own (tests/nats_harness.py,
tests/redis_harness.py).

Time to recover, per restart: from spawning the new process to the first checkpoint it saves
(the sink acknowledged new events); the ledger gets the worst of the restarts, the note the
mean.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults._support import (
    ChangeWriter,
    FileOut,
    KafkaOut,
    MyTables,
    Out,
    PgTables,
    RabbitOut,
    StreamsOut,
    Tables,
    alive,
    outcome,
    saved_checkpoint,
    stop_cleanly,
    wait_converged,
    wait_new_checkpoint,
)
from tests.helpers import CdcService, write_config
from tests.kafka_harness import KafkaHarness, shared_broker
from tests.mariadb_fixtures import MyDB
from tests.rabbitmq_harness import RabbitHarness

KILLS = 10
PREFILL = 5000  # rows per table before the first start
CHUNK_ROWS = 5
NAME = "loop"


def _crash_loop(db: Tables, sink: str, tmp_path: Path, port: int, ledger: Any, label: str) -> None:
    rng = random.Random(f"crash-loop/{db.kind}/{sink}")
    db.create(prefill=PREFILL)
    out: Out
    harness: Any = None
    if sink == "file":
        sink_cfg: dict[str, Any] = {"type": "file", "path": str(tmp_path / "out")}
        out = FileOut(tmp_path / "out")
    elif sink in ("nats", "redis"):
        if sink == "nats":
            from tests.nats_harness import NatsHarness

            harness = NatsHarness(tmp_path)
        else:
            from tests.redis_harness import RedisHarness

            harness = RedisHarness(tmp_path)
        sink_cfg = harness.sink_config()
        out = StreamsOut(harness)
    elif sink == "rabbitmq":
        harness = RabbitHarness(tmp_path)
        sink_cfg = harness.sink_config()
        out = RabbitOut(harness)
    else:
        harness = KafkaHarness(tmp_path, shared_broker())
        sink_cfg = harness.sink_config()
        out = KafkaOut(harness)
    pipeline = {
        "name": NAME,
        "source": db.source(),
        "snapshot": {"mode": "initial", "chunk_rows": CHUNK_ROWS},
        "sink": sink_cfg,
    }
    config = write_config(tmp_path, [pipeline], api_port=port)
    state = tmp_path / "state.sqlite"
    writer = ChangeWriter(db, seed=f"writer/{db.kind}/{sink}", pause=0.01)
    recoveries: list[float] = []
    in_snapshot = 0
    t_start = time.monotonic()
    svc = CdcService(config)
    try:
        svc.wait_state(NAME, "running", timeout=60)
        writer.start()
        for _ in range(KILLS):
            # a random moment of running, then SIGKILL (the writer never pauses)
            time.sleep(rng.uniform(0.3, 1.5))
            alive(svc)
            writer.check()
            snap = svc.pipeline(NAME).get("snapshot") or {}
            if snap.get("state") in ("pending", "running"):
                in_snapshot += 1
            svc.kill()
            saved = saved_checkpoint(state, NAME)
            t0 = time.monotonic()
            svc = CdcService(config)
            wait_new_checkpoint(svc, NAME, saved, timeout=45)
            recoveries.append(time.monotonic() - t0)
        writer.stop()
        wait_converged(out, db, timeout=90)
        stop_cleanly(svc)
        result = outcome(out, db, writer)
    finally:
        writer.halt.set()
        svc.kill()
        if harness is not None:
            harness.close()
    elapsed = time.monotonic() - t_start
    print(
        f"{label}: {KILLS} kills ({in_snapshot} during the snapshot), {writer.transactions} transactions, "
        f"{result.changes} changes, {result.events} events ({result.unique} unique, {result.duplicates} duplicates, "
        f"{result.duplicate_ids} ids twice or more), {result.snapshot_rows} snapshot rows, lost {result.lost}; "
        f"recovery max {max(recoveries):.2f} s mean {statistics.mean(recoveries):.2f} s; {elapsed:.1f} s"
    )
    ledger.record(
        label,
        injected=KILLS,
        lost=result.lost,
        duplicates=result.duplicates,
        recover_s=max(recoveries),
        note=(
            f"kill -9 after a seeded random 0.3-1.5 s of running, {in_snapshot} of them during the initial "
            f"snapshot ({2 * PREFILL:,} rows, chunks of {CHUNK_ROWS}); writer on two tables, "
            f"{writer.transactions:,} transactions, {result.changes:,} changes; {result.events:,} events delivered. "
            f"Time to recover: the worst of the {KILLS} restarts, from spawning the process to its first new "
            f"checkpoint (mean {statistics.mean(recoveries):.2f} s)"
        ),
    )
    assert result.lost == 0, f"{result.lost} acknowledged changes missing from the sink, e.g. {result.missing}"
    assert writer.errors == 0, "the database went away during the test"
    assert in_snapshot >= 1, "no kill happened while the initial snapshot was in flight"
    if sink in ("file", "nats", "redis"):
        assert result.duplicates == 0, f"{result.duplicates} duplicate events in the {sink} sink after kill -9"


@pytest.mark.parametrize("sink", ["file", "kafka", "nats", "redis", "rabbitmq"])
def test_postgres_kill9_loop(sink: str, pg15db: str, tmp_path: Path, free_port: int, ledger: Any) -> None:  # noqa: F811
    _crash_loop(PgTables(pg15db), sink, tmp_path, free_port, ledger, f"PostgreSQL 15 kill -9 loop, {sink} sink")


@pytest.mark.parametrize("sink", ["file", "kafka"])
def test_mariadb_kill9_loop(sink: str, mydb: MyDB, tmp_path: Path, free_port: int, ledger: Any) -> None:  # noqa: F811
    _crash_loop(MyTables(mydb.server, mydb.name), sink, tmp_path, free_port, ledger, f"MariaDB kill -9 loop, {sink} sink")
