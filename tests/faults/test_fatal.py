"""Fatal faults: what a person must act on gives a clear error that says what happened and the
way back, never a silent restart from "now" — and the way back the error names does bring the
sink back to the table's rows.

- the replication slot is dropped by someone else WHILE the service streams (its walsender
  terminated, the slot dropped): `slot_missing`, the slot is not re-created;
- MariaDB's binlog is purged past the checkpoint while the service is stopped (file and GTID
  positions): `binlog_purged`;
- the state file is deleted while the service is stopped, in the middle of an initial snapshot:
  `state_lost` naming `cdc drop` and `--adopt`; `--adopt` then loses nothing;
- the state file is corrupted (bytes overwritten) while the service is stopped: a clear error,
  exit 1, no traceback, from `cdc run` and from `cdc status`.

A writer keeps committing through each fault. Each test records one ledger row: ``injected`` 1
(the fault), ``lost`` 0 meaning nothing was silently skipped (the pipeline stopped, and the way
back restored every row), ``recover_s`` the time from starting the way back until the sink
matched the table again (or, for the corrupted file, until the error), ``note`` the error kind.
"""

from __future__ import annotations

import random
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from cdc_local.postgres import LocalPostgres
from tests.helpers import (
    CdcService,
    cdc_env,
    create_database,
    dedupe,
    drop_database,
    execute,
    find_log,
    fold,
    log_records,
    pg_pipeline,
    read_complete_events,
    read_events,
    run_cli,
    run_until_exit,
    slot_row,
    table_rows,
    wait_for,
    write_config,
)

# ruff: noqa: F811 - the MariaDB fixtures above are used as test arguments
from tests.integration.test_mysql_source import my_pipeline, table_state
from tests.integration.test_pg_resilience import Writer, create_tables
from tests.mariadb_fixtures import MyDB

PG15 = pytest.mark.parametrize("pg", ["pg15"], indirect=True)


# -- helpers --------------------------------------------------------------------------------------


def _mismatch(got: dict[bytes, Any], want: dict[bytes, Any]) -> int:
    """Rows of the table missing from the fold, or different there, plus rows the fold has that
    the table has not."""
    return sum(1 for k, v in want.items() if got.get(k) != v) + sum(1 for k in got if k not in want)


def _converge(check: Any, timeout: float = 90) -> int:
    """Wait until ``check()`` (rows that differ) is 0; returns the last count (0 unless it timed
    out, in which case the test records it and fails)."""
    last = [-1]

    def done() -> bool:
        last[0] = check()
        return last[0] == 0

    try:
        wait_for(done, timeout, interval=0.3, what="the sink to match the table")
    except AssertionError:
        pass
    return last[0]


def _failure(stderr: str, pipeline: str) -> dict[str, Any]:
    records = log_records(stderr)
    rec = find_log(records, "pipeline_failed", pipeline=pipeline) or find_log(
        records, "cannot_start"
    )
    assert rec is not None, f"no pipeline_failed / cannot_start in the log:\n{stderr[-4000:]}"
    return rec


def _pg_diff(out: Path, dsn: str, table: str) -> int:
    return _mismatch(fold(dedupe(read_complete_events(out)), table), table_rows(dsn, table, ["id"]))


def _remove_state(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


class _MyWriter(threading.Thread):
    """Small transactions on MariaDB's ``items`` (id, v, n): an insert, an update, now and then
    a delete, paced (``pause`` seconds between transactions), until stopped."""

    def __init__(self, db: MyDB, first_new_id: int, *, seed: int = 7, pause: float = 0.01) -> None:
        super().__init__(name="mariadb-writer", daemon=True)
        self.db = db
        self.next_id = first_new_id
        self.live = list(range(1, first_new_id))
        self.rng = random.Random(seed)
        self.pause = pause
        self.halt = threading.Event()
        self.transactions = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            conn = self.db.connect(autocommit=False)
            try:
                with conn.cursor() as cur:
                    while not self.halt.is_set():
                        i = self.next_id
                        cur.execute("INSERT INTO items VALUES (%s, %s, 0)", (i, f"new {i}"))
                        victim = None
                        if self.live:
                            cur.execute(
                                "UPDATE items SET v = CONCAT(v, '+'), n = n + 1 WHERE id = %s",
                                (self.rng.choice(self.live),),
                            )
                        if len(self.live) > 20 and self.rng.random() < 0.3:
                            victim = self.rng.choice(self.live)
                            cur.execute("DELETE FROM items WHERE id = %s", (victim,))
                        conn.commit()
                        self.next_id += 1
                        self.live.append(i)
                        if victim is not None:
                            self.live.remove(victim)
                        self.transactions += 1
                        self.halt.wait(self.pause)
            finally:
                conn.close()
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the writer did not stop"
        if self.failure is not None:
            raise self.failure


# -- (a) the slot dropped while the service runs ------------------------------------------------------


def _terminate_and_drop(dsn: str, slot: str) -> bool:
    """One attempt: end the walsender holding ``slot`` and drop it. The service reconnects at
    once, so the drop may find the slot active again: the caller retries."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE slot_name = %s AND active_pid IS NOT NULL",
            (slot,),
        )
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        except psycopg.errors.ObjectInUse:
            return False
    return True


@PG15
def test_pg_slot_dropped_while_the_service_runs(
    pgdb: str, tmp_path: Path, free_port: int, ledger: Any
) -> None:
    create_tables(pgdb, "public.items")
    execute(
        pgdb, "INSERT INTO items SELECT g, 'seed ' || g, true, g FROM generate_series(1, 500) g"
    )
    out = tmp_path / "out"
    pipeline = pg_pipeline("p", pgdb, ["public.items"], out)
    pipeline["snapshot"] = {"mode": "initial"}
    cfg = write_config(tmp_path, [pipeline], api_port=free_port)
    writer = Writer(pgdb, ["public.items"], seed=5, pause=0.01)
    try:
        svc = CdcService(cfg)
        try:
            svc.wait_state("p", "running")
            writer.start()
            wait_for(
                lambda: writer.transactions > 30 and len(read_complete_events(out)) > 550,
                60,
                what="the snapshot and some changes",
            )
            wait_for(
                lambda: _terminate_and_drop(pgdb, "cdc_p"),
                30,
                interval=0.02,
                what="the slot terminated and dropped",
            )
            dropped = time.monotonic()
            code = svc.proc.wait(60)
            detect_s = time.monotonic() - dropped
            logs = svc.logs()
        finally:
            svc.kill()
        failed = _failure(logs, "p")
        assert code == 1, logs[-3000:]  # its only pipeline failed
        # slot_missing when the retry finds no slot; slot_lost when the drop lands between that
        # check and START_REPLICATION: either way fatal, naming the way back
        assert failed["error_kind"] in ("slot_missing", "slot_lost"), failed
        # the advice names the real file, and says to look for a running instance first
        assert "cdc_p" in failed["error"] and re.search(r"`cdc drop \S+ p --yes`", failed["error"]), (
            failed["error"]
        )
        assert "Traceback" not in logs
        assert slot_row(pgdb, "cdc_p") is None, "the slot was silently re-created"

        # the way back the error names: cdc drop, then a fresh start with snapshot.mode: initial
        proc = run_cli("drop", str(cfg), "p", "--yes")
        assert proc.returncode == 0, proc.stderr
        started = time.monotonic()
        with CdcService(cfg) as svc:
            svc.wait_state("p", "running")
            more = writer.transactions + 30
            wait_for(
                lambda: writer.transactions > more, 30, what="more writes after the fresh start"
            )
            writer.stop()
            lost = _converge(lambda: _pg_diff(out, pgdb, "public.items"))
            recover_s = time.monotonic() - started
            assert svc.stop() == 0
    finally:
        writer.halt.set()

    ledger.record(
        "Fatal: replication slot dropped while the service runs (PostgreSQL 15)",
        injected=1,
        lost=lost,
        recover_s=recover_s,
        note=f"{failed['error_kind']}: walsender terminated and slot dropped under a writer; the "
        f"pipeline stopped {detect_s:.1f} s later (exit 1), the slot not re-created; `cdc drop "
        f"--yes` + snapshot.mode initial brought the sink back to the table",
    )
    assert lost == 0, f"{lost} rows differ after the way back"


# -- (b) the binlog purged past the checkpoint while stopped ---------------------------------------------


def test_mariadb_binlog_purged_while_stopped(
    mydb_any: MyDB, tmp_path: Path, free_port: int, ledger: Any
) -> None:
    db = mydb_any
    db.execute(
        "CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(60), n INT)",
        "INSERT INTO items SELECT seq, CONCAT('seed ', seq), 0 FROM seq_1_to_500",
    )
    table = db.table("items")
    out = tmp_path / "out"
    name = "purged"
    cfg = write_config(
        tmp_path,
        [my_pipeline(name, db.dsn(), [table], out, snapshot={"mode": "initial"})],
        api_port=free_port,
    )
    writer = _MyWriter(db, 501)

    def diff() -> int:
        return _mismatch(
            fold(dedupe(read_complete_events(out)), table),
            table_state(db, table, ["id"], "id, v, n"),
        )

    try:
        with CdcService(cfg) as svc:
            svc.wait_state(name, "running")
            writer.start()
            wait_for(
                lambda: writer.transactions > 30 and len(read_complete_events(out)) > 550,
                60,
                what="the snapshot and some changes",
            )
            assert svc.stop() == 0
        # while the service is stopped: more changes, then their binlog is rotated and purged
        stopped_at = writer.transactions
        wait_for(
            lambda: writer.transactions > stopped_at + 30,
            30,
            what="writes while the service is stopped",
        )
        db.server.execute("FLUSH BINARY LOGS")
        wait_for(
            lambda: writer.transactions > stopped_at + 60, 30, what="writes in the next binlog"
        )
        db.server.execute("FLUSH BINARY LOGS")
        newest = db.server.query("SHOW MASTER STATUS")[0][0]

        def purged() -> bool:
            # MariaDB keeps a binlog until InnoDB made its transactions durable: retry
            db.server.execute(f"PURGE BINARY LOGS TO '{newest}'")
            return [r[0] for r in db.server.query("SHOW BINARY LOGS")] == [newest]

        wait_for(purged, 30, interval=0.2, what=f"binlogs before {newest} purged")
        code, records, stderr = run_until_exit(cfg, timeout=60)
        failed = _failure(stderr, name)
        assert code == 1, stderr[-3000:]
        assert failed["error_kind"] == "binlog_purged", failed
        message = failed["error"]
        assert (
            "purged" in message
            and re.search(rf"cdc drop \S+ {name} --yes", message)
            and "snapshot" in message
        ), message
        assert "Traceback" not in stderr

        # the way back: cdc drop, then a fresh start (snapshot.mode: initial re-reads the table)
        proc = run_cli("drop", str(cfg), name, "--yes")
        assert proc.returncode == 0, proc.stderr
        started = time.monotonic()
        with CdcService(cfg) as svc:
            svc.wait_state(name, "running")
            more = writer.transactions + 30
            wait_for(
                lambda: writer.transactions > more, 30, what="more writes after the fresh start"
            )
            writer.stop()
            lost = _converge(diff)
            recover_s = time.monotonic() - started
            assert svc.stop() == 0
    finally:
        writer.halt.set()
    positions = "GTID" if db.gtid else "file"
    ledger.record(
        f"Fatal: MariaDB binlog purged past the checkpoint while stopped ({positions} positions)",
        injected=1,
        lost=lost,
        recover_s=recover_s,
        note="binlog_purged: changes written while stopped, their binlogs rotated and purged; "
        "`cdc run` exits 1 naming `cdc drop CONFIG NAME --yes` and a new snapshot, which brought "
        "the sink back to the table",
    )
    assert lost == 0, f"{lost} rows differ after the way back"


# -- (c) the state file deleted while stopped, in the middle of an initial snapshot ---------------------


@PG15
def test_state_deleted_mid_snapshot_while_stopped(
    pgdb: str, tmp_path: Path, free_port: int, ledger: Any
) -> None:
    rows = 20_000
    create_tables(pgdb, "public.items")
    execute(
        pgdb,
        f"INSERT INTO items SELECT g, 'seed ' || g, g % 2 = 0, g FROM generate_series(1, {rows}) g",
    )
    out = tmp_path / "out"
    state = tmp_path / "state.sqlite"
    pipeline = pg_pipeline("p", pgdb, ["public.items"], out)
    pipeline["snapshot"] = {"mode": "initial", "chunk_rows": 1000}
    cfg = write_config(tmp_path, [pipeline], api_port=free_port)
    slow = cdc_env()
    slow["CDC_TEST_SNAPSHOT_CHUNK_DELAY_S"] = "0.25"  # 20 chunks: at least 5 s of snapshot
    writer = Writer(pgdb, ["public.items"], seed=9, pause=0.01)
    try:
        with CdcService(cfg, env=slow) as svc:
            svc.wait_state("p", "running")
            writer.start()
            wait_for(
                lambda: ((svc.pipeline("p").get("snapshot") or {}).get("rows_done") or 0) >= 3000,
                60,
                what="3 snapshot chunks delivered",
            )
            assert svc.stop() == 0
        with sqlite3.connect(state) as conn:
            records = [orjson.loads(r[0]) for r in conn.execute("SELECT record FROM snapshots")]
        conn.close()
        assert [r["state"] for r in records] == ["running"], records  # stopped mid-snapshot
        done = records[0]["rows_done"]
        held = {f.name: f.stat().st_size for f in out.glob("events-*.jsonl")}

        # the state file is lost while the service is stopped; the writer goes on
        _remove_state(state)
        code, _, stderr = run_until_exit(cfg, timeout=60)
        failed = _failure(stderr, "p")
        assert code == 1, stderr[-3000:]
        assert failed["error_kind"] == "state_lost", failed
        for needle in (
            "no saved state",
            r"cdc drop \S+ p --yes",
            "--adopt p",
            "snapshot.mode: initial",
        ):
            assert re.search(needle, failed["error"]), (needle, failed["error"])
        assert "Traceback" not in stderr
        assert {f.name: f.stat().st_size for f in out.glob("events-*.jsonl")} == held, (
            "the sink was written to"
        )

        # the way back for PostgreSQL: --adopt continues from the slot; the snapshot starts over
        started = time.monotonic()
        with CdcService(cfg, "--adopt", "p") as svc:
            svc.wait_state("p", "running")
            more = writer.transactions + 30
            wait_for(lambda: writer.transactions > more, 30, what="more writes after adopting")
            writer.stop()
            lost = _converge(lambda: _pg_diff(out, pgdb, "public.items"))
            recover_s = time.monotonic() - started
            assert find_log(svc.log_events(), "adopting") is not None
            assert svc.stop() == 0
    finally:
        writer.halt.set()
    events = read_events(out)
    streamed = [e for e in events if e["op"] != "r"]
    duplicates = len(streamed) - len(dedupe(streamed))
    ledger.record(
        "Fatal: state file deleted while stopped, mid initial snapshot (PostgreSQL 15)",
        injected=1,
        lost=lost,
        duplicates=duplicates,
        recover_s=recover_s,
        note=f"state_lost: the snapshot had delivered {done:,} of {rows:,} rows; `cdc run` exits 1 "
        f"naming `cdc drop` and `--adopt`; `cdc run --adopt` resumed the stream from the slot and "
        f"snapshotted the table again (duplicates: stream events delivered again)",
    )
    assert lost == 0, f"{lost} rows differ after --adopt"


# -- (d) the state file corrupted while stopped -------------------------------------------------------


CORRUPTIONS = {
    # the SQLite header: the file is no database at all
    "header": lambda b: b"\xde\xad\xbe\xef" * 25 + b[100:],
    # 4 KiB of garbage in the middle of the file: a damaged page
    "middle": lambda b: b[: len(b) // 2] + bytes(range(256)) * 16 + b[len(b) // 2 + 4096 :],
}



@pytest.fixture(scope="module")
def stopped_pipeline(pg15: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A PostgreSQL pipeline that ran, delivered 100 rows and stopped: (dsn, its folder with
    pipeline.yaml, state.sqlite and the sink's out/)."""
    from cdc_local.postgres import free_port

    name, dsn = create_database(pg15)
    folder = tmp_path_factory.mktemp("stopped")
    execute(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = write_config(
        folder, [pg_pipeline("p", dsn, ["public.t"], folder / "out")], api_port=free_port()
    )
    try:
        with CdcService(cfg) as svc:
            svc.wait_state("p", "running")
            execute(dsn, "INSERT INTO t SELECT generate_series(1, 100)")
            wait_for(lambda: len(read_events(folder / "out")) == 100, what="100 events")
            assert svc.stop() == 0
        assert not Path(
            str(folder / "state.sqlite") + "-wal"
        ).exists()  # checkpointed into the file
        yield dsn, folder
    finally:
        drop_database(pg15, name)


def _corrupted_copy(stopped: Any, tmp_path: Path, mode: str) -> tuple[Path, Path]:
    """The stopped pipeline's file, sink and state in ``tmp_path``, the state corrupted."""
    import shutil

    dsn, folder = stopped
    from cdc_local.postgres import free_port

    shutil.copytree(folder / "out", tmp_path / "out")
    state = tmp_path / "state.sqlite"
    state.write_bytes(CORRUPTIONS[mode]((folder / "state.sqlite").read_bytes()))
    cfg = write_config(
        tmp_path, [pg_pipeline("p", dsn, ["public.t"], tmp_path / "out")], api_port=free_port()
    )
    return cfg, state


@pytest.mark.parametrize("mode", ["header", "middle"])
def test_corrupted_state_file_is_a_clear_fatal_error(
    stopped_pipeline: Any, tmp_path: Path, mode: str, ledger: Any
) -> None:
    cfg, state = _corrupted_copy(stopped_pipeline, tmp_path, mode)
    held = (tmp_path / "out" / "events-000001.jsonl").read_bytes()
    started = time.monotonic()
    code, _, stderr = run_until_exit(cfg, timeout=60)
    detect_s = time.monotonic() - started
    failed = _failure(stderr, "p")
    ledger.record(
        f"Fatal: state file corrupted while stopped ({mode} overwritten)",
        injected=1,
        lost=0 if code == 1 else 1,
        recover_s=detect_s,
        note=f"{failed.get('error_kind')}: `cdc run` exits {code}"
        + (
            " naming the state file and the way on"
            if "cdc drop" in failed["error"]
            else " WITHOUT the way on (product bug)"
        )
        + "; time = until the error",
    )
    assert code == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    assert failed["error_kind"] == "state_corrupt", failed
    message = failed["error"]
    assert (
        str(state) in message
        and "restore it from a backup" in message
        and "cdc drop" in message
        and "--adopt" in message
    ), message
    assert (tmp_path / "out" / "events-000001.jsonl").read_bytes() == held, (
        "the sink was written to"
    )
    # treated as lost (the file moved away, as the error says): still never a start from "now"
    state.rename(tmp_path / "state.corrupt")
    code, _, stderr = run_until_exit(cfg, timeout=60)
    assert code == 1 and _failure(stderr, "p")["error_kind"] == "state_lost", stderr[-3000:]


@pytest.mark.parametrize("mode", list(CORRUPTIONS))
def test_status_of_a_corrupted_state_file(stopped_pipeline: Any, tmp_path: Path, mode: str) -> None:
    cfg, state = _corrupted_copy(stopped_pipeline, tmp_path, mode)
    proc = run_cli("status", str(cfg))
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 1), (
        proc.stderr
    )  # the contract says 0; 1 is fair for an unreadable file
    said = proc.stdout + proc.stderr
    assert str(state) in said and (
        "not a valid cdc state database" in said or "malformed" in said
    ), said
