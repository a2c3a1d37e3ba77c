#!/usr/bin/env python3
"""Benchmark: MariaDB binlog -> file sink, against python-mysql-replication's own parsing ceiling.

Workload: 300,000 inserts then 150,000 updates in one table (``--rows-per-tx`` rows per
statement and transaction), written to a fresh throwaway MariaDB 10.11 (``LocalMariaDB`` of
tests/mysql_server.py, through bench/_harness.py) after the service has saved its start
position, so both consumers read the same binlog backlog:

* the **bare loop**: a ``BinLogStreamReader`` from the start position (non-blocking: it stops
  at the end of the binlog), ``only_events`` = the row events, ``only_tables`` = the table,
  iterating ``event.rows`` and nothing else: the library's parsing ceiling;
* the **service**: ``python -m cdc run`` with a file sink (``snapshot.mode: never``), resuming
  from the saved position, until its checkpoint reaches the end of the workload; then the
  events files are counted (they must hold every event exactly once).

They run one after the other, never at the same time. Prints events, seconds and events/s for
each, their ratio (the service's time counted from its process launch, so it includes the
interpreter start; the figure without it is shown too) and the service's peak RSS.

Target: the service reaches at least 0.8 of the bare loop's rate. ``--strict`` makes a missed
target exit 1. ``--profile`` records the service with py-spy (the venv's ``py-spy``) into a
speedscope file and prints its hottest functions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _harness
from _harness import Service, api_get, free_port, peak_rss_kb, profile, service_config, wait_until

DB = "bench"
TABLE = "bench"
PIPELINE = "bench"
TARGET_RATIO = 0.8

DDL = f"""CREATE TABLE {DB}.{TABLE} (
  id INT NOT NULL PRIMARY KEY,
  k INT NOT NULL,
  name VARCHAR(40) NOT NULL,
  amount DECIMAL(12,2),
  created DATETIME(6),
  note VARCHAR(100)
)"""


def write_config(folder: Path, dsn: str, port: int) -> Path:
    pipeline = {
        "name": PIPELINE,
        "source": {"type": "mysql", "dsn": dsn, "tables": [f"{DB}.{TABLE}"], "heartbeat_s": 1},
        "snapshot": {"mode": "never"},
        "sink": {"type": "file", "path": str(folder / "out"), "rotate_mb": 512},
    }
    return service_config(folder, port, [pipeline])


def save_start_position(config: Path, port: int) -> str:
    """Run the service once on the idle table so it saves its start position, then stop it."""
    with Service(config, config.parent / "cdc-start.log", port, PIPELINE) as svc:
        doc = wait_until(
            lambda: (s := svc.state()) and s["state"] == "running" and s, 60, "the pipeline to run"
        )
    return str(doc["checkpoint"]["position"])


def workload(db: Any, inserts: int, updates: int, per_tx: int) -> float:
    conn = db.connect(DB)
    started = time.monotonic()
    try:
        with conn.cursor() as cur:
            for first in range(1, inserts + 1, per_tx):
                last = min(first + per_tx - 1, inserts)
                rows = [
                    (i, i % 1000, f"name {i}", f"{i % 100000}.{i % 100:02d}", "2026-11-28 13:45:01.123456", "note " * (i % 10))
                    for i in range(first, last + 1)
                ]
                cur.executemany(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s, %s)", rows)
            for first in range(1, updates + 1, per_tx):
                last = min(first + per_tx - 1, updates)
                cur.execute(f"UPDATE {TABLE} SET k = k + 1, amount = amount + 1 WHERE id BETWEEN %s AND %s", (first, last))
    finally:
        conn.close()
    return time.monotonic() - started


def bare_loop(db: Any, file: str, pos: int, expected: int, freeze_schema: bool) -> tuple[int, float]:
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    started = time.monotonic()
    stream = BinLogStreamReader(
        {"host": "127.0.0.1", "port": db.port, "user": "root", "passwd": ""},
        server_id=77001,
        log_file=file,
        log_pos=pos,
        resume_stream=True,
        blocking=False,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
        only_tables=[TABLE],
        only_schemas=[DB],
        enable_logging=False,
        freeze_schema=freeze_schema,
    )
    n = 0
    try:
        for ev in stream:
            for _row in ev.rows:
                n += 1
    finally:
        stream.close()
    elapsed = time.monotonic() - started
    if n != expected:
        raise SystemExit(f"the bare loop read {n} rows, expected {expected}")
    return n, elapsed


def count_events(out: Path) -> tuple[int, int, Counter[str]]:
    total = 0
    ids: set[str] = set()
    ops: Counter[str] = Counter()
    for f in sorted(out.glob("events-*.jsonl")):
        with open(f, "rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                e = json.loads(line)
                total += 1
                ids.add(e["id"])
                ops[e["op"]] += 1
    return total, len(ids), ops


def run_service(config: Path, port: int, expected: int, profile_path: Path | None) -> tuple[float, float, int, Any]:
    log = config.parent / "cdc.log"
    with Service(config, log, port, PIPELINE) as svc, profile(svc.pid, profile_path, rate=200, gil=False):

        def done() -> bool:
            d = api_get(port, f"/pipelines/{PIPELINE}")
            return bool(d["events_total"] >= expected and d["checkpoint"]["position"] == d["source"]["position"])

        # polled 5 times a second: the API's own work must not weigh on the measurement
        wait_until(done, 600, f"the checkpoint to cover all {expected} events", interval=0.2, ignore=(OSError, ValueError, KeyError))
        elapsed = time.monotonic() - svc.t0
        rss = peak_rss_kb(svc.pid)
    opened = None
    launched_wall = None
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if launched_wall is None and rec.get("event") == "service_started":
            launched_wall = rec["timestamp"]
        if rec.get("event") == "binlog_stream_open":
            opened = rec["timestamp"]
    return elapsed, 0.0 if opened is None else _since_open(opened, elapsed, log), rss, launched_wall


def _since_open(opened: str, elapsed: float, log: Path) -> float:
    """Seconds from the binlog stream's opening to the end (the launch-based time less the
    interpreter start and the service's set-up, read from the log's timestamps)."""
    from datetime import datetime

    first = None
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        first = rec["timestamp"]
        break
    if first is None:
        return elapsed
    t_first = datetime.fromisoformat(first.replace("Z", "+00:00"))
    t_open = datetime.fromisoformat(opened.replace("Z", "+00:00"))
    return max(0.0, elapsed - (t_open - t_first).total_seconds())


def hot_spots(profile: Path, top: int = 25) -> list[tuple[str, float]]:
    doc = json.loads(profile.read_text())
    frames = doc["shared"]["frames"]
    self_time: Counter[str] = Counter()
    total = 0.0
    for prof in doc["profiles"]:
        for sample, weight in zip(prof["samples"], prof["weights"], strict=False):
            if not sample:
                continue
            f = frames[sample[-1]]
            self_time[f"{f['name']} ({Path(f.get('file', '?')).name}:{f.get('line', '?')})"] += weight
            total += weight
    return [(name, 100.0 * w / total) for name, w in self_time.most_common(top)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inserts", type=int, default=300_000)
    ap.add_argument("--updates", type=int, default=150_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    ap.add_argument("--profile", action="store_true", help="record the service with py-spy")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    expected = args.inserts + args.updates

    folder = Path(tempfile.mkdtemp(prefix="cdc-bench-mysql-"))
    db = _harness.LocalMariaDB(settings={"max-binlog-size": "1G"})
    try:
        db.start()
        db.execute(f"CREATE DATABASE {DB} CHARACTER SET utf8mb4", DDL)
        port = free_port()
        config = write_config(folder, db.dsn(), port)
        start = save_start_position(config, port)
        file, _, pos = start.rpartition(":")
        print(f"start position {start}; writing {args.inserts} inserts and {args.updates} updates, {args.rows_per_tx} rows per transaction")
        wrote = workload(db, args.inserts, args.updates, args.rows_per_tx)
        end_file, end_pos = db.query("SHOW MASTER STATUS")[0][:2]
        end = f"{end_file}:{end_pos}"
        print(f"workload written in {wrote:.1f}s; binlog end {end}")

        rates = []
        for freeze in (False, True):
            n, bare_s = bare_loop(db, file, int(pos), expected, freeze)
            rates.append(n / bare_s)
            print(f"bare BinLogStreamReader loop (freeze_schema={freeze}): {n} rows in {bare_s:.2f}s = {n / bare_s:,.0f} rows/s")
        # the service runs with freeze_schema=True: compare with the faster of the two loops
        bare_rate = max(rates)

        profile = folder / "service.speedscope.json" if args.profile else None
        svc_s, svc_open_s, rss_kb, _ = run_service(config, port, expected, profile)
        total, unique, ops = count_events(folder / "out")
        if total != expected or unique != expected:
            print(f"ERROR: the file sink holds {total} events ({unique} distinct ids), expected {expected}")
            return 1
        svc_rate = total / svc_s
        ratio = svc_rate / bare_rate
        print(f"service (cdc run -> file sink): {total} events ({dict(ops)}) in {svc_s:.2f}s from launch = {svc_rate:,.0f} events/s")
        if svc_open_s:
            print(f"  from the binlog stream's opening: {svc_open_s:.2f}s = {total / svc_open_s:,.0f} events/s (ratio {total / svc_open_s / bare_rate:.2f})")
        print(f"  peak RSS {rss_kb / 1024:.0f} MB")
        print(f"ratio service / bare loop: {ratio:.2f} (target >= {TARGET_RATIO})")
        if profile is not None and profile.exists():
            print("hottest functions of the service (self time, all threads, % of samples):")
            for name, pct in hot_spots(profile):
                print(f"  {pct:5.1f}%  {name}")
            print(f"profile: {profile}")
        if args.strict and ratio < TARGET_RATIO:
            return 1
        return 0
    finally:
        db.cleanup()
        if not args.keep and not args.profile:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
