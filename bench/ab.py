#!/usr/bin/env python3
"""Benchmark: two service settings, or two versions of the code, alternating in one run.

    bench/ab.py --setting pin_cpu=false --setting pin_cpu=true --rounds 3
    git archive HEAD~1 cdc sources sinks cdc_local | tar -x -C /tmp/before
    bench/ab.py --setting code=/tmp/before --setting code=. --rounds 3

PostgreSQL → file: one pg workload (bench/pg_file.py's table; ``--inserts``/``--updates``)
written after one slot per (round, setting) exists, so every run decodes the very same WAL;
the runs alternate A, B, A, B, ... Then the snapshot: bench/snapshot.py's table
(``--snapshot-rows``), one ``initial_only`` run per (round, setting), alternating too. Each
``--setting KEY=VALUE`` is a top-level service setting (``true``/``false``/numbers as YAML
reads them), or ``code=FOLDER``: the service runs in FOLDER, so it imports the ``cdc``,
``sources`` and ``sinks`` found there (a before/after of a code change on the same WAL). Prints each run and, per setting, the range of its rates: compare within a run
only (the machine is shared).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import _harness
import snapshot
import yaml
from _harness import CDC_SLOT, prepare, run_file_service, workload

from cdc_local.postgres import LocalPostgres, find_debian_bindir


def use(extra: dict[str, Any]) -> dict[str, Any]:
    """Point the harness at the variant's code; the settings left for the config."""
    extra = dict(extra)
    _harness.CODE_ROOT = Path(extra.pop("code", _harness.ROOT)).resolve()
    return extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--setting", action="append", required=True, help="KEY=VALUE (twice)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--inserts", type=int, default=300_000)
    ap.add_argument("--updates", type=int, default=150_000)
    ap.add_argument("--snapshot-rows", type=int, default=500_000, help="0: no snapshot runs")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    variants: list[tuple[str, dict[str, Any]]] = []
    for text in args.setting:
        key, _, value = text.partition("=")
        variants.append((text, {key: value if key == "code" else yaml.safe_load(value)}))
    runs = [(r, label, extra) for r in range(args.rounds) for label, extra in variants]
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-ab-"))
    settings = {"autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
    pg = LocalPostgres(find_debian_bindir(15), settings=settings)
    rates: dict[str, list[float]] = {label: [] for label, _ in variants}
    snap_rates: dict[str, list[float]] = {label: [] for label, _ in variants}
    try:
        pg.start()
        slots = tuple(f"{CDC_SLOT}_{i}" for i in range(len(runs)))
        dsn = prepare(pg, slots)
        expected = args.inserts + args.updates
        workload(dsn, args.inserts, args.updates, 100)
        for i, (r, label, extra) in enumerate(runs):
            extra = use(extra)
            folder = work / f"file-{i}"
            folder.mkdir()
            s, _, rss, cpu, total, _ = run_file_service(
                folder, dsn, expected, args.timeout, None, slot=slots[i], service=extra
            )
            if total != expected:
                raise RuntimeError(f"{total} events, expected {expected}")
            rates[label].append(expected / s)
            print(
                f"round {r + 1} {label}: file {expected / s:,.0f}/s, CPU {cpu:.1f}s, "
                f"RSS {rss:.0f} MB",
                flush=True,
            )
            shutil.rmtree(folder / "out", ignore_errors=True)
        if args.snapshot_rows:
            sdsn, _ = snapshot.prepare(pg, args.snapshot_rows)
            for i, (r, label, extra) in enumerate(runs):
                extra = use(extra)
                res = snapshot.run_snapshot(
                    work / f"snap-{i}", sdsn, args.snapshot_rows, snapshot.CHUNK_ROWS[0],
                    args.timeout, service=extra,
                )
                snap_rates[label].append(res.rate)
                print(
                    f"round {r + 1} {label}: snapshot {res.rate:,.0f} rows/s "
                    f"(from launch {res.wall_rate:,.0f}/s), CPU {res.cpu_s:.1f}s, "
                    f"RSS {res.rss_mb:.0f} MB",
                    flush=True,
                )
                shutil.rmtree(work / f"snap-{i}" / "out", ignore_errors=True)
    finally:
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    for label, _ in variants:
        f, sn = rates[label], snap_rates[label]
        line = f"{label}: file {min(f):,.0f}–{max(f):,.0f}/s"
        if sn:
            line += f"; snapshot {min(sn):,.0f}–{max(sn):,.0f} rows/s"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
