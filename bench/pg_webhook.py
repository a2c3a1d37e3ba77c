#!/usr/bin/env python3
"""Benchmark: PostgreSQL → webhook sink, beside the file sink and pg_recvlogical.

The workload and its helpers are bench/pg_file.py's (bench/_harness.py's, shared, not copied): 500,000 inserts
then 250,000 updates in one table (``--rows-per-tx`` rows per transaction), written while the
logical slots already exist, so every consumer decodes the same WAL backlog. Then, one after
the other (never at the same time), on a fresh throwaway cluster:

* ``pg_recvlogical`` to /dev/null: the server's own decoding ceiling;
* ``cdc run`` with the file sink (_harness.run_file_service), as the reference;
* ``cdc run`` with the webhook sink, POSTing to a local receiver in this process (stdlib
  ``ThreadingHTTPServer`` on a loopback port, HTTP/1.1 keep-alive) that parses nothing: it
  counts events by their ``{"id":"pg:`` prefix and ops by ``"op":"c"`` / ``"op":"u"``, notes
  the batch id and answers 200. The run ends when the receiver counted every event and the
  pipeline's checkpoint covers the last one.

Prints events, seconds and events/s for each, the webhook's requests and bytes, duplicate
batches (expected: none) and the services' peak RSS. Target: the webhook sink delivers at
least 20,000 events/s. ``--strict`` makes a missed target (or a wrong count) exit 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import _harness as base
import psycopg
from _harness import (
    PUBLICATION,
    TABLE,
    Service,
    cpu_seconds,
    free_port,
    lsn_int,
    peak_rss_kb,
    service_config,
    wait_until,
)

from cdc_local.postgres import LocalPostgres, find_debian_bindir, find_embedded_bindir

HOOK_PIPELINE = "bench_hook"
HOOK_SLOT = "cdc_bench_hook"
TARGET_EVENTS_S = 20_000

_EVENT = b'{"id":"pg:'
_LSN = b'"lsn":"'


class CountingReceiver:
    """Counts what it is sent; answers 200 to everything."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.ops: Counter[str] = Counter()
        self.requests = 0
        self.bytes = 0
        self.batch_ids: Counter[str] = Counter()
        self.last_lsn: str | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                n = body.count(_EVENT)
                c = body.count(b'"op":"c"')
                u = body.count(b'"op":"u"')
                i = body.rfind(_LSN) + len(_LSN)
                lsn = body[i : body.index(b'"', i)].decode()
                with receiver.lock:
                    receiver.events += n
                    receiver.ops["c"] += c
                    receiver.ops["u"] += u
                    receiver.requests += 1
                    receiver.bytes += len(body)
                    receiver.batch_ids[self.headers["X-CDC-Batch-Id"]] += 1
                    receiver.last_lsn = lsn
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_webhook(
    work: Path, dsn: str, expected: int, timeout: float, batch_max: int
) -> tuple[float, float, float, float, CountingReceiver]:
    """(seconds from launch, seconds from `running`, peak RSS MB, CPU seconds, the receiver)."""
    work.mkdir(parents=True, exist_ok=True)
    receiver = CountingReceiver()
    port = free_port()
    pipeline = {
        "name": HOOK_PIPELINE,
        "source": {
            "type": "postgres",
            "dsn": dsn,
            "tables": [TABLE],
            "slot": HOOK_SLOT,
            "publication": PUBLICATION,
            "heartbeat_s": 1,
        },
        "snapshot": {"mode": "never"},
        "sink": {"type": "webhook", "url": receiver.url, "batch_max": batch_max},
    }
    config = service_config(work, port, [pipeline])
    try:
        with Service(config, work / "cdc.log", port, HOOK_PIPELINE) as svc:
            t_running = svc.wait_running()

            def done() -> bool:
                s = svc.state()
                if s is not None and s["state"] == "failed":
                    raise RuntimeError(f"pipeline failed: {s['last_error']}")
                with receiver.lock:
                    count, last = receiver.events, receiver.last_lsn
                if s is None or count < expected or last is None:
                    return False
                ckpt = s["checkpoint"]["position"]
                return ckpt is not None and lsn_int(ckpt) > lsn_int(last)

            wait_until(done, timeout, "the webhook pipeline's checkpoint to cover every event")
            t_done = time.monotonic()
            rss_mb = peak_rss_kb(svc.pid) / 1024
            cpu_s = cpu_seconds(svc.pid)
    finally:
        receiver.close()
    return t_done - svc.t0, t_done - t_running, rss_mb, cpu_s, receiver


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pg", type=int, choices=(15, 18), default=15)
    ap.add_argument("--inserts", type=int, default=500_000)
    ap.add_argument("--updates", type=int, default=250_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument("--batch-max", type=int, default=500, help="the webhook sink's batch_max")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed for each consumer")
    ap.add_argument("--no-file", action="store_true", help="skip the file sink run")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (events, logs)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = ap.parse_args(argv)

    bindir = find_debian_bindir(15) if args.pg == 15 else find_embedded_bindir()
    expected = args.inserts + args.updates
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-hook-"))
    settings = {"autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
    pg = LocalPostgres(bindir, settings=settings)
    rows: list[tuple[str, float, float | None, float | None]] = []  # name, s, RSS MB, CPU s
    file_total: int | None = None
    file_s: float | None = None
    try:
        pg.start()
        dsn = base.prepare(pg)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (HOOK_SLOT,))
        endpos, gen_s = base.workload(dsn, args.inserts, args.updates, args.rows_per_tx)
        print(
            f"PostgreSQL {pg.version} ({bindir}); workload: {args.inserts:,} inserts then "
            f"{args.updates:,} updates, {args.rows_per_tx} rows per transaction, written in "
            f"{gen_s:.1f}s; WAL to decode {base.retained_mb(dsn):.0f} MB, end {endpos}",
            flush=True,
        )
        recv_s = base.run_recvlogical(pg, dsn, endpos, args.timeout)
        rows.append(("pg_recvlogical", recv_s, None, None))
        if not args.no_file:
            (work / "file").mkdir()
            result = base.run_file_service(work / "file", dsn, expected, args.timeout, None)
            # (seconds, seconds from running, RSS MB, [CPU s,] events, ops)
            file_s, file_total = result[0], result[-2]
            cpu = result[3] if len(result) == 6 else None
            rows.append(("cdc (file sink)", file_s, result[2], cpu))
        hook_s, hook_running_s, hook_rss, hook_cpu, receiver = run_webhook(
            work / "webhook", dsn, expected, args.timeout, args.batch_max
        )
        rows.append(("cdc (webhook sink)", hook_s, hook_rss, hook_cpu))
    finally:
        pg.cleanup()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    ok = True
    if file_total is not None and file_total != expected:
        print(f"ERROR: the file sink holds {file_total} events, expected {expected}")
        ok = False
    duplicates = sum(n - 1 for n in receiver.batch_ids.values() if n > 1)
    if (
        receiver.events != expected
        or receiver.ops["c"] != args.inserts
        or receiver.ops["u"] != args.updates
    ):
        print(
            f"ERROR: the receiver counted {receiver.events} events ({dict(receiver.ops)}), expected {expected}"
        )
        ok = False

    print()
    print(
        f"{'consumer':<19} {'events':>9} {'seconds':>8} {'events/s':>10} {'peak RSS':>9} {'CPU s':>7}"
    )
    for name, seconds, rss, cpu in rows:
        rss_text = f"{rss:.0f} MB" if rss is not None else "-"
        cpu_text = f"{cpu:.1f}" if cpu is not None else "-"
        print(
            f"{name:<19} {expected:>9,} {seconds:>8.2f} {expected / seconds:>10,.0f} "
            f"{rss_text:>9} {cpu_text:>7}"
        )
    print()
    hook_rate = expected / hook_s
    print(
        f"webhook: {receiver.requests:,} requests, {receiver.events / max(1, receiver.requests):.0f} "
        f"events per request (batch_max {args.batch_max}), {receiver.bytes / 2**20:.0f} MiB posted, "
        f"{duplicates} duplicate batches"
    )
    print(
        f"webhook from `running` only: {hook_running_s:.2f}s, {expected / hook_running_s:,.0f} events/s "
        f"(start-up {hook_s - hook_running_s:.2f}s)"
    )
    if file_s is not None:
        print(f"webhook / file sink (events/s): {file_s / hook_s:.2f}")
    met = ok and hook_rate >= TARGET_EVENTS_S
    print(f"target (webhook >= {TARGET_EVENTS_S:,} events/s): {'met' if met else 'missed'}")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
