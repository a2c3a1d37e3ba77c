"""Resilience of the PostgreSQL → file pipeline against real servers and a real `cdc run`.

- a clean stop (SIGTERM) and a restart resume without loss or duplicates;
- `kill -9` of the service mid-stream, three times, loses nothing (the file sink's resume
  token removes what the checkpoint did not cover, so no duplicates either);
- an idle listed table does not pin WAL: heartbeats advance the slot and the checkpoint;
- the database restarted (fast, then immediate) mid-stream: `retrying` + 503 while down,
  `running` again afterwards, nothing lost;
- one 200,000-row transaction arrives whole, in order, with bounded memory.

Values are compared through ``to_jsonb`` (helpers.table_rows), so the tables use types whose
JSON forms agree with the event's: int4, int8, text, bool.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_local.postgres import LocalPostgres, find_debian_bindir, find_embedded_bindir
from tests.helpers import (
    CdcService,
    dedupe,
    fold,
    peak_rss_kb,
    pg_pipeline,
    read_complete_events,
    read_events,
    table_rows,
    wait_for,
    write_config,
)

COLUMNS = "id int PRIMARY KEY, a text NOT NULL, b bool, n bigint"


def _name() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


def lsn_int(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def create_tables(dsn: str, *tables: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in tables:
            conn.execute(f"CREATE TABLE {t} ({COLUMNS})")


class Writer(threading.Thread):
    """Commits small multi-row transactions (inserts, updates, deletes) on ``tables`` until
    stopped. Survives a database restart: errors reconnect, and since a commit cut by a crash
    may or may not have happened, the live ids are re-read from the tables after each error.
    ``committed`` holds the ids whose insert was acknowledged by the server."""

    def __init__(self, dsn: str, tables: list[str], *, seed: int = 0, pause: float = 0.002) -> None:
        super().__init__(name="writer", daemon=True)
        self.dsn = dsn
        self.tables = tables
        self.pause = pause
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.next_id = {t: 1 for t in tables}
        self.live: dict[str, list[int]] = {t: [] for t in tables}
        self.committed: dict[str, set[int]] = {t: set() for t in tables}
        self.transactions = 0
        self.errors = 0
        self.failure: BaseException | None = None

    def _resync(self, conn: psycopg.Connection[Any]) -> None:
        for t in self.tables:
            self.live[t] = [r[0] for r in conn.execute(f"SELECT id FROM {t}").fetchall()]
            top = conn.execute(f"SELECT coalesce(max(id), 0) FROM {t}").fetchone()
            assert top is not None
            self.next_id[t] = max(self.next_id[t], top[0] + 1)

    def _one_tx(self, conn: psycopg.Connection[Any]) -> None:
        rng = self.rng
        inserted: dict[str, list[int]] = {}
        removed: dict[str, list[int]] = {}
        with conn.transaction():
            for t in self.tables:
                ids = list(range(self.next_id[t], self.next_id[t] + rng.randint(1, 3)))
                self.next_id[t] = ids[-1] + 1
                values = ", ".join(
                    f"({i}, '{t}-{i}-{rng.random():.6f}', {rng.choice(['true', 'false', 'NULL'])}, {rng.randint(-2**40, 2**40)})"
                    for i in ids
                )
                conn.execute(f"INSERT INTO {t} (id, a, b, n) VALUES {values}")
                inserted[t] = ids
                live = self.live[t]
                if live and rng.random() < 0.7:
                    conn.execute(
                        f"UPDATE {t} SET a = a || 'u', b = NOT b, n = n + 1 WHERE id = ANY(%s)",
                        (rng.sample(live, min(2, len(live))),),
                    )
                if len(live) > 20 and rng.random() < 0.3:
                    victim = rng.choice(live)
                    conn.execute(f"DELETE FROM {t} WHERE id = %s", (victim,))
                    removed[t] = [victim]
        for t, ids in inserted.items():
            self.live[t].extend(ids)
            self.committed[t].update(ids)
        for t, ids in removed.items():
            for i in ids:
                self.live[t].remove(i)
        self.transactions += 1

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self.halt.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                        self._resync(conn)
                    self._one_tx(conn)
                except psycopg.OperationalError:
                    self.errors += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    self.halt.wait(0.1)  # the database is down: poll for it again
                    continue
                if self.pause:
                    self.halt.wait(self.pause)
        except BaseException as exc:  # reported by stop()
            self.failure = exc
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "writer did not stop"
        if self.failure is not None:
            raise self.failure


def check_stream_shape(events: list[dict[str, Any]]) -> None:
    """Commit LSNs never go back; each transaction's events are contiguous, seq 0..n-1, and
    only the last has ``last: true``."""
    last_lsn = -1
    current: str | None = None
    seq = 0
    closed: set[str] = set()
    for e in events:
        tx = e["transaction"]
        lsn = lsn_int(e["source"]["lsn"])
        assert lsn >= last_lsn, f"lsn went back at {e['id']}"
        last_lsn = lsn
        if tx["id"] != current:
            assert current is None or current in closed, f"transaction {current} not closed before {tx['id']}"
            assert tx["id"] not in closed, f"transaction {tx['id']} not contiguous"
            current, seq = tx["id"], 0
        assert tx["seq"] == seq, f"{e['id']}: seq {tx['seq']}, expected {seq}"
        assert e["id"] == f"pg:{tx['id']}:{seq}"
        seq += 1
        if tx["last"]:
            closed.add(tx["id"])
    assert current is None or current in closed, f"transaction {current} has no last event"


def wait_converged(out: Path, dsn: str, tables: list[str], timeout: float = 60) -> None:
    """Wait until folding the file sink's events gives every table's rows."""
    state: dict[str, list[dict[str, Any]]] = {}

    def same() -> bool:
        events = read_complete_events(out)
        state["events"] = events
        for t in tables:
            if fold(dedupe(events), t) != table_rows(dsn, t, ["id"]):
                return False
        return True

    try:
        wait_for(same, timeout, interval=0.2, what="the file sink to match the tables")
    except AssertionError:
        events = state.get("events", [])
        for t in tables:
            got, want = fold(dedupe(events), t), table_rows(dsn, t, ["id"])
            missing = [k for k in want if k not in got][:5]
            extra = [k for k in got if k not in want][:5]
            differ = [k for k in want if k in got and got[k] != want[k]][:3]
            print(f"{t}: {len(got)} folded vs {len(want)} rows; missing {missing} extra {extra}"
                  f" differ {[(got[k], want[k]) for k in differ]}")
        raise


def final_events(out: Path, dsn: str, tables: list[str]) -> list[dict[str, Any]]:
    """After the service stopped: every line is whole, and the fold still matches."""
    events = read_events(out)
    for t in tables:
        assert fold(dedupe(events), t) == table_rows(dsn, t, ["id"]), t
    return events


def wait_events(out: Path, at_least: int, timeout: float = 30) -> None:
    wait_for(lambda: len(read_complete_events(out)) >= at_least, timeout, interval=0.1, what=f"{at_least} events")


def assert_every_insert_present(events: list[dict[str, Any]], writer: Writer) -> None:
    for t in writer.tables:
        created = {e["key"]["id"] for e in events if e["schema"]["name"] == t and e["op"] == "c"}
        missing = writer.committed[t] - created
        assert not missing, f"{t}: committed inserts missing from the sink: {sorted(missing)[:10]}"


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    return tmp_path


def start_service(config: Path, name: str) -> CdcService:
    svc = CdcService(config)
    svc.wait_state(name, "running", timeout=30)
    return svc


# -- SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_then_restart_resumes(pgdb: str, tmp_path: Path, free_port: int) -> None:
    tables = ["public.items"]
    create_tables(pgdb, *tables)
    name = _name()
    out = tmp_path / "out"
    config = write_config(tmp_path, [pg_pipeline(name, pgdb, tables, out)], api_port=free_port)
    writer = Writer(pgdb, tables, seed=1)
    svc = start_service(config, name)
    try:
        writer.start()
        wait_events(out, 200)
        t0 = time.monotonic()
        code = svc.stop(timeout=15)
        elapsed = time.monotonic() - t0
        assert code == 0, svc.logs()[-3000:]
        assert elapsed < 10, f"SIGTERM took {elapsed:.1f}s"
        before = len(read_complete_events(out))
        # the writer keeps committing while the service is down
        wait_for(lambda: writer.transactions > 50, 10, what="writes while the service is down")
        svc = start_service(config, name)
        wait_events(out, before + 200)
        writer.stop()
        wait_converged(out, pgdb, tables)
        assert svc.stop() == 0
        events = final_events(out, pgdb, tables)
    finally:
        writer.halt.set()
        svc.kill()
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate ids after a clean stop"
    check_stream_shape(events)
    assert_every_insert_present(events, writer)
    assert any(ev.get("event") == "resuming" for ev in svc.log_events())


# -- kill -9 ------------------------------------------------------------------------------------


def test_kill9_mid_stream_three_times(pgdb: str, tmp_path: Path, free_port: int, record_property: Any) -> None:
    tables = ["public.orders", "public.customers"]
    create_tables(pgdb, *tables)
    name = _name()
    out = tmp_path / "out"
    config = write_config(tmp_path, [pg_pipeline(name, pgdb, tables, out)], api_port=free_port)
    rng = random.Random()
    writer = Writer(pgdb, tables, seed=2)
    svc = start_service(config, name)
    try:
        writer.start()
        for _ in range(3):
            wait_events(out, len(read_complete_events(out)) + 50)
            # a random moment mid-stream (the writer never pauses)
            moment = time.monotonic() + rng.uniform(0.05, 1.5)
            wait_for(lambda: time.monotonic() >= moment, 5, interval=0.01, what="a random moment")  # noqa: B023
            svc.kill()
            svc = start_service(config, name)
        wait_events(out, len(read_complete_events(out)) + 100)
        writer.stop()
        wait_converged(out, pgdb, tables)
        assert svc.stop() == 0
        events = final_events(out, pgdb, tables)
    finally:
        writer.halt.set()
        svc.kill()
    unique = dedupe(events)
    duplicates = len(events) - len(unique)
    record_property("duplicates", duplicates)
    print(f"kill -9 x3: {len(events)} events, {duplicates} duplicates, {writer.transactions} transactions")
    ids = [e["id"] for e in unique]
    assert len(ids) == len(set(ids))
    check_stream_shape(unique)
    assert_every_insert_present(unique, writer)
    # the file sink truncates to the checkpoint's resume token: nothing is written twice
    assert duplicates == 0, f"{duplicates} duplicate events after kill -9"


# -- heartbeat ----------------------------------------------------------------------------------


def test_idle_slot_heartbeat_advances_confirmed_flush(pgdb: str, tmp_path: Path, free_port: int) -> None:
    create_tables(pgdb, "public.idle", "public.busy")
    name = _name()
    out = tmp_path / "out"
    config = write_config(
        tmp_path, [pg_pipeline(name, pgdb, ["public.idle"], out, heartbeat_s=1)], api_port=free_port
    )
    svc = start_service(config, name)
    try:
        with psycopg.connect(pgdb, autocommit=True) as conn:

            def slot_lsn() -> int:
                row = conn.execute(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                    (f"cdc_{name}",),
                ).fetchone()
                assert row is not None and row[0] is not None
                return lsn_int(row[0])

            start_slot = slot_lsn()
            start_ckpt = lsn_int(svc.pipeline(name)["checkpoint"]["position"])
            for i in range(50):
                conn.execute(
                    "INSERT INTO busy (id, a, b, n) SELECT g, 'x', true, 1 FROM generate_series(%s::int, %s::int) g",
                    (i * 100, i * 100 + 99),
                )
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            target = lsn_int(row[0])
            assert target > start_slot and target > start_ckpt
            t0 = time.monotonic()
            wait_for(lambda: slot_lsn() >= target, 8, interval=0.1, what="confirmed_flush_lsn past the writes")
            slot_s = time.monotonic() - t0
            wait_for(
                lambda: lsn_int(svc.pipeline(name)["checkpoint"]["position"]) >= target,
                8,
                interval=0.1,
                what="the checkpoint past the writes",
            )
            print(f"slot advanced past the writes {slot_s:.2f}s after them")
        assert read_complete_events(out) == []
        assert svc.stop() == 0
    finally:
        svc.kill()


# -- the database restarted -------------------------------------------------------------------


@pytest.fixture(params=["pg15", "pg18"])
def own_pg(request: pytest.FixtureRequest, free_port: int) -> Iterator[LocalPostgres]:
    """A dedicated server (not the shared session ones) on a fixed port, so restarts keep
    the clients' DSN."""
    bindir = find_debian_bindir(15) if request.param == "pg15" else find_embedded_bindir()
    server = LocalPostgres(bindir, port=free_port)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def _health(svc: CdcService) -> int:
    status, _ = svc.get("/healthz")
    return status


def test_database_restart_fast_and_immediate(own_pg: LocalPostgres, tmp_path: Path) -> None:
    from cdc_local.postgres import free_port

    dsn = own_pg.dsn()
    tables = ["public.items"]
    create_tables(dsn, *tables)
    name = _name()
    out = tmp_path / "out"
    config = write_config(tmp_path, [pg_pipeline(name, dsn, tables, out)], api_port=free_port())
    writer = Writer(dsn, tables, seed=3)
    svc = start_service(config, name)
    try:
        writer.start()
        for mode in ("fast", "immediate"):
            wait_events(out, len(read_complete_events(out)) + 100)
            own_pg.stop(mode)
            svc.wait_state(name, "retrying", timeout=15)
            assert wait_for(lambda: _health(svc) == 503, 5, what="/healthz 503 while the database is down")
            own_pg.start()
            # the retry backoff is at most a few seconds after a short outage
            svc.wait_state(name, "running", timeout=30)
            assert wait_for(lambda: _health(svc) == 200, 5, what="/healthz 200 again")
        wait_events(out, len(read_complete_events(out)) + 100)
        writer.stop()
        assert writer.errors > 0  # the writer did see the database go away
        wait_converged(out, dsn, tables)
        assert svc.stop() == 0
        events = final_events(out, dsn, tables)
    finally:
        writer.halt.set()
        svc.kill()
    unique = dedupe(events)
    print(f"database restarts: {len(events)} events, {len(events) - len(unique)} duplicates")
    check_stream_shape(unique)
    assert_every_insert_present(unique, writer)


# -- one big transaction ------------------------------------------------------------------------


BIG_ROWS = 200_000


def test_big_transaction_whole_and_bounded_memory(pgdb: str, tmp_path: Path, free_port: int, record_property: Any) -> None:
    create_tables(pgdb, "public.big")
    name = _name()
    out = tmp_path / "out"
    config = write_config(tmp_path, [pg_pipeline(name, pgdb, ["public.big"], out)], api_port=free_port)
    svc = start_service(config, name)
    try:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO big (id, a, b, n) SELECT g, repeat('x', 40) || g, g %% 2 = 0, g::bigint * 1000"
                " FROM generate_series(1, %s) g",
                (BIG_ROWS,),
            )

        def lines() -> int:
            return sum(f.read_bytes().count(b"\n") for f in out.glob("events-*.jsonl"))

        wait_for(lambda: lines() >= BIG_ROWS, 120, interval=0.25, what=f"{BIG_ROWS} events")
        hwm_mb = peak_rss_kb(svc.proc.pid) / 1024
        assert svc.stop() == 0
    finally:
        svc.kill()
    record_property("peak_rss_mb", round(hwm_mb, 1))
    print(f"big transaction: {BIG_ROWS} rows, service peak RSS {hwm_mb:.1f} MB")
    events = read_events(out)
    assert len(events) == BIG_ROWS
    txs = Counter(e["transaction"]["id"] for e in events)
    assert len(txs) == 1
    assert [e["transaction"]["seq"] for e in events] == list(range(BIG_ROWS))
    assert [i for i, e in enumerate(events) if e["transaction"]["last"]] == [BIG_ROWS - 1]
    assert {e["op"] for e in events} == {"c"}
    assert sorted(e["key"]["id"] for e in events) == list(range(1, BIG_ROWS + 1))
    assert hwm_mb < 300, f"peak RSS {hwm_mb:.1f} MB"
