#!/usr/bin/env python3
"""Run every benchmark and print one table: each result beside its ceiling from the same run.

    bench/run_all.py                    # everything (about 8 minutes on 2 cores)
    bench/run_all.py --quick            # a fifth of the workload, 5 s per latency rate
    bench/run_all.py --only pg,latency  # sections: pg, mysql, latency
    bench/run_all.py --markdown         # the table as Markdown (docs/performance.md)
    bench/run_all.py --json             # also one machine-readable line at the end

Sections, each on fresh throwaway servers, one consumer at a time (never two at once):

* **pg** (Debian's PostgreSQL 15): one workload (bench/pg_file.py's: 500,000 inserts then
  250,000 updates, 100 rows per transaction) written after every slot exists, so every
  consumer decodes the very same WAL: ``pg_recvlogical`` to /dev/null (the ceiling), then cdc
  with the file sink (_harness.run_file_service), the Kafka sink on a local Tansu broker
  (pg_kafka.run_kafka_service; the topic is read back), the webhook sink to a local counting
  receiver (pg_webhook.run_webhook), the NATS JetStream, Redis Streams and RabbitMQ sinks on
  throwaway servers and the postgres sink into a second PostgreSQL cluster
  (pg_brokers.run_broker; each one's content is read back), and
  pipelinewise-tap-postgres on a wal2json slot
  (bench/singer.py). Last, in a database of its own (so no slot above decodes its load),
  bench/snapshot.py's measure: a 1,000,000-row 4-column table, ``COPY (SELECT * FROM t) TO
  STDOUT`` read as raw bytes by this process (the ceiling), then cdc with
  ``snapshot.mode: initial_only`` (default ``chunk_rows``) into the file sink until it exits.
* **mysql** (MariaDB 10.11, bench/mysql_file.py's functions): a bare ``BinLogStreamReader``
  loop over the workload's binlog (the faster of ``freeze_schema`` off and on) against cdc
  with the file sink.
* **latency** (bench/latency.py): commit-to-file latency p50/p99 at a steady 2,000, 20,000
  and 50,000 rows/s.
* **Debezium** (bench/debezium.py; issue 21), in the sections above: the real Debezium 3.6
  embedded engine on the same workloads, each right after cdc's row: PostgreSQL streaming on
  the pg workload's WAL (its own slot), the PostgreSQL snapshot of the snapshot's table, and
  MariaDB streaming (the mysql workload on a MariaDB of its own that reports a MySQL-like
  version). Its rate beside cdc's, cdc's over Debezium's (target ≥ 5×) and cdc's peak RSS over
  Debezium's process tree's (target ≤ 1/10). ``--pg-rows`` picks the pg section's rows.

Every sink's output is checked (each event exactly once) before its figure is shown. Times
run from the service's process launch to its checkpoint covering the last event, except the
snapshot's: its record's ``finished_at - started_at`` (the process's launch-to-exit time is in
the log and the JSON). Targets (issue 7): file ≥ 0.7 and Kafka ≥ 0.5 of pg_recvlogical;
NATS, Redis and RabbitMQ each ≥ 0.7 and the PostgreSQL read model (issue 18) ≥ 0.5 of the
file sink's rate in the same run;
MySQL ≥ 0.9 of the bare loop; webhook ≥ 20,000 events/s; ≥ 8× the Singer tap; snapshot ≥ 0.15
of COPY; p99 ≤ 50 ms at 2,000/s, ≤ 250 ms at 20,000/s and ≤ 50 ms at 50,000/s; peak RSS
≤ 200 MB everywhere (cdc's rows).
``--strict`` exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TARGET_RSS_MB = 200.0
TARGETS = {
    "file": 0.7,
    "kafka": 0.5,
    "broker": 0.7,  # NATS, Redis, RabbitMQ: of the file sink's rate in the same run
    "postgres": 0.5,  # the PostgreSQL read model: of the file sink's rate in the same run
    "mysql": 0.9,
    "singer": 8.0,
    "snapshot": 0.15,
    "webhook_events_s": 20_000,
    "debezium": 5.0,  # cdc's rate over Debezium's (issue 21), and at most 1/10 of its RSS
}


PG_ROWS = ("debezium", "kafka", "webhook", "brokers", "singer", "snapshot")


def bench(name: str) -> Any:
    """A benchmark script of this folder, imported as a module."""
    return importlib.import_module(name)


@dataclass
class Row:
    name: str
    events: int | None = None
    result: str = ""  # "79,644/s", "p50 2 / p99 6 ms", "not available yet", "error: ..."
    ceiling: str = ""  # "pg_recvlogical 206,630/s"
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    rss_mb: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def check_rss(self) -> None:
        if self.name.startswith("Debezium"):
            return  # a peer's row: its RSS is judged against cdc's (the ratio), not the cap
        if self.rss_mb is not None and self.rss_mb > TARGET_RSS_MB:
            self.met = False
            self.target += f"; RSS ≤ {TARGET_RSS_MB:.0f} MB"


def rate_text(rate: float) -> str:
    return f"{rate:,.0f}/s"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def failed(name: str, exc: BaseException) -> Row:
    log(f"{name} failed: {exc!r}\n{traceback.format_exc()}")
    return Row(
        name,
        result=f"error: {str(exc).splitlines()[0][:120] if str(exc) else repr(exc)}",
        met=False,
    )


# -- Debezium --------------------------------------------------------------------------------------


def debezium_row(
    name: str, run: Any, cdc_rate: float | None, cdc_rss: float | None, what: str
) -> Row:
    """A row for one Debezium run (``run`` returns bench/debezium.Result) beside cdc's
    ``cdc_rate`` (``what``: how cdc's figure was taken)."""
    try:
        dbz = bench("debezium")
        why = dbz.available()
        if why:
            return Row(name, result=f"not measured: {why}", met=None)
        r = run()
        row = Row(
            name,
            r.records,
            rate_text(r.rate),
            "",
            "",
            f"cdc ≥ {TARGETS['debezium']:.0f}×, RSS ≤ 1/10",
            None,
            r.rss_mb,
            {"seconds": r.seconds, "rate": r.rate, "cpu_s": r.cpu_s, "bytes": r.bytes,
             "consumer": r.consumer},
        )
        if cdc_rate is not None and cdc_rss is not None:
            ratio = cdc_rate / r.rate
            rss_ratio = cdc_rss / r.rss_mb
            row.ceiling = f"{what} {rate_text(cdc_rate)}"
            row.ratio = f"cdc {ratio:.1f}×; RSS 1/{1 / rss_ratio:.0f}"
            row.met = ratio >= TARGETS["debezium"] and rss_ratio <= 0.1
            row.data.update(cdc_over_debezium=ratio, cdc_rate=cdc_rate, rss_ratio=rss_ratio)
        log(f"{name}: {rate_text(r.rate)}, RSS {r.rss_mb:.0f} MB, CPU {r.cpu_s:.1f}s")
        return row
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return failed(name, exc)


# -- PostgreSQL -----------------------------------------------------------------------------------


def snapshot_row(args: argparse.Namespace, pg: Any, work: Path) -> Row:
    """bench/snapshot.py on the running cluster (a database of its own), default chunk_rows."""
    name = "PostgreSQL snapshot → file"
    try:
        snapshot = bench("snapshot")
        chunk_rows = snapshot.CHUNK_ROWS[0]
        res = snapshot.measure(
            pg, work, args.snapshot_rows, (chunk_rows,), args.timeout, keep=args.keep, log=log
        )
        r = res.runs[0]
        ratio = res.ratio(r)
        return Row(
            f"{name} (chunk_rows {chunk_rows:,})",
            r.rows_done,
            rate_text(r.rate),
            f"COPY TO STDOUT {rate_text(res.copy_rate)}",
            f"{ratio:.2f}",
            f"≥ {TARGETS['snapshot']:.2f}",
            ratio >= TARGETS["snapshot"],
            r.rss_mb,
            {
                "seconds": r.snapshot_s,
                "seconds_process": r.wall_s,
                "cpu_s": r.cpu_s,
                "rate": r.rate,
                "rate_process": r.wall_rate,
                "ceiling_rate": res.copy_rate,
                "chunk_rows": chunk_rows,
            },
        )
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return failed(name, exc)


def pg_section(args: argparse.Namespace, work: Path) -> list[Row]:
    import psycopg

    from cdc_local.postgres import LocalPostgres, find_debian_bindir

    harness = bench("_harness")
    pg_kafka = bench("pg_kafka")
    pg_brokers = bench("pg_brokers")
    pg_webhook = bench("pg_webhook")
    singer = bench("singer")

    inserts, updates, per_tx = args.inserts, args.updates, args.rows_per_tx
    expected = inserts + updates
    want = set(args.pg_rows.split(","))
    rows: list[Row] = []
    bindir = find_debian_bindir(15)
    settings = {
        "autovacuum": "off",
        "max_wal_size": "4GB",
        "checkpoint_timeout": "30min",
        **singer.server_settings(bindir),
    }
    pg = LocalPostgres(bindir, settings=settings)
    broker = harness.TansuBroker()
    tap = None
    tap_reason: str | None = None
    try:
        try:
            if "singer" in want:
                singer.ensure_wal2json(bindir)
                tap = singer.Tap(singer.ensure_tap(args.venv), pg, work / "tap")
        except singer.TapUnavailable as exc:
            tap_reason = str(exc)
        pg.start()
        dsn = harness.prepare(pg)
        with psycopg.connect(dsn, autocommit=True) as conn:
            slots = [
                *([pg_kafka.KAFKA_SLOT] if "kafka" in want else []),
                *([pg_webhook.HOOK_SLOT] if "webhook" in want else []),
                *(pg_brokers.SLOTS.values() if "brokers" in want else []),
            ]
            if "debezium" in want:
                slots.append(bench("debezium").DBZ_SLOT)
            for slot in slots:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        if tap is not None:
            try:
                tap.setup(dsn)
            except (singer.TapUnavailable, subprocess.TimeoutExpired) as exc:
                tap, tap_reason = None, str(exc)
        endpos, gen_s = harness.workload(dsn, inserts, updates, per_tx)
        log(
            f"PostgreSQL {pg.version}: {inserts:,} inserts + {updates:,} updates ({per_tx} rows/tx) "
            f"written in {gen_s:.1f}s, {harness.retained_mb(dsn):.0f} MB of WAL, end {endpos}"
        )

        recv_s = harness.run_recvlogical(pg, dsn, endpos, args.timeout)
        recv_rate = expected / recv_s
        ceiling = f"pg_recvlogical {rate_text(recv_rate)}"
        log(f"pg_recvlogical: {recv_s:.2f}s, {rate_text(recv_rate)}")

        # -> file
        file_rate: float | None = None
        last_lsn: str | None = None
        try:
            (work / "file").mkdir()
            s, running_s, rss, cpu, total, ops = harness.run_file_service(
                work / "file", dsn, expected, args.timeout, None
            )
            if total != expected or ops["c"] != inserts or ops["u"] != updates:
                raise RuntimeError(
                    f"the file sink holds {total} events ({dict(ops)}), expected {expected}"
                )
            last = harness.last_line(work / "file" / "out")
            last_lsn = last["source"]["lsn"] if last else None
            file_rate = expected / s
            ratio = file_rate / recv_rate
            rows.append(
                Row(
                    "PostgreSQL → file",
                    expected,
                    rate_text(file_rate),
                    ceiling,
                    f"{ratio:.2f}",
                    f"≥ {TARGETS['file']:.2f}",
                    ratio >= TARGETS["file"],
                    rss,
                    {
                        "seconds": s,
                        "seconds_from_running": running_s,
                        "cpu_s": cpu,
                        "rate": file_rate,
                        "ceiling_rate": recv_rate,
                    },
                )
            )
            log(
                f"file sink: {s:.2f}s ({running_s:.2f}s from running), {rate_text(file_rate)}, CPU {cpu:.1f}s, RSS {rss:.0f} MB"
            )
        except Exception as exc:  # noqa: BLE001 - reported in the table
            rows.append(failed("PostgreSQL → file", exc))

        # Debezium on the same WAL (its own slot, created before the workload)
        if "debezium" in want:
            dbz = bench("debezium")
            props = dbz.pg_stream_props(
                pg.port, harness.DB, harness.TABLE, dbz.DBZ_SLOT, harness.PUBLICATION
            )
            file_rss = rows[-1].rss_mb if rows and rows[-1].name == "PostgreSQL → file" else None
            rows.append(
                debezium_row(
                    "Debezium 3.6 embedded, PostgreSQL streaming",
                    lambda: dbz.run(
                        work / "debezium", "dbz_pg", props, args.debezium_consumer, expected,
                        args.timeout,
                    ),
                    file_rate,
                    file_rss,
                    "cdc → file",
                )
            )

        # -> Kafka
        if "kafka" in want:
            try:
                if last_lsn is None:
                    raise RuntimeError("needs the file sink's last event (its run failed)")
                broker.start()
                (work / "kafka").mkdir()
                prefix = "bench"
                s, running_s, rss = pg_kafka.run_kafka_service(
                    work / "kafka", dsn, broker.bootstrap, prefix, expected, last_lsn, args.timeout, {}
                )
                topic = f"{prefix}.{pg_kafka.KAFKA_PIPELINE}.{harness.TABLE}"
                total, ops, distinct, _ = pg_kafka.count_records(broker.bootstrap, topic, args.timeout)
                if (
                    total != expected
                    or distinct != expected
                    or ops["c"] != inserts
                    or ops["u"] != updates
                ):
                    raise RuntimeError(
                        f"the topic holds {total} records ({distinct} distinct ids, {dict(ops)})"
                    )
                rate = expected / s
                ratio = rate / recv_rate
                rows.append(
                    Row(
                        f"PostgreSQL → Kafka (Tansu, {pg_kafka.TOPIC_PARTITIONS} partitions)",
                        expected,
                        rate_text(rate),
                        ceiling,
                        f"{ratio:.2f}",
                        f"≥ {TARGETS['kafka']:.2f}",
                        ratio >= TARGETS["kafka"],
                        rss,
                        {
                            "seconds": s,
                            "seconds_from_running": running_s,
                            "rate": rate,
                            "ceiling_rate": recv_rate,
                        },
                    )
                )
                log(f"kafka sink: {s:.2f}s, {rate_text(rate)}, RSS {rss:.0f} MB")
            except Exception as exc:  # noqa: BLE001
                rows.append(failed("PostgreSQL → Kafka", exc))
            finally:
                broker.stop()

        # -> webhook
        if "webhook" in want:
            try:
                s, running_s, rss, cpu, receiver = pg_webhook.run_webhook(
                    work / "webhook", dsn, expected, args.timeout, 500
                )
                if (
                    receiver.events != expected
                    or receiver.ops["c"] != inserts
                    or receiver.ops["u"] != updates
                ):
                    raise RuntimeError(
                        f"the receiver counted {receiver.events} events ({dict(receiver.ops)})"
                    )
                rate = expected / s
                rows.append(
                    Row(
                        "PostgreSQL → webhook (local receiver)",
                        expected,
                        rate_text(rate),
                        ceiling,
                        f"{rate / recv_rate:.2f}",
                        f"≥ {TARGETS['webhook_events_s']:,}/s",
                        rate >= TARGETS["webhook_events_s"],
                        rss,
                        {
                            "seconds": s,
                            "seconds_from_running": running_s,
                            "cpu_s": cpu,
                            "rate": rate,
                            "requests": receiver.requests,
                            "ceiling_rate": recv_rate,
                        },
                    )
                )
                log(
                    f"webhook sink: {s:.2f}s, {rate_text(rate)}, {receiver.requests:,} requests, RSS {rss:.0f} MB"
                )
            except Exception as exc:  # noqa: BLE001
                rows.append(failed("PostgreSQL → webhook", exc))

        # -> NATS JetStream, Redis Streams, RabbitMQ, a PostgreSQL read model: each against the
        # file sink of this run
        if "brokers" in want:
            for kind in pg_brokers.SINKS:
                title = pg_brokers.TITLES[kind]
                target = TARGETS.get(kind, TARGETS["broker"])
                try:
                    if last_lsn is None or file_rate is None:
                        raise RuntimeError("needs the file sink's last event (its run failed)")
                    r = pg_brokers.run_broker(
                        kind, work, dsn, inserts, updates, last_lsn, args.timeout, log=log
                    )
                    rate = expected / r.seconds
                    ratio = rate / file_rate
                    rows.append(
                        Row(
                            title,
                            expected,
                            rate_text(rate),
                            f"cdc → file {rate_text(file_rate)}",
                            f"{ratio:.2f}",
                            f"≥ {target:.2f} of file",
                            ratio >= target,
                            r.rss_mb,
                            {
                                "seconds": r.seconds,
                                "seconds_from_running": r.seconds_from_running,
                                "cpu_s": r.cpu_s,
                                "rate": rate,
                                "file_rate": file_rate,
                            },
                        )
                    )
                    log(f"{kind} sink: {rate_text(rate)}, {ratio:.2f} of file, RSS {r.rss_mb:.0f} MB")
                except Exception as exc:  # noqa: BLE001 - reported in the table
                    rows.append(failed(title, exc))

        # the Singer tap, on the same WAL
        if "singer" in want:
            name = "pipelinewise-tap-postgres (wal2json)"
            if tap is None:
                rows.append(Row(name, result=f"not measured: {tap_reason}", met=None))
            else:
                try:
                    r = tap.run(expected, args.timeout)
                    row = Row(
                        name,
                        r.records,
                        rate_text(r.rate),
                        "",
                        "",
                        f"cdc ≥ {TARGETS['singer']:.0f}×",
                        None,
                        r.rss_mb,
                        {"seconds": r.seconds, "rate": r.rate},
                    )
                    if file_rate is not None:
                        ratio = file_rate / r.rate
                        row.ceiling = f"cdc → file {rate_text(file_rate)}"
                        row.ratio = f"cdc {ratio:.1f}×"
                        row.met = ratio >= TARGETS["singer"]
                        row.data["cdc_over_tap"] = ratio
                    rows.append(row)
                    log(f"tap-postgres: {r.seconds:.2f}s, {rate_text(r.rate)}, RSS {r.rss_mb:.0f} MB")
                except Exception as exc:  # noqa: BLE001
                    rows.append(Row(name, result=f"not measured: {exc}", met=None))

        # the snapshot, last: its table's load must not be in the WAL the slots above decode
        if "snapshot" in want:
            (work / "snapshot").mkdir()
            snap = snapshot_row(args, pg, work / "snapshot")
            rows.append(snap)
            if "debezium" in want:
                dbz = bench("debezium")
                snap_db = bench("snapshot")
                props = dbz.pg_snapshot_props(
                    pg.port, snap_db.DB, snap_db.TABLE, dbz.DBZ_SNAP_SLOT
                )
                rows.append(
                    debezium_row(
                        "Debezium 3.6 embedded, PostgreSQL snapshot",
                        lambda: dbz.run(
                            work / "debezium", "dbz_snap", props, args.debezium_consumer,
                            args.snapshot_rows, args.timeout,
                        ),
                        snap.data.get("rate_process"),
                        snap.rss_mb,
                        "cdc snapshot from launch",
                    )
                )
    finally:
        broker.stop()
        pg.cleanup()
    return rows


# -- MySQL ----------------------------------------------------------------------------------------


def mysql_section(args: argparse.Namespace, work: Path) -> list[Row]:
    name = "MySQL (MariaDB) → file"
    try:
        mf = bench("mysql_file")
    except Exception as exc:  # noqa: BLE001 - the script may be missing in this checkout
        return [failed(name, exc)]
    inserts, updates = args.mysql_inserts, args.mysql_updates
    expected = inserts + updates
    folder = work / "mysql"
    folder.mkdir()
    db = bench("_harness").LocalMariaDB(settings={"max-binlog-size": "1G"})
    try:
        db.start()
        db.execute(f"CREATE DATABASE {mf.DB} CHARACTER SET utf8mb4", mf.DDL)
        port = bench("_harness").free_port()
        config = mf.write_config(folder, db.dsn(), port)
        start = mf.save_start_position(config, port)
        file, _, pos = start.rpartition(":")
        wrote = mf.workload(db, inserts, updates, args.rows_per_tx)
        log(f"MariaDB: {inserts:,} inserts + {updates:,} updates written in {wrote:.1f}s")
        bare = {}
        for freeze in (False, True):
            n, bare_s = mf.bare_loop(db, file, int(pos), expected, freeze)
            bare[freeze] = n / bare_s
            log(
                f"bare BinLogStreamReader loop (freeze_schema={freeze}): {bare_s:.2f}s, {rate_text(n / bare_s)}"
            )
        bare_rate = max(bare.values())
        svc_s, open_s, rss_kb, _ = mf.run_service(config, port, expected, None)
        total, unique, ops = mf.count_events(folder / "out")
        if total != expected or unique != expected:
            raise RuntimeError(
                f"the file sink holds {total} events ({unique} distinct ids), expected {expected}"
            )
        rate = expected / svc_s
        ratio = rate / bare_rate
        log(f"mysql file sink: {svc_s:.2f}s, {rate_text(rate)}, RSS {rss_kb / 1024:.0f} MB")
        extra: list[Row] = []
        if args.mysql_debezium:
            db.cleanup()  # one MariaDB at a time; Debezium's reports a MySQL-like version
            extra.append(
                debezium_row(
                    "Debezium 3.6 embedded, MariaDB streaming",
                    lambda: bench("debezium").run_mysql(
                        folder / "debezium", inserts, updates, args.rows_per_tx,
                        args.debezium_consumer, args.timeout, log=log,
                    ),
                    rate,
                    rss_kb / 1024,
                    "cdc → file",
                )
            )
        return [
            Row(
                name,
                expected,
                rate_text(rate),
                f"bare BinLogStreamReader loop {rate_text(bare_rate)}",
                f"{ratio:.2f}",
                f"≥ {TARGETS['mysql']:.2f}",
                ratio >= TARGETS["mysql"],
                rss_kb / 1024,
                {
                    "seconds": svc_s,
                    "seconds_from_open": open_s,
                    "rate": rate,
                    "ceiling_rate": bare_rate,
                    "bare_rates": {str(k): v for k, v in bare.items()},
                },
            ),
            *extra,
        ]
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - mysql_file's helpers exit on timeouts
        return [failed(name, exc)]
    finally:
        db.cleanup()


# -- latency --------------------------------------------------------------------------------------


def latency_section(args: argparse.Namespace, work: Path) -> list[Row]:
    latency = bench("latency")
    rates = [2_000, 20_000, 50_000]
    try:
        results, rss = latency.run(rates, args.latency_seconds, log=log)
    except Exception as exc:  # noqa: BLE001
        return [failed("PostgreSQL → file latency", exc)]
    return [
        Row(
            f"latency commit → file @ {r.rate:,}/s",
            r.events,
            f"p50 {r.p50_ms:.1f} / p99 {r.p99_ms:.1f} ms",
            f"(max {r.max_ms:.1f} ms; writer {r.achieved_rate:,.0f}/s)",
            "",
            f"p99 ≤ {r.target_p99_ms:.0f} ms",
            r.met,
            rss,
            asdict(r),
        )
        for r in results
    ]


# -- output ---------------------------------------------------------------------------------------

HEADERS = (
    "benchmark",
    "events",
    "cdc",
    "ceiling / peer (same run)",
    "ratio",
    "target",
    "met",
    "peak RSS",
)


def cells(row: Row) -> tuple[str, ...]:
    met = "-" if row.met is None else ("yes" if row.met else "NO")
    rss = "-" if row.rss_mb is None else f"{row.rss_mb:.0f} MB"
    events = "-" if row.events is None else f"{row.events:,}"
    return (row.name, events, row.result, row.ceiling, row.ratio, row.target, met, rss)


def table_text(rows: list[Row]) -> str:
    lines = [HEADERS, *map(cells, rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    right = {1, 4, 7}
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def table_markdown(rows: list[Row]) -> str:
    out = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---", "--:", "--:", "---", "--:", "---", "---", "--:"]) + "|",
    ]
    for row in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_gib),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--only", default="pg,mysql,latency", help="sections to run: pg, mysql, latency"
    )
    ap.add_argument(
        "--quick", action="store_true", help="a fifth of the workload, 5 s per latency rate"
    )
    ap.add_argument(
        "--pg-rows",
        default=",".join(PG_ROWS),
        help=f"rows of the pg section (the file sink always runs): {','.join(PG_ROWS)}",
    )
    ap.add_argument(
        "--debezium-consumer",
        default="java",
        help="Debezium's consumer: java (a no-op Java class) or python (bench/debezium.py)",
    )
    ap.add_argument(
        "--no-mysql-debezium",
        dest="mysql_debezium",
        action="store_false",
        help="no Debezium row in the mysql section",
    )
    ap.add_argument("--inserts", type=int, default=500_000)
    ap.add_argument("--updates", type=int, default=250_000)
    ap.add_argument("--mysql-inserts", type=int, default=300_000)
    ap.add_argument("--mysql-updates", type=int, default=150_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument(
        "--snapshot-rows", type=int, default=1_000_000, help="rows of the snapshot's table"
    )
    ap.add_argument(
        "--latency-seconds",
        type=float,
        default=20.0,
        help="seconds of writing at each latency rate",
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed for each consumer")
    ap.add_argument(
        "--venv", type=Path, default=None, help="pipelinewise-tap-postgres's virtualenv"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--json", action="store_true", help="also print one machine-readable line")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    if args.quick:
        args.inserts //= 5
        args.updates //= 5
        args.mysql_inserts //= 5
        args.mysql_updates //= 5
        args.snapshot_rows //= 5
        args.latency_seconds = 5.0
    if args.venv is None:
        args.venv = bench("singer").DEFAULT_CACHE / "singer-venv"
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - {"pg", "mysql", "latency"}
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")

    facts = machine()
    log(
        f"{facts['cores']} cores ({facts['cpu']}), {facts['memory_gib']} GiB, Python {facts['python']}, "
        f"load average {facts['loadavg_at_start']:.2f}"
    )
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-all-"))
    rows: list[Row] = []
    t0 = time.monotonic()
    try:
        if "pg" in sections:
            rows += pg_section(args, work)
        if "mysql" in sections:
            rows += mysql_section(args, work)
        if "latency" in sections:
            rows += latency_section(args, work)
    finally:
        if args.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row.check_rss()

    print()
    print(
        f"{facts['date']}; {facts['cores']} cores, {facts['cpu']}; Python {facts['python']}; "
        f"took {time.monotonic() - t0:.0f}s"
    )
    print(table_markdown(rows) if args.markdown else table_text(rows))
    judged = [r for r in rows if r.met is not None]
    missed = [r.name for r in judged if not r.met]
    print(
        f"\ntargets met: {len(judged) - len(missed)} of {len(judged)}"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    if args.json:
        print(json.dumps({"bench": "all", "machine": facts, "rows": [asdict(r) for r in rows]}))
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
