#!/usr/bin/env python3
"""Benchmark: commit-to-file latency of PostgreSQL → file sink at a steady write rate.

Set-up: a fresh throwaway Debian PostgreSQL 15 (bench/pg_file.py's settings) with one table
``public.lat (id bigserial, phase int, payload text, committed_at timestamptz)``; the service
(``python -m cdc run``, file sink, ``snapshot.mode: never``) is started first and creates its
slot and publication; once it is ``running``:

* a **writer** (a child process: this script with ``--writer``) commits one transaction every
  10 ms holding ``rate / 100`` rows, for ``--seconds`` at each rate (2,000 and 20,000 rows/s by
  default, after a one-second warm-up at 500 rows/s that is not counted). Each row's
  ``committed_at`` is ``clock_timestamp()`` evaluated by the server while inserting it: the
  time of the change itself, a fraction of a millisecond before the transaction's commit (the
  INSERT of at most 200 rows and the COMMIT follow in the same statement; the writer's round
  trip per transaction is printed, and bounds that gap). The server's clock and this script's
  are the same clock (one machine), so no clock skew enters;
* a **reader** (this process) polls the events files every millisecond (``os.read`` of what
  was appended; new files after a rotation too) and notes the wall-clock time each chunk
  arrived. A line "appears" when its newline has been read. After each rate, every line of
  that phase is parsed: latency = arrival time - ``committed_at``.

What is measured is commit to *visible in the file* (the sink's ``write`` to the OS at its
flush, just before its ``fsync``); the poll interval adds up to ~1 ms. Prints p50/p99/max per
rate and the service's peak RSS. Targets: p99 ≤ 50 ms at 2,000 events/s, ≤ 250 ms at 20,000.
Writer, database, service and reader share the machine's 2 cores. ``--json`` adds one
machine-readable line (``{"bench": "latency", ...}``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from _harness import ROOT, Service, free_port, peak_rss_kb, service_config

from cdc_local.postgres import LocalPostgres, find_debian_bindir

TABLE = "public.lat"
PIPELINE = "latency"
#: (rate, p99 target in ms)
TARGETS = {2_000: 50.0, 20_000: 250.0, 50_000: 50.0}  # 50,000: issue 21
TICK_S = 0.010
WARMUP_RATE = 500
WARMUP_PHASE = 0

_STAMP = re.compile(rb'"phase":(\d+),.*?"committed_at":"([^"]+)"')


@dataclass
class RateResult:
    rate: int
    events: int
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    writer_rtt_p99_ms: float
    writer_late_ticks: int
    target_p99_ms: float | None

    @property
    def met(self) -> bool:
        return self.target_p99_ms is None or self.p99_ms <= self.target_p99_ms


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    i = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[i]


# -- the writer (a child process) ---------------------------------------------------------------


def writer_main(dsn: str, rate: int, seconds: float, phase: int) -> int:
    """Commit ``rate * TICK_S`` rows every ``TICK_S``, for ``seconds``; print JSON stats."""
    per_tick = max(1, round(rate * TICK_S))
    ticks = round(seconds / TICK_S)
    sql = (
        f"INSERT INTO {TABLE} (phase, payload, committed_at) "
        "SELECT %s, md5(g::text), clock_timestamp() FROM generate_series(1, %s) g"
    )
    rtts: list[float] = []
    late = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        cur = conn.cursor()
        t0 = time.monotonic()
        for k in range(ticks):
            due = t0 + k * TICK_S
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -TICK_S:
                late += 1
            t = time.monotonic()
            cur.execute(sql, (phase, per_tick), prepare=True)
            rtts.append(time.monotonic() - t)
        elapsed = time.monotonic() - t0
    print(
        json.dumps(
            {
                "rows": per_tick * ticks,
                "seconds": elapsed,
                "rtt_p50_ms": 1000 * percentile(rtts, 0.5),
                "rtt_p99_ms": 1000 * percentile(rtts, 0.99),
                "late_ticks": late,
            }
        ),
        flush=True,
    )
    return 0


def run_writer(dsn: str, rate: int, seconds: float, phase: int, tail: Any) -> dict[str, Any]:
    """Run the writer process; meanwhile keep ``tail`` polling. Returns the writer's stats."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--writer", dsn, str(rate), str(seconds), str(phase)],
        stdout=subprocess.PIPE,
        cwd=str(ROOT),
    )
    while proc.poll() is None:
        tail.poll()
        time.sleep(0.001)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the writer exited with {proc.returncode}")
    return json.loads(out)  # type: ignore[no-any-return]


# -- the reader ---------------------------------------------------------------------------------


class Tail:
    """Follows the events files of a file sink folder, noting when each chunk arrived."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index = 1
        self.fd: int | None = None
        self.chunks: list[tuple[float, bytes]] = []
        self.newlines = 0

    def _path(self, index: int) -> Path:
        return self.folder / f"events-{index:06d}.jsonl"

    def poll(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(self._path(self.index), os.O_RDONLY)
            except FileNotFoundError:
                return
        while True:
            data = os.read(self.fd, 1 << 20)
            if data:
                self.chunks.append((time.time(), data))
                self.newlines += data.count(b"\n")
                continue
            # at the end of this file: move on once the sink started the next one
            if self._path(self.index + 1).exists():
                data = os.read(self.fd, 1 << 20)
                if data:
                    continue
                os.close(self.fd)
                self.index += 1
                self.fd = os.open(self._path(self.index), os.O_RDONLY)
                continue
            return

    def wait_for(self, lines: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.newlines < lines:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {self.newlines} of {lines} events reached the file in {timeout:.0f}s"
                )
            self.poll()
            time.sleep(0.001)

    def take_lines(self) -> list[tuple[float, bytes]]:
        """(arrival time, line) of every complete line read so far; forgets them."""
        out: list[tuple[float, bytes]] = []
        pending = b""
        for t, data in self.chunks:
            parts = (pending + data).split(b"\n")
            pending = parts.pop()
            out.extend((t, line) for line in parts)
        self.chunks = [(self.chunks[-1][0], pending)] if pending else []
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def latencies(lines: list[tuple[float, bytes]]) -> dict[int, list[float]]:
    """Latency in ms of each event, by phase."""
    by_phase: dict[int, list[float]] = {}
    for arrived, line in lines:
        m = _STAMP.search(line)
        if m is None:
            continue
        stamp = datetime.fromisoformat(m.group(2).decode()).timestamp()
        by_phase.setdefault(int(m.group(1)), []).append(1000 * (arrived - stamp))
    return by_phase


# -- the service ----------------------------------------------------------------------------------


def write_config(work: Path, dsn: str, port: int) -> Path:
    pipeline = {
        "name": PIPELINE,
        "source": {"type": "postgres", "dsn": dsn, "tables": [TABLE], "heartbeat_s": 1},
        "snapshot": {"mode": "never"},
        "sink": {"type": "file", "path": str(work / "out"), "rotate_mb": 512},
    }
    return service_config(work, port, [pipeline])


def measure(
    pg: LocalPostgres, work: Path, rates: list[int], seconds: float, log: Any = print
) -> tuple[list[RateResult], float]:
    """Run the service on ``pg`` and measure each rate; returns the results and the
    service's peak RSS in MB."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE latency")
    dsn = pg.dsn("latency")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, phase int NOT NULL, payload text, "
            "committed_at timestamptz NOT NULL)"
        )
    port = free_port()
    config = write_config(work, dsn, port)
    tail = Tail(work / "out")
    results: list[RateResult] = []
    with Service(config, work / "cdc.log", port, PIPELINE) as svc:
        try:
            svc.wait_running(what="the service to run")
            total = 0
            # warm-up: the first change makes the service describe the table and write its schema
            stats = run_writer(dsn, WARMUP_RATE, 1.0, WARMUP_PHASE, tail)
            total += stats["rows"]
            tail.wait_for(total, 60)
            tail.take_lines()
            for phase, rate in enumerate(rates, start=1):
                stats = run_writer(dsn, rate, seconds, phase, tail)
                total += stats["rows"]
                tail.wait_for(total, 120)
                found = latencies(tail.take_lines()).get(phase, [])
                if len(found) != stats["rows"]:
                    raise RuntimeError(
                        f"phase {phase}: {len(found)} events in the file, {stats['rows']} written"
                    )
                result = RateResult(
                    rate,
                    len(found),
                    stats["rows"] / stats["seconds"],
                    percentile(found, 0.5),
                    percentile(found, 0.99),
                    max(found),
                    stats["rtt_p99_ms"],
                    stats["late_ticks"],
                    TARGETS.get(rate),
                )
                results.append(result)
                log(
                    f"{rate:,} rows/s: {result.events:,} events, p50 {result.p50_ms:.1f} ms, "
                    f"p99 {result.p99_ms:.1f} ms, max {result.max_ms:.1f} ms "
                    f"(writer: {result.achieved_rate:,.0f} rows/s, round trip p99 "
                    f"{result.writer_rtt_p99_ms:.1f} ms, {result.writer_late_ticks} late ticks)"
                )
            rss_mb = peak_rss_kb(svc.pid) / 1024
        finally:
            tail.close()
    return results, rss_mb


def run(
    rates: list[int], seconds: float, keep: bool = False, log: Any = print
) -> tuple[list[RateResult], float]:
    """:func:`measure` on a fresh throwaway Debian PostgreSQL 15."""
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-latency-"))
    pg = LocalPostgres(find_debian_bindir(15), settings={"autovacuum": "off"})
    try:
        pg.start()
        return measure(pg, work, rates, seconds, log)
    finally:
        pg.cleanup()
        if keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--rates", default="2000,20000", help="comma-separated rows/s (default 2000,20000)"
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of writing at each rate")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (events, logs)")
    ap.add_argument("--json", action="store_true", help="also print one machine-readable line")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument(
        "--writer", nargs=4, metavar=("DSN", "RATE", "SECONDS", "PHASE"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.writer:
        dsn, rate, seconds, phase = args.writer
        return writer_main(dsn, int(rate), float(seconds), int(phase))

    rates = [int(r) for r in args.rates.split(",")]
    results, rss_mb = run(rates, args.seconds, keep=args.keep)

    print()
    print(
        f"{'rate':>12} {'events':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'target p99':>11}  met"
    )
    for r in results:
        target = f"<= {r.target_p99_ms:.0f} ms" if r.target_p99_ms is not None else "-"
        print(
            f"{r.rate:>8,}/s {r.events:>8,} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {r.max_ms:>7.1f} "
            f"{target:>11}  {'yes' if r.met else 'no'}"
        )
    print(f"\ncdc peak RSS (VmHWM): {rss_mb:.1f} MB")
    if args.json:
        print(
            json.dumps(
                {"bench": "latency", "rss_mb": rss_mb, "rates": [asdict(r) for r in results]}
            )
        )
    met = all(r.met for r in results)
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
