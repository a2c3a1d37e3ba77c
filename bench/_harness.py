"""What every benchmark script shares: the one place they set up from.

A benchmark (``bench/pg_file.py``, ``pg_kafka.py``, ``pg_brokers.py``, ``pg_webhook.py``,
``mysql_file.py``, ``latency.py``, ``snapshot.py``, ``singer.py``; ``run_all.py`` runs them all
into one table)
imports this module and nothing from another benchmark:

- **processes**: :class:`Service` is one ``python -m cdc run CONFIG`` with its output in a log
  file, timed from its launch, polled through the admin API (a service that exits early raises),
  stopped with SIGTERM (killed after 15 s); :func:`profile` records a process with py-spy into a
  speedscope file while its block runs, and :func:`summarize_profile` prints the hottest
  functions of one;
- **configuration**: :func:`write_config` writes a pipeline file from its top-level sections,
  :func:`service_config` the usual one (state file, API port, JSON logs, the pipelines);
- **measures**: :func:`peak_rss_kb` (VmHWM) and :func:`cpu_seconds` (user + system) of a live
  process, read from /proc; :func:`wait_until` polls with a deadline;
- **the PostgreSQL workload** of the PostgreSQL benchmarks (one table, inserts then updates in
  transactions of N rows, written while the consumers' slots already exist, so each decodes the
  same WAL), ``pg_recvlogical`` as the decoding ceiling, and :func:`run_file_service`, cdc with
  the file sink until its checkpoint covers the last event;
- **servers**: the throwaway servers come from the launchers the tests use
  (``cdc_local.postgres``; ``LocalMariaDB``, ``TansuBroker``, ``LocalNats``,
  ``LocalRedis`` and ``RabbitNode`` from ``tests/``, reached
  only through this module's attributes, so no benchmark imports test code itself).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import yaml

from cdc_local.postgres import LocalPostgres, free_port

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the launchers in tests/ (a script's own folder is bench/)
    sys.path.insert(0, str(ROOT))

__all__ = [
    "ROOT",
    "Service",
    "api_get",
    "cpu_seconds",
    "free_port",
    "lsn_int",
    "peak_rss_kb",
    "profile",
    "service_config",
    "summarize_profile",
    "wait_until",
    "write_config",
]


def __getattr__(name: str) -> Any:
    """``LocalMariaDB``, ``TansuBroker``, ``consumer_config``, ``LocalNats``, ``LocalRedis``,
    ``RabbitNode`` and ``declare_queue``, imported on first use (their client libraries are
    only needed by the benchmarks that use them)."""
    if name == "LocalMariaDB":
        from tests.mysql_server import LocalMariaDB

        return LocalMariaDB
    if name in ("TansuBroker", "consumer_config"):
        from tests import kafka_harness

        return getattr(kafka_harness, name)
    if name == "LocalNats":
        from tests.nats_harness import LocalNats

        return LocalNats
    if name == "LocalRedis":
        from tests.redis_harness import LocalRedis

        return LocalRedis
    if name in ("RabbitNode", "declare_queue"):
        from tests import rabbitmq_harness

        return getattr(rabbitmq_harness, name)
    raise AttributeError(name)


# -- measures ------------------------------------------------------------------------------------


def lsn_int(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def peak_rss_kb(pid: int) -> int:
    """Peak resident set size (VmHWM of /proc/PID/status) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``predicate`` until it returns something truthy (exceptions in ``ignore`` count as
    not yet); TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def api_get(port: int, path: str) -> Any:
    """GET ``path`` of the admin API on 127.0.0.1:``port``, decoded from JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return json.loads(data)


# -- configuration -------------------------------------------------------------------------------


def write_config(path: Path, **sections: Any) -> Path:
    """The pipeline file at ``path`` holding these top-level sections, in this order."""
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def service_config(
    work: Path,
    port: int,
    pipelines: list[dict[str, Any]],
    *,
    state: str = "state.sqlite",
    name: str = "pipeline.yaml",
    **extra: Any,
) -> Path:
    """``work/name``: state in ``work/state``, the API on 127.0.0.1:``port``, JSON logs at
    info, these pipelines (and any ``extra`` top-level settings, e.g. ``pin_cpu``)."""
    return write_config(
        work / name,
        state={"path": str(work / state)},
        api={"listen": f"127.0.0.1:{port}"},
        log={"level": "info", "format": "json"},
        **extra,
        pipelines=pipelines,
    )


# -- processes -----------------------------------------------------------------------------------


#: the folder ``python -m cdc`` runs in, so the code it imports (bench/ab.py points it at
#: another checkout's copy for a before/after in one run)
CODE_ROOT = ROOT


class Service:
    """``python -m cdc run CONFIG``, its output in ``log``, launched at :attr:`t0`."""

    def __init__(self, config: Path, log: Path, port: int, pipeline: str) -> None:
        self.config, self.log, self.port, self.pipeline = config, log, port, pipeline
        self._log = open(log, "wb")  # noqa: SIM115 - closed by stop()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(CODE_ROOT),
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def state(self) -> dict[str, Any] | None:
        """The pipeline's API document, None while the API does not answer; raises when the
        service has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"cdc exited with {self.proc.returncode}; see {self.log}")
        try:
            return api_get(self.port, f"/pipelines/{self.pipeline}")  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def wait_running(self, timeout: float = 60, what: str = "running") -> float:
        """Wait until the pipeline runs; returns that moment (time.monotonic)."""
        wait_until(lambda: (s := self.state()) and s.get("state") == "running", timeout, what)
        return time.monotonic()

    def stop(self) -> None:
        """SIGTERM, killed after 15 s; closes the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def profile(
    pid: int, path: Path | None, *, rate: int = 250, gil: bool = True, threads: bool = True
) -> Iterator[subprocess.Popen[bytes] | None]:
    """py-spy (the interpreter's own ``py-spy``, else the one on PATH) records ``pid`` into the speedscope file
    ``path`` while the block runs (nothing when ``path`` is None). After the block it is told to
    write its file (SIGINT) if still running, and given 60 s to."""
    if path is None:
        yield None
        return
    spy_bin = str(Path(sys.executable).parent / "py-spy")
    if not Path(spy_bin).exists():
        spy_bin = shutil.which("py-spy") or spy_bin
    cmd = [spy_bin, "record", "--pid", str(pid)]
    cmd += ["--threads"] * threads + ["--gil"] * gil
    cmd += ["--rate", str(rate), "--format", "speedscope", "-o", str(path)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield spy
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()


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


# -- the PostgreSQL workload -----------------------------------------------------------------------

DB = "bench"
TABLE = "public.bench"
PUBLICATION = "bench_pub"
RECV_SLOT = "bench_recv"
PIPELINE = "bench"
CDC_SLOT = "cdc_bench"


def prepare(pg: LocalPostgres, slots: tuple[str, ...] = (RECV_SLOT, CDC_SLOT)) -> str:
    """Database ``bench`` with the table, its publication and the consumers' slots; its DSN."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DB}")
    dsn = pg.dsn(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, a text NOT NULL, b int, c timestamptz)"
        )
        conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE}")
        for slot in slots:
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
            """  # type: ignore[arg-type]
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
                """  # type: ignore[arg-type]
            )
        count = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()  # type: ignore[arg-type]
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


def run_recvlogical(pg: LocalPostgres, dsn: str, endpos: str, timeout: float) -> float:
    """``pg_recvlogical`` on the workload's slot and publication up to ``endpos``, output to
    /dev/null: how fast the server decodes and sends this WAL. Returns its seconds."""
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


def last_line(folder: Path) -> dict[str, Any] | None:
    """The last complete event of the file sink's folder."""
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
    """(events, inserts and updates) in the file sink's folder."""
    total = 0
    ops: Counter[str] = Counter()
    for f in sorted(folder.glob("events-*.jsonl")):
        data = f.read_bytes()
        total += data.count(b"\n")
        ops["c"] += data.count(b'"op":"c"')
        ops["u"] += data.count(b'"op":"u"')
    return total, ops


def run_file_service(
    work: Path,
    dsn: str,
    expected: int,
    timeout: float,
    profile_path: Path | None,
    *,
    slot: str = CDC_SLOT,
    transforms: list[dict[str, Any]] | None = None,
    service: dict[str, Any] | None = None,
) -> tuple[float, float, float, float, int, Counter[str]]:
    """cdc with the file sink on the workload's pre-created slot (``snapshot.mode: never``)
    until its checkpoint covers the last event: (seconds from launch, seconds from `running`,
    peak RSS MB, CPU seconds, events in the files, ops). ``transforms``: the pipeline's list
    (they must keep every event)."""
    port = free_port()
    out = work / "out"
    pipeline: dict[str, Any] = {
        "name": PIPELINE,
        "source": {
            "type": "postgres",
            "dsn": dsn,
            "tables": [TABLE],
            "slot": slot,
            "publication": PUBLICATION,
            "heartbeat_s": 1,
        },
        "snapshot": {"mode": "never"},
        "sink": {"type": "file", "path": str(out)},
    }
    if transforms:
        pipeline["transforms"] = transforms
    config = service_config(work, port, [pipeline], **(service or {}))
    with Service(config, work / "cdc.log", port, PIPELINE) as svc, profile(svc.pid, profile_path):
        t_running = svc.wait_running()

        def done() -> bool:
            s = svc.state()
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
        rss_mb = peak_rss_kb(svc.pid) / 1024
        cpu_s = cpu_seconds(svc.pid)
    total, ops = count_events(out)
    return t_done - svc.t0, t_done - t_running, rss_mb, cpu_s, total, ops
