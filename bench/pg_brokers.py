#!/usr/bin/env python3
"""Benchmark: PostgreSQL → NATS JetStream, Redis Streams, RabbitMQ and a PostgreSQL read model,
beside the file sink.

The workload is bench/pg_file.py's (bench/_harness.py's, shared): 500,000 inserts then 250,000
updates in one table (``--rows-per-tx`` rows per transaction), written while every consumer's
logical slot already exists, so each decodes the very same WAL backlog. Then, one after the
other (never two at once), on a fresh throwaway cluster:

* cdc with the **file** sink (``_harness.run_file_service``), the reference;
* cdc with each broker sink on a throwaway server started the way the tests start them (the
  launchers of ``tests/``, reached through ``_harness``), until the pipeline's checkpoint covers
  the file sink's last event; then everything the server holds is read back and must hold every
  event exactly once (750,000 distinct event ids, 500,000 ``c`` and 250,000 ``u``):

  - **nats**: Debian's ``nats-server`` with JetStream (file storage), the sink's default
    stream (created by the sink, 2-minute duplicate window); read back with a pull consumer;
  - **redis**: Debian's ``redis-server`` with AOF on (``appendfsync always``, what the sink's
    guarantee asks for: each batch is one MULTI/EXEC, so one fsync per batch); read with XRANGE;
  - **rabbitmq**: Debian's RabbitMQ node, a durable topic exchange with one durable classic
    queue bound to ``#`` before the run (publisher confirms arrive once the queue wrote the
    message); read back by consuming the queue;
  - **postgres**: the postgres sink into a second Debian PostgreSQL 15 cluster (``fsync`` and
    ``synchronous_commit`` on, as a real target: each batch is one durable commit); read back
    as the target table's rows (as many as the inserts, the same content as the source's:
    an md5 of both tables in key order) and the sink's stored position (``count`` = every
    event applied once).

Each broker server runs only during its own row and is stopped before the next. Prints, per
sink, events, seconds and events/s (from the service's launch to its checkpoint covering the
last event), the rate from ``running``, the ratio to the file sink's rate and the service's
peak RSS. Target: each broker sink reaches at least 0.7 of the file sink's rate (the postgres
sink 0.5: it applies every change to indexed tables), with peak RSS ≤ 200 MB. ``--strict`` makes a missed target exit 1; ``--profile DIR`` records each broker
sink's service with py-spy (``pip install py-spy``) and prints its hottest functions.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness
import psycopg
from _harness import (
    CDC_SLOT,
    PUBLICATION,
    TABLE,
    Service,
    cpu_seconds,
    free_port,
    last_line,
    lsn_int,
    peak_rss_kb,
    profile,
    run_file_service,
    service_config,
    summarize_profile,
    wait_until,
    workload,
)

from cdc_local.postgres import LocalPostgres, find_debian_bindir, find_embedded_bindir

TARGET_RATIO = 0.7
#: sinks with a target of their own (ratio to the file sink's rate)
TARGET_RATIOS = {"postgres": 0.5}
TARGET_RSS_MB = 200.0
#: the broker sinks, in the order they run
SINKS = ("nats", "redis", "rabbitmq", "postgres")
PIPELINES = {"nats": "benchn", "redis": "benchr", "rabbitmq": "benchq", "postgres": "benchp"}
SLOTS = {kind: f"cdc_{name}" for kind, name in PIPELINES.items()}
TITLES = {
    "nats": "PostgreSQL → NATS JetStream (file storage)",
    "redis": "PostgreSQL → Redis Streams (AOF always)",
    "rabbitmq": "PostgreSQL → RabbitMQ (durable queue, confirms)",
    "postgres": "PostgreSQL → PostgreSQL read model (postgres sink)",
}


@dataclass
class Readback:
    """What the broker holds for the pipeline: events, their ops and distinct ids."""

    total: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    ids: set[bytes] = field(default_factory=set)
    seconds: float = 0.0

    def add(self, event_id: bytes | str | None, op: bytes | str | None) -> None:
        self.total += 1
        if isinstance(op, bytes):
            op = op.decode()
        self.ops[op or "?"] += 1
        if isinstance(event_id, str):
            event_id = event_id.encode()
        self.ids.add(event_id or b"")

    def problem(self, inserts: int, updates: int) -> str | None:
        expected = inserts + updates
        if (
            self.total != expected
            or len(self.ids) != expected
            or self.ops["c"] != inserts
            or self.ops["u"] != updates
        ):
            return (
                f"the broker holds {self.total} events ({len(self.ids)} distinct ids, "
                f"{dict(self.ops)}), expected {expected}"
            )
        return None


@dataclass
class TableReadback(Readback):
    """What a postgres-sink target holds: its rows, compared with the source's, and the
    number of events the sink says it applied."""

    rows: int = 0
    same: bool = False
    applied: int = 0

    def problem(self, inserts: int, updates: int) -> str | None:
        if self.rows != inserts or not self.same or self.applied != inserts + updates:
            return (
                f"the target holds {self.rows} rows (same as the source: {self.same}) and "
                f"{self.applied} applied events; expected {inserts} rows and "
                f"{inserts + updates} events"
            )
        return None


def _table_md5(dsn: str) -> tuple[int, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY id)) FROM {TABLE} t"  # type: ignore[arg-type]
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _read_postgres(target: str, source: str) -> TableReadback:
    out = TableReadback()
    out.rows, target_md5 = _table_md5(target)
    out.same = target_md5 == _table_md5(source)[1]
    with psycopg.connect(target, autocommit=True) as conn:
        row = conn.execute(
            "SELECT position::jsonb->>'count' FROM public.cdc_sink_positions WHERE pipeline = %s",
            (PIPELINES["postgres"],),
        ).fetchone()
    out.applied = int(row[0]) if row and row[0] else 0
    out.total = out.applied
    return out


@dataclass
class Result:
    kind: str
    seconds: float
    seconds_from_running: float
    rss_mb: float
    cpu_s: float
    readback: Readback


# -- the brokers: start, sink section, read back ---------------------------------------------------


class Broker:
    """One throwaway broker server of ``kind`` for one row."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind, self.work = kind, work
        self.server: Any = None
        self.tag = uuid.uuid4().hex[:8]
        #: the source database (the postgres row compares the target's table with it)
        self.source_dsn = ""

    def start(self) -> Broker:
        if self.kind == "nats":
            self.server = _harness.LocalNats(self.work / "nats").start()
        elif self.kind == "redis":
            self.server = _harness.LocalRedis(self.work / "redis").start()
        elif self.kind == "postgres":
            settings = {"fsync": "on", "synchronous_commit": "on", "wal_level": "replica"}
            self.server = LocalPostgres(find_debian_bindir(15), settings=settings).start()
            with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE model")
        else:
            self.server = _harness.RabbitNode().start()
            _harness.declare_queue(self.server.url(), f"cdc-{self.tag}", f"all-{self.tag}", "#")
        return self

    def stop(self) -> None:
        if self.server is not None:
            if self.kind == "postgres":
                self.server.cleanup()
            else:
                self.server.stop()
            self.server = None

    def sink(self) -> dict[str, Any]:
        if self.kind == "nats":
            return {"type": "nats", "url": self.server.url}
        if self.kind == "redis":
            return {"type": "redis", "url": self.server.url}
        if self.kind == "postgres":
            return {"type": "postgres", "dsn": self.server.dsn("model")}
        return {"type": "rabbitmq", "url": self.server.url(), "exchange": f"cdc-{self.tag}"}

    def read_back(self, expected: int, timeout: float) -> Readback:
        t0 = time.monotonic()
        if self.kind == "nats":
            out = asyncio.run(_read_nats(self.server, PIPELINES["nats"], timeout))
        elif self.kind == "redis":
            out = _read_redis(self.server, f"cdc:{PIPELINES['redis']}:{TABLE}")
        elif self.kind == "postgres":
            out = _read_postgres(self.server.dsn("model"), self.source_dsn)
        else:
            out = asyncio.run(_read_rabbit(self.server.url(), f"all-{self.tag}", expected, timeout))
        out.seconds = time.monotonic() - t0
        return out


async def _read_nats(server: Any, pipeline: str, timeout: float) -> Readback:
    import nats.errors
    import nats.js.api

    out = Readback()
    nc = await server.connect()
    try:
        js = nc.jetstream(timeout=30)
        info = await js.stream_info("CDC")
        subject = f"cdc.{pipeline}.*.*"
        config = nats.js.api.ConsumerConfig(
            ack_policy=nats.js.api.AckPolicy.NONE,
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
            inactive_threshold=60,
        )
        sub = await js.pull_subscribe(subject, durable=None, stream="CDC", config=config)
        deadline = time.monotonic() + timeout
        last = int(info.state.last_seq)
        try:
            while time.monotonic() < deadline:
                try:
                    batch = await sub.fetch(5000, timeout=2)
                except nats.errors.TimeoutError:
                    return out
                for m in batch:
                    headers = m.headers or {}
                    out.add(headers.get("Nats-Msg-Id"), headers.get("cdc-op"))
                    meta = m.metadata
                    if meta.sequence.stream >= last or meta.num_pending == 0:
                        return out
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    raise TimeoutError("could not read the NATS stream to its end")


def _read_redis(server: Any, key: str) -> Readback:
    out = Readback()
    c = server.client()
    try:
        start = "-"
        while True:
            chunk = c.xrange(key, min=start, max="+", count=10_000)
            if not chunk:
                return out
            for _entry, fields in chunk:
                out.add(fields.get(b"id"), fields.get(b"op"))
            start = "(" + chunk[-1][0].decode()
    finally:
        c.close()


async def _read_rabbit(url: str, queue: str, expected: int, timeout: float) -> Readback:
    """Consume the queue (no_ack) until it is empty: every event and schema message."""
    import aiormq

    out = Readback()
    conn = await asyncio.wait_for(aiormq.connect(url), 30)
    try:
        channel = await conn.channel()
        declared = await channel.queue_declare(queue, passive=True)
        held = int(declared.message_count or 0)
        done = asyncio.Event()
        seen = 0

        async def on_message(message: Any) -> None:
            nonlocal seen
            seen += 1
            props = message.header.properties
            if props.message_type != "schema":
                op = (props.headers or {}).get("cdc-op")
                out.add(props.message_id, op)
            if seen >= held:
                done.set()

        if held:
            await channel.basic_qos(prefetch_count=5000)
            await channel.basic_consume(queue, on_message, no_ack=True)
            await asyncio.wait_for(done.wait(), timeout)
    finally:
        await conn.close()
    del expected
    return out


# -- one row -----------------------------------------------------------------------------------------


def run_sink_service(
    work: Path,
    dsn: str,
    kind: str,
    sink: dict[str, Any],
    expected: int,
    last_lsn: str,
    timeout: float,
    profile_path: Path | None = None,
) -> tuple[float, float, float, float]:
    """cdc with ``sink`` on the ``kind`` row's slot until its checkpoint covers ``last_lsn``:
    (seconds from launch, seconds from `running`, peak RSS MB, CPU seconds)."""
    port = free_port()
    name = PIPELINES[kind]
    pipeline = {
        "name": name,
        "source": {
            "type": "postgres",
            "dsn": dsn,
            "tables": [TABLE],
            "slot": SLOTS[kind],
            "publication": PUBLICATION,
            "heartbeat_s": 1,
        },
        "snapshot": {"mode": "never"},
        "sink": sink,
    }
    config = service_config(
        work, port, [pipeline], state=f"state-{kind}.sqlite", name=f"pipeline-{kind}.yaml"
    )
    with Service(config, work / f"cdc-{kind}.log", port, name) as svc, profile(
        svc.pid, profile_path
    ):
        t_running = svc.wait_running()

        def done() -> bool:
            s = svc.state()
            if s is None or "checkpoint" not in s:
                return False
            if s.get("state") == "failed":
                raise RuntimeError(f"pipeline failed: {s['last_error']}")
            ckpt = s["checkpoint"]["position"]
            return (
                s["events_total"] >= expected
                and ckpt is not None
                and lsn_int(ckpt) > lsn_int(last_lsn)
            )

        wait_until(done, timeout, f"the {kind} pipeline's checkpoint to cover every event", 0.1)
        t_done = time.monotonic()
        rss_mb = peak_rss_kb(svc.pid) / 1024
        cpu_s = cpu_seconds(svc.pid)
    return t_done - svc.t0, t_done - t_running, rss_mb, cpu_s


def run_broker(
    kind: str,
    work: Path,
    dsn: str,
    inserts: int,
    updates: int,
    last_lsn: str,
    timeout: float,
    profile_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> Result:
    """One broker row: a fresh server, the service until its checkpoint covers the last event,
    everything read back and checked (RuntimeError when an event is missing or doubled)."""
    expected = inserts + updates
    folder = work / kind
    folder.mkdir(parents=True, exist_ok=True)
    broker = Broker(kind, folder)
    broker.source_dsn = dsn
    try:
        broker.start()
        spy = profile_dir / f"{kind}.speedscope.json" if profile_dir else None
        s, running_s, rss, cpu = run_sink_service(
            folder, dsn, kind, broker.sink(), expected, last_lsn, timeout, spy
        )
        log(f"{kind} sink: {s:.2f}s ({running_s:.2f}s from running), RSS {rss:.0f} MB; reading back")
        back = broker.read_back(expected, timeout)
    finally:
        broker.stop()
    problem = back.problem(inserts, updates)
    if problem:
        raise RuntimeError(problem)
    return Result(kind, s, running_s, rss, cpu, back)


def prepare(pg: LocalPostgres) -> str:
    """The workload's database with the file pipeline's slot and each broker pipeline's."""
    return _harness.prepare(pg, (CDC_SLOT, *SLOTS.values()))


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pg", type=int, choices=(15, 18), default=15)
    ap.add_argument("--inserts", type=int, default=500_000)
    ap.add_argument("--updates", type=int, default=250_000)
    ap.add_argument("--rows-per-tx", type=int, default=100)
    ap.add_argument("--only", default=",".join(SINKS), help="sinks to run (nats,redis,rabbitmq,postgres)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed for each run")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    ap.add_argument("--profile", metavar="DIR", help="record each broker sink's service with py-spy")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = set(kinds) - set(SINKS)
    if unknown:
        ap.error(f"unknown sinks: {', '.join(sorted(unknown))}")

    bindir = find_debian_bindir(15) if args.pg == 15 else find_embedded_bindir()
    expected = args.inserts + args.updates
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-brokers-"))
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    settings = {"autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
    pg = LocalPostgres(bindir, settings=settings)
    results: list[Result] = []
    errors: list[str] = []
    try:
        pg.start()
        dsn = prepare(pg)
        endpos, gen_s = workload(dsn, args.inserts, args.updates, args.rows_per_tx)
        print(
            f"PostgreSQL {pg.version}; workload: {args.inserts:,} inserts then {args.updates:,} "
            f"updates, {args.rows_per_tx} rows per transaction, written in {gen_s:.1f}s; end "
            f"{endpos}",
            flush=True,
        )
        (work / "file").mkdir()
        file_s, file_running_s, file_rss, _, file_total, file_ops = run_file_service(
            work / "file", dsn, expected, args.timeout, None
        )
        if file_total != expected or file_ops["c"] != args.inserts:
            raise RuntimeError(f"the file sink holds {file_total} events ({dict(file_ops)})")
        last = last_line(work / "file" / "out")
        assert last is not None
        print(f"file sink: {file_s:.2f}s, RSS {file_rss:.0f} MB", flush=True)
        for kind in kinds:
            try:
                results.append(
                    run_broker(
                        kind,
                        work,
                        dsn,
                        args.inserts,
                        args.updates,
                        last["source"]["lsn"],
                        args.timeout,
                        profile_dir,
                        lambda m: print(m, flush=True),
                    )
                )
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{kind}: {exc}")
                print(f"ERROR: {kind}: {exc}", flush=True)
    finally:
        pg.cleanup()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    file_rate = expected / file_s
    print()
    print(
        f"{'sink':<48} {'events':>9} {'seconds':>8} {'events/s':>10} {'from running':>13} "
        f"{'÷ file':>7} {'peak RSS':>9}"
    )
    print(
        f"{'PostgreSQL → file':<48} {expected:>9,} {file_s:>8.2f} {file_rate:>10,.0f} "
        f"{expected / file_running_s:>11,.0f}/s {1:>7.2f} {file_rss:>6.0f} MB"
    )
    met = not errors
    for r in results:
        rate = expected / r.seconds
        ratio = rate / file_rate
        ok = ratio >= TARGET_RATIOS.get(r.kind, TARGET_RATIO) and r.rss_mb <= TARGET_RSS_MB
        met = met and ok
        print(
            f"{TITLES[r.kind]:<48} {expected:>9,} {r.seconds:>8.2f} {rate:>10,.0f} "
            f"{expected / r.seconds_from_running:>11,.0f}/s {ratio:>7.2f} {r.rss_mb:>6.0f} MB"
            f"{'' if ok else '  (target missed)'}"
        )
    print()
    for r in results:
        print(
            f"{r.kind}: read back {r.readback.total:,} events in {r.readback.seconds:.1f}s, each "
            f"once; service CPU {r.cpu_s:.1f}s"
        )
    print(
        f"target: each ≥ {TARGET_RATIO} of the file sink's rate (postgres ≥ "
        f"{TARGET_RATIOS['postgres']}), peak RSS ≤ {TARGET_RSS_MB:.0f} MB"
    )
    print(f"target met: {'yes' if met else 'no'}")
    if profile_dir:
        for r in results:
            path = profile_dir / f"{r.kind}.speedscope.json"
            if path.exists():
                summarize_profile(path)
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
