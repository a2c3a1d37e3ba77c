#!/usr/bin/env python3
"""Benchmark: pipelinewise-tap-postgres (a Singer tap) beside cdc's file sink, same workload.

The peer: ``pipelinewise-tap-postgres`` in its own virtualenv (made with ``python3 -m venv``
under ``$CDC_BENCH_CACHE``, default ``~/.cache/cdc-bench``, and ``pip install
pipelinewise-tap-postgres`` on first use; ``--venv`` points elsewhere). Its LOG_BASED
replication reads a ``wal2json`` slot, so PostgreSQL needs the wal2json plugin: Debian's
``postgresql-15-wal2json`` (installed with apt-get when missing and this runs as root; the
project's setup script does not install it, since benchmarks are not CI).

Workload: bench/pg_file.py's (bench/_harness.py's): 500,000 inserts then 250,000 updates, 100 rows per
transaction, on a fresh throwaway Debian PostgreSQL 15, written after every slot exists:

1. set-up: the pgoutput slot of cdc and the tap's wal2json slot (``pipelinewise_bench``, the
   name the tap derives from the database) are created; the tap's catalog is discovered and
   the table selected with ``replication-method: LOG_BASED``; the tap runs once on the empty
   table (its "initial full-table" stage), which leaves the state holding the WAL position
   to stream from;
2. the workload is written;
3. cdc (``python -m cdc run``, file sink; ``_harness.run_file_service``) until its checkpoint covers
   the last event: every event must be in the files exactly once;
4. the tap, resumed from that state (pure logical replication), until it has written one
   RECORD message per change to its stdout, which this script reads and counts; the tap is
   then stopped. No Singer target consumes its output, so the tap's figure is its best case.

Both times run from process launch to the last event. Prints each rate, peak RSS and
cdc's rate over the tap's (target: at least 8). When the tap cannot be installed or run, the
reason is printed and cdc's figure still is. ``--json`` adds one machine-readable line
(``{"bench": "singer", ...}``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import _harness
import psycopg
from _harness import DB, TABLE, peak_rss_kb, profile, summarize_profile

from cdc_local.postgres import LocalPostgres, find_debian_bindir

TAP_PACKAGE = "pipelinewise-tap-postgres"
#: the tap finds its slot by name: pipelinewise_<dbname>
TAP_SLOT = f"pipelinewise_{DB}"
TARGET_RATIO = 8.0
#: this PostgreSQL (Debian's 15.20) only lets listed libraries be output plugins
SERVER_SETTINGS = {"output_plugin_libraries": "pgoutput, test_decoding, wal2json"}


def server_settings(bindir: Path) -> dict[str, str]:
    """:data:`SERVER_SETTINGS` that this server knows (a build without the setting lets any
    library be an output plugin, and refuses to start when given it)."""
    try:
        known = subprocess.run(
            [str(Path(bindir) / "postgres"), "--describe-config"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {line.split("\t", 1)[0] for line in known.splitlines()}
    return {k: v for k, v in SERVER_SETTINGS.items() if k in names}
DEFAULT_CACHE = Path(os.environ.get("CDC_BENCH_CACHE", Path.home() / ".cache" / "cdc-bench"))


class TapUnavailable(Exception):
    """The tap cannot be installed or run here; the message says why."""


@dataclass
class TapResult:
    records: int
    seconds: float
    rate: float
    rss_mb: float
    state_messages: int


# -- installation -------------------------------------------------------------------------------


def ensure_tap(venv: Path) -> Path:
    """The ``tap-postgres`` program of ``venv``, installing it there first when missing."""
    tap = venv / "bin" / "tap-postgres"
    if tap.exists():
        return tap
    venv.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        raise TapUnavailable(f"`python3 -m venv {venv}` failed: {made.stderr.strip()[-400:]}")
    print(f"installing {TAP_PACKAGE} into {venv} ...", flush=True)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", TAP_PACKAGE],
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0 or not tap.exists():
        tail = (pip.stderr or pip.stdout).strip().splitlines()[-5:]
        raise TapUnavailable(f"`pip install {TAP_PACKAGE}` failed: {' / '.join(tail)}")
    return tap


def ensure_wal2json(bindir: Path) -> None:
    """Make sure the server of ``bindir`` has the wal2json output plugin (apt-get if root)."""
    lib = bindir.parent / "lib" / "wal2json.so"
    if lib.exists():
        return
    major = bindir.parent.name  # /usr/lib/postgresql/15/bin -> 15
    package = f"postgresql-{major}-wal2json"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise TapUnavailable(
            f"the tap needs the wal2json plugin ({lib} is missing); install Debian's {package}"
        )
    print(f"installing {package} with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", package], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", package], capture_output=True, text=True, env=env
        )
    if done.returncode != 0 or not lib.exists():
        raise TapUnavailable(f"`apt-get install {package}` failed: {done.stderr.strip()[-400:]}")


# -- the tap ------------------------------------------------------------------------------------


class Tap:
    """pipelinewise-tap-postgres on one database: set up before the workload, run after it."""

    def __init__(self, tap: Path, pg: LocalPostgres, work: Path) -> None:
        self.tap = tap
        self.pg = pg
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.config = work / "tap-config.json"
        self.catalog = work / "tap-catalog.json"
        self.state = work / "tap-state.json"
        self.log = work / "tap.log"

    def _env(self) -> dict[str, str]:
        return {
            k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "VIRTUAL_ENV"
        }

    def setup(self, dsn: str) -> None:
        """Create the wal2json slot, discover and select the table, run the initial stage."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (TAP_SLOT,))
        self.config.write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "port": self.pg.port,
                    "user": "postgres",
                    "password": "",
                    "dbname": DB,
                    "filter_schemas": "public",
                    "default_replication_method": "LOG_BASED",
                    "break_at_end_lsn": True,
                    # ends the run by itself if a change never comes (we stop it earlier)
                    "logical_poll_total_seconds": 20,
                    "max_run_seconds": 3600,
                }
            )
        )
        with open(self.log, "ab") as log:
            found = subprocess.run(
                [str(self.tap), "--config", str(self.config), "--discover"],
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._env(),
                timeout=120,
            )
        if found.returncode != 0:
            raise TapUnavailable(
                f"tap-postgres --discover exited with {found.returncode}; see {self.log}"
            )
        catalog = json.loads(found.stdout)
        table = TABLE.split(".")[1]
        streams = [s for s in catalog["streams"] if s["table_name"] == table]
        if not streams:
            raise TapUnavailable(f"tap-postgres did not discover {TABLE}")
        for md in streams[0]["metadata"]:
            if md["breadcrumb"] == []:
                md["metadata"]["selected"] = True
                md["metadata"]["replication-method"] = "LOG_BASED"
        catalog["streams"] = streams
        self.catalog.write_text(json.dumps(catalog))
        # first run: the "initial full-table" stage of LOG_BASED on the empty table; its last
        # STATE message holds the WAL position the next run streams from
        with open(self.log, "ab") as log:
            first = subprocess.run(
                [str(self.tap), "--config", str(self.config), "--catalog", str(self.catalog)],
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._env(),
                timeout=300,
            )
        if first.returncode != 0:
            raise TapUnavailable(
                f"tap-postgres's first run exited with {first.returncode}; see {self.log}"
            )
        states = [
            json.loads(line)
            for line in first.stdout.splitlines()
            if b'"type": "STATE"' in line[:24]
        ]
        if not states:
            raise TapUnavailable("tap-postgres's first run wrote no STATE message")
        self.state.write_text(json.dumps(states[-1]["value"]))

    def run(self, expected: int, timeout: float, profile_path: Path | None = None) -> TapResult:
        """Stream the backlog: count RECORD messages until ``expected``, then stop the tap.
        ``profile_path``: record the tap with py-spy (speedscope JSON) meanwhile."""
        cmd = [
            str(self.tap),
            "--config",
            str(self.config),
            "--catalog",
            str(self.catalog),
            "--state",
            str(self.state),
        ]
        records = states = 0
        rss_mb = 0.0
        with open(self.log, "ab") as log:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, env=self._env(), bufsize=1 << 20
            )
            assert proc.stdout is not None
            deadline = t0 + timeout
            t_last = t0
            try:
                with profile(proc.pid, profile_path, rate=250, gil=False, threads=False):
                    for line in proc.stdout:
                        head = line[:24]
                        if b'"type": "RECORD"' in head:
                            records += 1
                            if records >= expected:
                                t_last = time.monotonic()
                                rss_mb = peak_rss_kb(proc.pid) / 1024
                                break
                        elif b'"type": "STATE"' in head:
                            states += 1
                        if records % 8192 == 0 and time.monotonic() > deadline:
                            raise TimeoutError(f"tap-postgres sent {records} records in {timeout:.0f}s")
                    else:
                        t_last = time.monotonic()
            finally:
                if proc.poll() is None:
                    if not rss_mb:
                        rss_mb = peak_rss_kb(proc.pid) / 1024
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
        if records < expected:
            raise TapUnavailable(
                f"tap-postgres ended after {records:,} of {expected:,} records "
                f"(exit {proc.returncode}); see {self.log}"
            )
        seconds = t_last - t0
        return TapResult(records, seconds, records / seconds, rss_mb, states)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--inserts", type=int, default=500_000)
    ap.add_argument("--updates", type=int, default=250_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed for each consumer")
    ap.add_argument(
        "--venv", type=Path, default=DEFAULT_CACHE / "singer-venv", help="the tap's virtualenv"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder (events, logs)")
    ap.add_argument("--json", action="store_true", help="also print one machine-readable line")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    ap.add_argument(
        "--profile", metavar="FILE", help="record the tap with py-spy (speedscope JSON)"
    )
    args = ap.parse_args(argv)
    profile = Path(args.profile).resolve() if args.profile else None

    bindir = find_debian_bindir(15)
    expected = args.inserts + args.updates
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-singer-"))
    settings = {
        "autovacuum": "off",
        "max_wal_size": "4GB",
        "checkpoint_timeout": "30min",
        **server_settings(bindir),
    }
    pg = LocalPostgres(bindir, settings=settings)
    unavailable: str | None = None
    tap_result: TapResult | None = None
    tap: Tap | None = None
    try:
        try:
            ensure_wal2json(bindir)
            tap = Tap(ensure_tap(args.venv), pg, work / "tap")
        except TapUnavailable as exc:
            unavailable = str(exc)
        pg.start()
        dsn = _harness.prepare(pg)
        if tap is not None:
            try:
                tap.setup(dsn)
            except (TapUnavailable, subprocess.TimeoutExpired) as exc:
                unavailable, tap = str(exc), None
        endpos, gen_s = _harness.workload(dsn, args.inserts, args.updates, args.rows_per_tx)
        print(
            f"PostgreSQL {pg.version}; workload: {args.inserts:,} inserts then {args.updates:,} "
            f"updates, {args.rows_per_tx} rows per transaction, written in {gen_s:.1f}s; end {endpos}",
            flush=True,
        )
        svc_s, _, svc_rss, _, total, ops = _harness.run_file_service(
            work, dsn, expected, args.timeout, None
        )
        if total != expected or ops["c"] != args.inserts or ops["u"] != args.updates:
            print(f"ERROR: the file sink holds {total} events ({dict(ops)}), expected {expected}")
            return 1
        if tap is not None:
            try:
                tap_result = tap.run(expected, args.timeout, profile)
            except (TapUnavailable, TimeoutError) as exc:
                unavailable = str(exc)
    finally:
        pg.cleanup()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    cdc_rate = expected / svc_s
    print()
    print(f"{'consumer':<28} {'events':>9} {'seconds':>8} {'events/s':>10} {'peak RSS':>9}")
    print(
        f"{'cdc (file sink)':<28} {expected:>9,} {svc_s:>8.2f} {cdc_rate:>10,.0f} {svc_rss:>6.0f} MB"
    )
    ratio: float | None = None
    if tap_result is not None:
        print(
            f"{'pipelinewise-tap-postgres':<28} {tap_result.records:>9,} {tap_result.seconds:>8.2f} "
            f"{tap_result.rate:>10,.0f} {tap_result.rss_mb:>6.0f} MB"
        )
        ratio = cdc_rate / tap_result.rate
        print()
        print(f"ratio cdc / tap: {ratio:.1f}  (target >= {TARGET_RATIO:.0f})")
    else:
        print(f"{'pipelinewise-tap-postgres':<28} not measured: {unavailable}")
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "singer",
                    "events": expected,
                    "cdc_s": svc_s,
                    "cdc_rate": cdc_rate,
                    "cdc_rss_mb": svc_rss,
                    "tap": asdict(tap_result) if tap_result else None,
                    "tap_unavailable": unavailable,
                    "ratio": ratio,
                }
            )
        )
    if profile is not None and profile.exists():
        summarize_profile(profile, top=15)
    met = ratio is not None and ratio >= TARGET_RATIO
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
