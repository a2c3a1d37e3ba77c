"""Limits: what a real `cdc run` does with a huge transaction, huge values and a busy database
whose listed tables are idle, measured and recorded in the fault ledger.

- one transaction of 1,000,000 rows, on PostgreSQL 15 and on MariaDB: every row arrives exactly
  once, in one transaction (seq 0..n-1, ``last`` only on the final event), and the peak RSS of
  the service stays under 200 MB;
- rows with 10 MB values (PostgreSQL text + bytea, MariaDB LONGTEXT + LONGBLOB), a few in one
  transaction: every value arrives byte for byte, peak RSS recorded and bounded;
- a listed table stays idle while an unlisted one takes ~20 s of writes: the slot's retained
  WAL (``pg_replication_slots`` and the ``cdc_pg_slot_retained_wal_bytes`` metric) stays bounded
  and falls back once the writes stop.

The ledger's ``injected`` is the number of rows (values) put through; ``lost`` the ones missing
from the sink; ``duplicates`` the ones delivered more than once (a clean run has none).
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from tests.helpers import (
    CdcService,
    execute,
    lsn_int,
    metric_value,
    peak_rss_kb,
    pg_pipeline,
    query,
    read_events,
    wait_for,
    write_config,
)
from tests.mariadb_fixtures import MyDB

# ruff: noqa: F811 - the MariaDB fixtures above are used as test arguments

PG15 = pytest.mark.parametrize("pg", ["pg15"], indirect=True)

RSS_LIMIT_MB = 200
BIG_ROWS = 1_000_000
#: MariaDB takes the same 1,000,000 rows (about 6 s from commit to sink here); past this budget
#: the test fails rather than quietly taking longer
MARIADB_BUDGET_S = 60
VALUE_BYTES = 10 * 1024 * 1024


def _my_pipeline(name: str, dsn: str, tables: list[str], out: Path) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"type": "mysql", "dsn": dsn, "tables": tables, "heartbeat_s": 1},
        "snapshot": {"mode": "never"},
        "sink": {"type": "file", "path": str(out)},
    }


def _service(tmp_path: Path, port: int, pipeline: dict[str, Any]) -> CdcService:
    cfg = write_config(tmp_path, [pipeline], api_port=port)
    svc = CdcService(cfg)
    svc.wait_state(pipeline["name"], "running", timeout=60)
    return svc


def _checkpoint(svc: CdcService, name: str) -> str | None:
    if svc.proc.poll() is not None:
        raise AssertionError(f"cdc exited with {svc.proc.returncode}:\n{svc.logs()[-4000:]}")
    return (svc.pipeline(name).get("checkpoint") or {}).get("position")


def _wait_pg_delivered(svc: CdcService, name: str, lsn: str, timeout: float) -> float:
    """Wait until the pipeline's checkpoint (saved only once the sink made every event before it
    durable) is at or past ``lsn``; returns the seconds waited."""
    t0 = time.monotonic()
    target = lsn_int(lsn)
    wait_for(
        lambda: (pos := _checkpoint(svc, name)) is not None and lsn_int(pos) >= target,
        timeout,
        interval=0.25,
        what=f"the checkpoint of {name} at {lsn}",
    )
    return time.monotonic() - t0


def _master_position(db: MyDB) -> str:
    file, pos = db.server.query("SHOW MASTER STATUS")[0][:2]
    return f"{file}:{pos}"


def _wait_my_delivered(svc: CdcService, name: str, position: str, timeout: float) -> float:
    """MariaDB, file positions: the checkpoint reaches the server's end of binlog once every
    event before it is durable in the sink."""
    t0 = time.monotonic()
    wait_for(
        lambda: _checkpoint(svc, name) == position,
        timeout,
        interval=0.25,
        what=f"the checkpoint of {name} at {position}",
    )
    return time.monotonic() - t0


def _count_one_transaction(out: Path, rows: int) -> tuple[int, int, dict[str, Any]]:
    """Stream the sink's files (without holding them in memory) and check that they hold one
    transaction of ``rows`` inserts with ids 1..rows, seq 0..n-1 and ``last`` only at the end.
    Returns (rows missing, events delivered more than once, the last event)."""
    seen = bytearray(rows + 1)
    total = duplicates = 0
    tx_ids: set[str] = set()
    last: dict[str, Any] = {}
    bad_seq = lasts = 0
    for f in sorted(out.glob("events-*.jsonl")):
        with f.open("rb") as fh:
            for line in fh:
                e = orjson.loads(line)
                i = e["key"]["id"]
                assert e["op"] == "c" and 1 <= i <= rows, e["id"]
                if seen[i]:
                    duplicates += 1
                seen[i] = 1
                tx = e["transaction"]
                tx_ids.add(tx["id"])
                bad_seq += tx["seq"] != total
                lasts += bool(tx["last"])
                total += 1
                last = e
    lost = rows - sum(seen)
    assert len(tx_ids) == 1, f"{len(tx_ids)} transactions"
    assert bad_seq == 0, f"{bad_seq} events with a seq out of order"
    assert lasts == 1 and last["transaction"]["last"], "`last` must be on the final event only"
    return lost, duplicates, last


# -- (a) one transaction of 1,000,000 rows ----------------------------------------------------------


@PG15
def test_pg_one_million_row_transaction(
    pgdb: str, tmp_path: Path, free_port: int, ledger: Any
) -> None:
    execute(pgdb, "CREATE TABLE big (id int PRIMARY KEY, a text NOT NULL, n bigint)")
    out = tmp_path / "out"
    svc = _service(tmp_path, free_port, pg_pipeline("big", pgdb, ["public.big"], out))
    try:
        t0 = time.monotonic()
        execute(
            pgdb,
            f"INSERT INTO big SELECT g, repeat('x', 40) || g, g::bigint * 1000 FROM generate_series(1, {BIG_ROWS}) g",
        )
        commit_s = time.monotonic() - t0
        ((end,),) = query(pgdb, "SELECT pg_current_wal_lsn()::text")
        deliver_s = _wait_pg_delivered(svc, "big", end, timeout=240)
        rss_mb = peak_rss_kb(svc.proc.pid) / 1024
        assert svc.stop() == 0, svc.logs()[-3000:]
    finally:
        svc.kill()
    lost, duplicates, last = _count_one_transaction(out, BIG_ROWS)
    assert last["after"] == {"id": BIG_ROWS, "a": "x" * 40 + str(BIG_ROWS), "n": BIG_ROWS * 1000}
    ledger.record(
        "Limit: one 1,000,000-row transaction, PostgreSQL 15 -> file",
        injected=BIG_ROWS,
        lost=lost,
        duplicates=duplicates,
        note=f"one INSERT of {BIG_ROWS:,} rows (committed in {commit_s:.1f} s), all in the sink "
        f"{deliver_s:.1f} s after the commit, as one transaction (seq 0..n-1); "
        f"peak RSS {rss_mb:.0f} MB (limit {RSS_LIMIT_MB} MB)",
    )
    assert lost == 0, f"{lost} rows missing"
    assert duplicates == 0, f"{duplicates} rows delivered twice in a clean run"
    assert rss_mb < RSS_LIMIT_MB, f"peak RSS {rss_mb:.0f} MB"


def test_mariadb_one_million_row_transaction(
    mydb: MyDB, tmp_path: Path, free_port: int, ledger: Any
) -> None:
    mydb.execute("CREATE TABLE big (id INT PRIMARY KEY, a VARCHAR(60) NOT NULL, n BIGINT)")
    out = tmp_path / "out"
    svc = _service(tmp_path, free_port, _my_pipeline("big", mydb.dsn(), [mydb.table("big")], out))
    try:
        t0 = time.monotonic()
        mydb.execute(
            f"INSERT INTO big SELECT seq, CONCAT(REPEAT('x', 40), seq), seq * 1000 FROM seq_1_to_{BIG_ROWS}"
        )
        commit_s = time.monotonic() - t0
        end = _master_position(mydb)
        deliver_s = _wait_my_delivered(svc, "big", end, timeout=240)
        rss_mb = peak_rss_kb(svc.proc.pid) / 1024
        assert svc.stop() == 0, svc.logs()[-3000:]
    finally:
        svc.kill()
    lost, duplicates, _ = _count_one_transaction(out, BIG_ROWS)
    ledger.record(
        "Limit: one 1,000,000-row transaction, MariaDB 10.11 -> file",
        injected=BIG_ROWS,
        lost=lost,
        duplicates=duplicates,
        note=f"one INSERT ... SELECT of {BIG_ROWS:,} rows (committed in {commit_s:.1f} s), all in the "
        f"sink {deliver_s:.1f} s after the commit, as one transaction; peak RSS {rss_mb:.0f} MB "
        f"(limit {RSS_LIMIT_MB} MB)",
    )
    assert lost == 0, f"{lost} rows missing"
    assert duplicates == 0, f"{duplicates} rows delivered twice in a clean run"
    assert rss_mb < RSS_LIMIT_MB, f"peak RSS {rss_mb:.0f} MB"
    assert deliver_s < MARIADB_BUDGET_S, (
        f"{BIG_ROWS:,} rows took {deliver_s:.0f} s on MariaDB (budget {MARIADB_BUDGET_S} s)"
    )


# -- (b) 10 MB values -------------------------------------------------------------------------------
#
# Each row carries a 10 MiB text and 10 MiB of random bytes. Two transactions go through one
# service: first SMALL_TX rows, then LARGE_TX rows. The peak RSS is taken for each (the kernel's
# high-water mark is reset in between, /proc/PID/clear_refs), so the test can tell memory that
# depends on one row's size (fine: a value must be held to be delivered) from memory that grows
# with the number of such rows in a transaction (not bounded).

# A few rows are in flight at once by design (one being read, one waiting in the pipeline's
# buffer, one being written, each also decoded and encoded: ~50 MB per row here), so both sizes
# are above that depth. Memory that grew with the transaction would cost ~300 MB more for the 6
# extra rows (2.3x here); bounded memory stays near the smaller figure.
SMALL_TX = 4
LARGE_TX = 10
#: the larger transaction may cost at most this much more peak memory than the smaller one
GROWTH_LIMIT = 1.75


def _big_values(seed: int) -> tuple[str, bytes]:
    """A 10 MiB text (base64 of random bytes: printable, incompressible) and 10 MiB of random
    bytes."""
    rng = random.Random(seed)
    raw = rng.randbytes(VALUE_BYTES)
    text = base64.b64encode(rng.randbytes(VALUE_BYTES * 3 // 4)).decode()
    assert len(text) == VALUE_BYTES
    return text, raw


def _digest(value: str | bytes) -> str:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).hexdigest()


def _reset_peak_rss(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _check_big_values(out: Path, expected: dict[int, tuple[str, bytes]]) -> tuple[int, int, int]:
    """Compare each delivered row's values byte for byte (the bytes as base64); returns (values
    missing or different, rows delivered twice, transactions)."""
    events = read_events(out)
    seen: dict[int, int] = {}
    wrong = 0
    for e in events:
        i = e["key"]["id"]
        seen[i] = seen.get(i, 0) + 1
        text, raw = expected[i]
        wrong += e["after"]["t"] != text
        wrong += base64.b64decode(e["after"]["b"]) != raw
    missing = 2 * sum(1 for i in expected if i not in seen)
    return (
        wrong + missing,
        sum(n - 1 for n in seen.values()),
        len({e["transaction"]["id"] for e in events}),
    )


def _record_big_values(
    ledger: Any,
    fault: str,
    what: str,
    bad: int,
    duplicates: int,
    peaks: list[float],
    deliver_s: float,
) -> None:
    ledger.record(
        fault,
        injected=2 * (SMALL_TX + LARGE_TX),
        lost=bad,
        duplicates=duplicates,
        note=f"rows of a 10 MiB {what} in a transaction of {SMALL_TX} rows, then one of "
        f"{LARGE_TX}: every value byte-exact in the sink (the larger {deliver_s:.1f} s after its "
        f"commit); peak RSS {peaks[0]:.0f} MB, then {peaks[1]:.0f} MB "
        f"({peaks[1] / peaks[0]:.1f}x; bounded means at most {GROWTH_LIMIT}x)",
    )


@PG15
def test_pg_ten_megabyte_values(pgdb: str, tmp_path: Path, free_port: int, ledger: Any) -> None:
    execute(pgdb, "CREATE TABLE blobs (id int PRIMARY KEY, t text NOT NULL, b bytea NOT NULL)")
    out = tmp_path / "out"
    expected = {i: _big_values(i) for i in range(1, SMALL_TX + LARGE_TX + 1)}
    svc = _service(tmp_path, free_port, pg_pipeline("blobs", pgdb, ["public.blobs"], out))
    peaks: list[float] = []
    try:
        for ids in (range(1, SMALL_TX + 1), range(SMALL_TX + 1, SMALL_TX + LARGE_TX + 1)):
            _reset_peak_rss(svc.proc.pid)
            with psycopg.connect(pgdb, autocommit=True) as conn, conn.transaction():
                for i in ids:
                    conn.execute("INSERT INTO blobs VALUES (%s, %s, %s)", (i, *expected[i]))
            ((end,),) = query(pgdb, "SELECT pg_current_wal_lsn()::text")
            deliver_s = _wait_pg_delivered(svc, "blobs", end, timeout=120)
            peaks.append(peak_rss_kb(svc.proc.pid) / 1024)
        assert svc.stop() == 0, svc.logs()[-3000:]
    finally:
        svc.kill()
    # what the database holds is what was sent
    stored = query(
        pgdb, "SELECT id, sha256(convert_to(t, 'UTF8')), sha256(b) FROM blobs ORDER BY id"
    )
    assert [(i, bytes(a).hex(), bytes(b).hex()) for i, a, b in stored] == [
        (i, _digest(t), _digest(r)) for i, (t, r) in expected.items()
    ]
    bad, duplicates, transactions = _check_big_values(out, expected)
    _record_big_values(
        ledger,
        "Limit: 10 MB values (text + bytea), PostgreSQL 15 -> file",
        "text and a 10 MiB bytea",
        bad,
        duplicates,
        peaks,
        deliver_s,
    )
    assert bad == 0, f"{bad} values missing or different"
    assert duplicates == 0 and transactions == 2
    assert peaks[1] < GROWTH_LIMIT * peaks[0], (
        f"peak RSS {peaks[0]:.0f} MB for {SMALL_TX} rows, {peaks[1]:.0f} MB for {LARGE_TX}"
    )


@pytest.fixture
def big_packets(mydb: MyDB) -> Iterator[MyDB]:
    """max_allowed_packet raised to 64 MiB for the test (a 20 MiB row), restored afterwards."""
    ((before,),) = mydb.server.query("SELECT @@GLOBAL.max_allowed_packet")
    mydb.server.execute(f"SET GLOBAL max_allowed_packet = {64 * 1024 * 1024}")
    try:
        yield mydb
    finally:
        mydb.server.execute(f"SET GLOBAL max_allowed_packet = {int(before)}")


def test_mariadb_ten_megabyte_values(
    big_packets: MyDB, tmp_path: Path, free_port: int, ledger: Any
) -> None:
    db = big_packets
    db.execute("CREATE TABLE blobs (id INT PRIMARY KEY, t LONGTEXT NOT NULL, b LONGBLOB NOT NULL)")
    out = tmp_path / "out"
    expected = {i: _big_values(i) for i in range(1, SMALL_TX + LARGE_TX + 1)}
    svc = _service(tmp_path, free_port, _my_pipeline("blobs", db.dsn(), [db.table("blobs")], out))
    peaks: list[float] = []
    try:
        for ids in (range(1, SMALL_TX + 1), range(SMALL_TX + 1, SMALL_TX + LARGE_TX + 1)):
            _reset_peak_rss(svc.proc.pid)
            conn = db.connect(
                autocommit=False
            )  # a new session: it sees the raised max_allowed_packet
            try:
                with conn.cursor() as cur:
                    for i in ids:
                        cur.execute("INSERT INTO blobs VALUES (%s, %s, %s)", (i, *expected[i]))
                conn.commit()
            finally:
                conn.close()
            end = _master_position(db)
            deliver_s = _wait_my_delivered(svc, "blobs", end, timeout=120)
            peaks.append(peak_rss_kb(svc.proc.pid) / 1024)
        assert svc.stop() == 0, svc.logs()[-3000:]
    finally:
        svc.kill()
    stored = db.query("SELECT id, SHA2(t, 256), SHA2(b, 256) FROM blobs ORDER BY id")
    assert [tuple(r) for r in stored] == [
        (i, _digest(t), _digest(r)) for i, (t, r) in expected.items()
    ]
    bad, duplicates, transactions = _check_big_values(out, expected)
    _record_big_values(
        ledger,
        "Limit: 10 MB values (LONGTEXT + LONGBLOB), MariaDB 10.11 -> file",
        "LONGTEXT and a 10 MiB LONGBLOB (max_allowed_packet raised to 64 MiB, then restored)",
        bad,
        duplicates,
        peaks,
        deliver_s,
    )
    assert bad == 0, f"{bad} values missing or different"
    assert duplicates == 0 and transactions == 2
    assert peaks[1] < GROWTH_LIMIT * peaks[0], (
        f"peak RSS {peaks[0]:.0f} MB for {SMALL_TX} rows, {peaks[1]:.0f} MB for {LARGE_TX}"
    )


# -- (c) idle listed tables, busy database -----------------------------------------------------------

WRITE_S = 20.0


class _BusyWriter(threading.Thread):
    """Inserts 500-row batches into an unlisted table, 20 a second, for ``WRITE_S`` seconds
    (about 3 MiB of WAL a second: a steady load, not one that takes a core)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="busy-writer", daemon=True)
        self.dsn = dsn
        self.rows = 0
        self.halt = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                deadline = time.monotonic() + WRITE_S
                while time.monotonic() < deadline and not self.halt.is_set():
                    conn.execute(
                        "INSERT INTO busy (a) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 500) g"
                    )
                    self.rows += 500
                    self.halt.wait(0.05)  # the injected write rate
        except BaseException as exc:  # reported by the test
            self.failure = exc


@PG15
def test_pg_idle_tables_keep_retained_wal_bounded(
    pgdb: str, tmp_path: Path, free_port: int, ledger: Any
) -> None:
    execute(
        pgdb,
        "CREATE TABLE idle (id int PRIMARY KEY, v text)",
        "CREATE TABLE busy (id bigserial PRIMARY KEY, a text)",
    )
    out = tmp_path / "out"
    svc = _service(
        tmp_path, free_port, pg_pipeline("idle", pgdb, ["public.idle"], out, heartbeat_s=1)
    )
    slot = "cdc_idle"
    samples: list[tuple[int, int, int]] = []  # (retained from restart_lsn, confirmed lag, metric)

    def sample(conn: psycopg.Connection[Any]) -> int:
        ((retained, lag),) = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchall()
        status, text = svc.get("/metrics")
        assert status == 200
        metric = metric_value(text, "cdc_pg_slot_retained_wal_bytes", pipeline="idle")
        samples.append((int(retained), int(lag), int(metric or 0)))
        return int(retained)

    try:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            ((start,),) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchall()
            ((restart0,),) = conn.execute(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchall()
            writer = _BusyWriter(pgdb)
            writer.start()
            try:
                while writer.is_alive():
                    sample(conn)
                    writer.join(0.5)  # the sampling period, while the writer runs
            finally:
                writer.halt.set()
                writer.join(30)
            assert writer.failure is None, writer.failure
            ((end,),) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchall()
            ((restart1,),) = conn.execute(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchall()
            written = lsn_int(end) - lsn_int(start)
            during = max(s[0] for s in samples)
            lag_max = max(s[1] for s in samples)
            metric_max = max(s[2] for s in samples)
            # after the writes: PostgreSQL logs a running-transactions record within 15 s, the
            # walsender decodes it and the next heartbeat confirms past it
            t0 = time.monotonic()
            wait_for(
                lambda: sample(conn) < 1024 * 1024,
                45,
                interval=0.5,
                what="retained WAL under 1 MiB after the writes",
            )
            settle_s = time.monotonic() - t0
        assert svc.stop() == 0, svc.logs()[-3000:]
    finally:
        svc.kill()
    assert read_events(out) == [], "the idle table had no changes"
    ledger.record(
        "Limit: idle listed table, ~20 s of writes elsewhere (PostgreSQL 15 slot)",
        injected=writer.rows,
        lost=0,
        note=f"{writer.rows:,} rows ({written / 2**20:.0f} MiB of WAL) into an unlisted table over "
        f"{WRITE_S:.0f} s; retained WAL of the pipeline's slot at most {during / 2**20:.1f} MiB "
        f"(metric cdc_pg_slot_retained_wal_bytes at most {metric_max / 2**20:.1f} MiB; restart_lsn "
        f"moves with PostgreSQL's running-transactions records, every 15 s), confirmed_flush_lsn at "
        f"most {lag_max / 2**20:.1f} MiB behind; under 1 MiB {settle_s:.1f} s after the writes "
        f"stopped; heartbeat_s 1",
    )
    # the slot moved on during the writes (not only after them) ...
    assert lsn_int(restart1) > lsn_int(restart0), (
        "the slot's restart_lsn did not move during 20 s of writes"
    )
    # ... so it never held everything that was written
    assert during < written, f"retained {during} of {written} bytes written"
    # and cdc confirmed the server's position all along (a few heartbeats' worth of WAL at most)
    assert lag_max < written / 4, (
        f"confirmed_flush_lsn {lag_max} bytes behind, of {written} written"
    )
    assert metric_max > 0, "the metric showed no retained WAL while the database wrote"
