"""Outages of what `cdc run` depends on, while a writer keeps committing on two tables.

(a) The source database restarted mid-stream: PostgreSQL 15 with a fast and with an immediate
    shutdown; MariaDB (GTID positions) with a clean shutdown (SIGTERM) and with a crash
    (SIGKILL of mariadbd, InnoDB recovery at the next start). Each on a server of this module's
    own (on a fixed port, so the DSN survives the restart); file sink.
(b) The Kafka broker (Tansu) hung with SIGSTOP for :data:`BROKER_PAUSE_S` s, then SIGCONT;
    PostgreSQL 15 source.
(c) The webhook receiver down (connections refused) for exactly :data:`RECEIVER_DOWN_S` s,
    then answering 500 for a while, then answering slower than the sink's ``timeout_s`` for a
    while, then normally; PostgreSQL 15 source.

Each test waits for ``/healthz`` 503 during the fault (and checks it during every phase of
(c)), then measures the time to recover from the fault's end: until ``/healthz`` answers 200
again and until the first delivery after it (the ledger gets the later of the two; the
delivery is the first new checkpoint, saved only once the sink acknowledged new events, or for
the webhook the first request the receiver answered 2xx). Then the writer stops, the sink must
fold into the tables, every acknowledged change must be there (lost == 0), and each stream,
de-duplicated, must be strictly in commit order.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_local.postgres import LocalPostgres, find_debian_bindir, free_port
from tests.faults._support import (
    ChangeWriter,
    FileOut,
    KafkaOut,
    MyTables,
    Out,
    PgTables,
    ReceiverOut,
    Recovery,
    Tables,
    alive,
    checkpoint,
    health,
    outcome,
    stop_cleanly,
    wait_converged,
    wait_health,
    wait_new_checkpoint,
    wait_recovered,
)
from tests.helpers import CdcService, create_database, drop_database, wait_for, write_config
from tests.kafka_harness import KafkaHarness, TansuBroker, shared_broker
from tests.mysql_server import LocalMariaDB
from tests.webhook_harness import Answer, Receiver

NAME = "outage"
BROKER_PAUSE_S = 10.0
RECEIVER_DOWN_S = 30.0  # the figure: keep it


# -- servers of this module's own ----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_pg15() -> Iterator[LocalPostgres]:
    """A PostgreSQL 15 of this module's own (the session's is shared), on a fixed port so a
    restart keeps the clients' DSN."""
    server = LocalPostgres(find_debian_bindir(15), port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_pgdb(own_pg15: LocalPostgres) -> Iterator[str]:
    name, dsn = create_database(own_pg15)
    try:
        yield dsn
    finally:
        if not own_pg15.running:
            own_pg15.start()
        drop_database(own_pg15, name)


@pytest.fixture(scope="module")
def own_mariadb() -> Iterator[LocalMariaDB]:
    """A MariaDB of this module's own with GTID positions (strict mode, domain 7), on a fixed
    port."""
    server = LocalMariaDB(port=free_port(), gtid_domain_id=7, gtid_strict_mode=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_mydb(own_mariadb: LocalMariaDB) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    own_mariadb.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        if not own_mariadb.running:
            own_mariadb.start()
        own_mariadb.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def tansu() -> TansuBroker:
    return shared_broker()


# -- the common course of a test ---------------------------------------------------------------------


def _config(tmp_path: Path, db: Tables, sink: dict[str, Any], port: int) -> Path:
    pipeline = {"name": NAME, "source": db.source(), "snapshot": {"mode": "never"}, "sink": sink}
    return write_config(tmp_path, [pipeline], api_port=port)


def _progress(svc: CdcService, writer: ChangeWriter, transactions: int = 200) -> None:
    """Let the writer commit ``transactions`` more transactions and the pipeline checkpoint two
    new positions (mid-stream)."""
    target = writer.transactions + transactions

    def written() -> bool:
        writer.check()
        alive(svc)
        return writer.transactions >= target

    wait_for(written, 60, interval=0.05, what=f"{transactions} more transactions")
    for _ in range(2):
        wait_new_checkpoint(svc, NAME, checkpoint(svc, NAME), timeout=30)


def _finish(svc: CdcService, writer: ChangeWriter, out: Out, db: Tables) -> Any:
    """After the fault: a little more streaming, then stop the writer, wait until the sink
    folds into the tables, stop the service and check what the sink holds."""
    _progress(svc, writer)
    writer.stop()
    wait_converged(out, db, timeout=90)
    stop_cleanly(svc)
    return outcome(out, db, writer)


def _record(
    ledger: Any, fault: str, result: Any, rec: Recovery, writer: ChangeWriter, note: str, injected: int = 1
) -> None:
    print(
        f"{fault}: {writer.transactions} transactions, {result.changes} changes, {result.events} events "
        f"({result.duplicates} duplicates), lost {result.lost}; /healthz 200 after {rec.healthy_s:.2f} s, "
        f"first delivery after {rec.delivered_s:.2f} s"
    )
    ledger.record(
        fault,
        injected=injected,
        lost=result.lost,
        duplicates=result.duplicates,
        recover_s=rec.worst,
        note=(
            f"{note}; /healthz 503 during the fault, 200 {rec.healthy_s:.1f} s after its end, first delivery "
            f"{rec.delivered_s:.1f} s after it (time to recover: the later of the two); writer on two tables, "
            f"{writer.transactions:,} transactions, {result.changes:,} changes"
            + (f" ({writer.errors} writer errors while the database was away; a transaction cut by it is not counted)" if writer.errors else "")
            + f"; {result.events:,} events delivered"
        ),
    )
    assert result.lost == 0, f"{result.lost} acknowledged changes missing from the sink, e.g. {result.missing}"


# -- (a) the source database restarted ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart(mode: str, own_pg15: LocalPostgres, own_pgdb: str, tmp_path: Path, free_port: int, ledger: Any) -> None:
    db = PgTables(own_pgdb)
    db.create()
    out = FileOut(tmp_path / "out")
    config = _config(tmp_path, db, {"type": "file", "path": str(out.folder)}, free_port)
    writer = ChangeWriter(db, seed=f"pg-restart/{mode}", pause=0.005)
    svc = CdcService(config)
    try:
        svc.wait_state(NAME, "running", timeout=30)
        writer.start()
        _progress(svc, writer)
        own_pg15.stop(mode)
        wait_health(svc, 503, 20, "/healthz 503 while PostgreSQL is down")
        assert svc.pipeline(NAME)["state"] == "retrying"
        own_pg15.start()
        back = time.monotonic()
        rec = wait_recovered(svc, NAME, back)
        result = _finish(svc, writer, out, db)
    finally:
        writer.halt.set()
        svc.kill()
    assert writer.errors > 0, "the writer never saw the database go away"
    _record(
        ledger,
        f"PostgreSQL 15 restart, {mode} shutdown, file sink",
        result,
        rec,
        writer,
        f"pg_ctl stop -m {mode} mid-stream, started again once /healthz said 503",
    )


@pytest.mark.parametrize("mode", ["sigterm", "sigkill"])
def test_mariadb_restart(mode: str, own_mariadb: LocalMariaDB, own_mydb: str, tmp_path: Path, free_port: int, ledger: Any) -> None:
    db = MyTables(own_mariadb, own_mydb)
    db.create()
    out = FileOut(tmp_path / "out")
    config = _config(tmp_path, db, {"type": "file", "path": str(out.folder)}, free_port)
    writer = ChangeWriter(db, seed=f"mariadb-restart/{mode}", pause=0.005)
    svc = CdcService(config)
    try:
        svc.wait_state(NAME, "running", timeout=30)
        writer.start()
        _progress(svc, writer)
        if mode == "sigterm":
            own_mariadb.stop()
        else:
            own_mariadb.kill()
        wait_health(svc, 503, 20, "/healthz 503 while MariaDB is down")
        assert svc.pipeline(NAME)["state"] == "retrying"
        own_mariadb.start()
        back = time.monotonic()
        rec = wait_recovered(svc, NAME, back)
        result = _finish(svc, writer, out, db)
    finally:
        writer.halt.set()
        svc.kill()
    assert writer.errors > 0, "the writer never saw the database go away"
    fault, how = {
        "sigterm": ("MariaDB restart, clean shutdown (SIGTERM), file sink", "mariadbd stopped with SIGTERM"),
        "sigkill": ("MariaDB crash (kill -9 of mariadbd) and restart, file sink", "mariadbd killed with SIGKILL (InnoDB crash recovery at start)"),
    }[mode]
    _record(ledger, fault, result, rec, writer, f"{how} mid-stream (GTID positions), started again once /healthz said 503")


# -- (b) the Kafka broker hung -----------------------------------------------------------------------


def test_kafka_broker_paused(pg15db: str, tansu: TansuBroker, tmp_path: Path, free_port: int, ledger: Any) -> None:  # noqa: F811
    db = PgTables(pg15db)
    db.create()
    harness = KafkaHarness(tmp_path, tansu)
    out = KafkaOut(harness)
    config = _config(tmp_path, db, harness.sink_config(), free_port)
    writer = ChangeWriter(db, seed="kafka-pause", pause=0.005)
    svc = CdcService(config)
    try:
        svc.wait_state(NAME, "running", timeout=30)
        writer.start()
        _progress(svc, writer)
        tansu.pause()
        paused = time.monotonic()
        try:
            wait_health(svc, 503, BROKER_PAUSE_S - 1, "/healthz 503 while the broker is paused")
            at_503 = time.monotonic() - paused
            held = checkpoint(svc, NAME)
            doc = svc.pipeline(NAME)
            assert doc["state"] == "retrying" and doc["last_error"]["kind"] == "sink_unavailable", doc
            time.sleep(max(0.0, paused + BROKER_PAUSE_S - time.monotonic()))  # the fault's length
            assert checkpoint(svc, NAME) == held, "the checkpoint moved while the broker was paused"
            alive(svc)
        finally:
            resumed = time.monotonic()
            tansu.resume()
        rec = wait_recovered(svc, NAME, resumed)
        result = _finish(svc, writer, out, db)
    finally:
        writer.halt.set()
        svc.kill()
        harness.close()
    _record(
        ledger,
        f"Kafka broker paused {BROKER_PAUSE_S:.0f} s (SIGSTOP), PostgreSQL 15",
        result,
        rec,
        writer,
        f"Tansu hung with SIGSTOP mid-stream, SIGCONT after {BROKER_PAUSE_S:.0f} s; /healthz 503 "
        f"{at_503:.1f} s into the pause, checkpoint held meanwhile; 3 partitions per topic, each in commit order",
    )


# -- (c) the webhook receiver down, failing, slow -------------------------------------------------------


def test_webhook_receiver_down_failing_then_slow(pg15db: str, tmp_path: Path, free_port: int, ledger: Any) -> None:  # noqa: F811
    db = PgTables(pg15db)
    db.create()
    receiver = Receiver()
    out = ReceiverOut(receiver)
    timeout_s = 1.0
    sink = {"type": "webhook", "url": receiver.url, "batch_max": 100, "timeout_s": timeout_s, "max_backoff_s": 1}
    config = _config(tmp_path, db, sink, free_port)
    writer = ChangeWriter(db, seed="webhook", pause=0.02)

    def arrived_since(t: float, status: int | None = None) -> list[Any]:
        return [r for r in receiver.snapshot() if r.at >= t and (status is None or r.status == status)]

    svc = CdcService(config)
    try:
        svc.wait_state(NAME, "running", timeout=30)
        writer.start()
        _progress(svc, writer)
        # 1. down: connections refused for exactly RECEIVER_DOWN_S
        receiver.down()
        down_at = time.monotonic()
        wait_health(svc, 503, RECEIVER_DOWN_S - 1, "/healthz 503 while the receiver is down")
        at_503 = time.monotonic() - down_at
        time.sleep(max(0.0, down_at + RECEIVER_DOWN_S - time.monotonic()))  # the fault's length
        writer.check()
        assert health(svc) == 503
        # 2. up again, answering 500 to everything for a while
        receiver.mode = Answer(500, "internal error")
        receiver.up()
        up_at = time.monotonic()
        failed = wait_for_requests(lambda: arrived_since(up_at, 500), 5, svc)
        assert health(svc) == 503, "/healthz not 503 while the receiver answers 500"
        # 3. answering slower than timeout_s for a while
        receiver.mode = Answer(200, "late", delay_s=timeout_s + 1.5)
        slow_at = time.monotonic()
        slow = wait_for_requests(lambda: arrived_since(slow_at), 2, svc)
        assert health(svc) == 503, "/healthz not 503 while the receiver is slower than timeout_s"
        # 4. normal again
        receiver.mode = None
        end = time.monotonic()

        def first_delivery() -> float | None:
            ok = arrived_since(end, 200)
            return ok[0].at if ok else None

        rec = wait_recovered(svc, NAME, end, delivered=first_delivery)
        result = _finish(svc, writer, out, db)
    finally:
        writer.halt.set()
        svc.kill()
        receiver.close()
    timeouts = [
        r for r in svc.log_events() if r.get("event") == "webhook_batch_not_delivered_retrying" and "timeout" in str(r.get("reason"))
    ]
    assert timeouts, "the sink never timed out on the slow receiver"
    _record(
        ledger,
        f"Webhook receiver down {RECEIVER_DOWN_S:.0f} s, then 500s, then slower than timeout_s, PostgreSQL 15",
        result,
        rec,
        writer,
        f"connections refused for {RECEIVER_DOWN_S:.0f} s (/healthz 503 {at_503:.1f} s in), then {len(failed)} "
        f"requests answered 500, then {len(slow)} answered after {timeout_s + 1.5:.1f} s (timeout_s={timeout_s:.0f}: "
        f"{len(timeouts)} timeouts), then normal; duplicates are the late-answered batches sent again",
        injected=3,
    )


def wait_for_requests(get: Any, n: int, svc: CdcService, timeout: float = 30) -> list[Any]:
    """Wait until ``get()`` returns at least ``n`` requests (the service stays alive)."""
    def enough() -> list[Any] | None:
        alive(svc)
        got = get()
        return got if len(got) >= n else None

    return wait_for(enough, timeout, interval=0.05, what=f"{n} requests")  # type: ignore[no-any-return]
