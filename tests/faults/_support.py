"""Shared pieces of the fault suite (tests/faults/test_crash_loop.py, test_outages.py).

- :class:`PgTables` / :class:`MyTables`: the two tables of a test (``orders``, ``customers``:
  ``id`` int key, ``v`` bigint, ``note`` text) on PostgreSQL or MariaDB, optionally pre-filled,
  read back as ``fold`` shows rows.
- :class:`ChangeWriter`: commits small transactions on both tables (inserts, updates, deletes)
  until stopped, and remembers every change the server acknowledged: each insert and update
  writes a fresh token into ``v``, so "this change reached the sink" is exact
  (``(table, id, v)`` in an event's ``after``; a delete: a ``d`` of that key). It rides out a
  database restart: a commit cut by the crash may or may not have happened, so it is not
  counted, and the live ids are read again.
- :class:`FileOut` / :class:`KafkaOut` / :class:`RabbitOut`: what a sink holds, as streams in
  delivery order (one per Kafka partition; one for the file sink and for a RabbitMQ queue),
  duplicates included.
- :func:`outcome`: the figures (events, duplicates, lost changes) and the checks every fault
  test ends with: folding the de-duplicated events gives exactly the tables, and the streamed
  events of each stream are strictly in commit order.
- small probes of the running service (``/healthz``, the checkpoint, the state file).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pymysql
import pytest

from cdc_local.postgres import LocalPostgres
from tests.helpers import (
    CdcService,
    create_database,
    dedupe,
    drop_database,
    fold,
    read_complete_events,
    read_events,
    wait_for,
)

TABLES = ("orders", "customers")
#: the writer's tokens start here (pre-filled rows have v = id)
FIRST_TOKEN = 1_000_000


# -- the tables ------------------------------------------------------------------------------------


class PgTables:
    """``public.orders`` and ``public.customers`` in a PostgreSQL database."""

    kind = "postgres"
    errors: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.names = [f"public.{t}" for t in TABLES]

    def connect(self) -> Any:
        return psycopg.connect(self.dsn, connect_timeout=5)

    def run(self, conn: Any, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []

    def create(self, prefill: int = 0) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for t in TABLES:
                conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v bigint NOT NULL, note text)")
                if prefill:
                    conn.execute(
                        f"INSERT INTO {t} SELECT g, g, 'pre-' || g FROM generate_series(1, %s) g",
                        (prefill,),
                    )

    def rows(self, name: str) -> dict[bytes, dict[str, Any]]:
        table = name.rpartition(".")[2]
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            got = conn.execute(f"SELECT id, v, note FROM {table}").fetchall()
        return _keyed(got)

    def source(self, **extra: Any) -> dict[str, Any]:
        return {"type": "postgres", "dsn": self.dsn, "tables": self.names, "heartbeat_s": 1, **extra}


class MyTables:
    """``orders`` and ``customers`` in a MariaDB database (``server`` a LocalMariaDB)."""

    kind = "mysql"
    errors: tuple[type[BaseException], ...] = (pymysql.err.OperationalError, pymysql.err.InterfaceError)

    def __init__(self, server: Any, database: str) -> None:
        self.server = server
        self.database = database
        self.names = [f"{database}.{t}" for t in TABLES]

    def connect(self) -> Any:
        return self.server.connect(self.database, autocommit=False, read_timeout=30, write_timeout=30)

    def run(self, conn: Any, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def create(self, prefill: int = 0) -> None:
        conn = self.server.connect(self.database)
        try:
            with conn.cursor() as cur:
                for t in TABLES:
                    cur.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY, v BIGINT NOT NULL, note VARCHAR(100))")
                    if prefill:
                        cur.executemany(
                            f"INSERT INTO {t} (id, v, note) VALUES (%s, %s, %s)",
                            [(i, i, f"pre-{i}") for i in range(1, prefill + 1)],
                        )
        finally:
            conn.close()

    def rows(self, name: str) -> dict[bytes, dict[str, Any]]:
        table = name.rpartition(".")[2]
        return _keyed(self.server.query(f"SELECT id, v, note FROM {table}", database=self.database))

    def source(self, **extra: Any) -> dict[str, Any]:
        return {"type": "mysql", "dsn": self.server.dsn(), "tables": self.names, "heartbeat_s": 1, **extra}


Tables = PgTables | MyTables


def _keyed(rows: list[tuple[Any, ...]]) -> dict[bytes, dict[str, Any]]:
    return {
        orjson.dumps({"id": r[0]}): {"id": r[0], "v": r[1], "note": r[2]}
        for r in rows
    }


# -- the writer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    table: str  # the event's schema name (public.orders, shop.orders)
    op: str  # c, u, d
    id: int
    v: int | None  # the token written (None for a delete)


class ChangeWriter(threading.Thread):
    """Commits small transactions on both tables until stopped (see the module docstring).
    ``committed`` holds every change of every transaction whose COMMIT the server acknowledged."""

    def __init__(self, tables: Tables, *, seed: int | str, pause: float = 0.01) -> None:
        super().__init__(name="change-writer", daemon=True)
        self.db = tables
        self.rng = random.Random(seed)
        self.pause = pause
        self.halt = threading.Event()
        self.committed: list[Change] = []
        self.transactions = 0
        self.errors = 0  # connection errors (the database went away)
        self.failure: BaseException | None = None
        self.token = FIRST_TOKEN
        self.next_id = dict.fromkeys(tables.names, 1)
        self.live: dict[str, list[int]] = {t: [] for t in tables.names}

    def _resync(self, conn: Any) -> None:
        for name in self.db.names:
            table = name.rpartition(".")[2]
            self.live[name] = [r[0] for r in self.db.run(conn, f"SELECT id FROM {table}")]
            top = max(self.live[name], default=0)
            self.next_id[name] = max(self.next_id[name], top + 1)
        conn.commit()

    def _one_tx(self, conn: Any) -> None:
        rng, run = self.rng, self.db.run
        pending: list[Change] = []
        for name in self.db.names:
            table = name.rpartition(".")[2]
            live = self.live[name]
            for _ in range(rng.randint(1, 2)):
                i = self.next_id[name]
                self.next_id[name] += 1
                self.token += 1
                run(conn, f"INSERT INTO {table} (id, v, note) VALUES (%s, %s, %s)", (i, self.token, f"new {self.token}"))
                pending.append(Change(name, "c", i, self.token))
            if live and rng.random() < 0.7:
                for i in rng.sample(live, min(len(live), rng.randint(1, 2))):
                    self.token += 1
                    run(conn, f"UPDATE {table} SET v = %s, note = %s WHERE id = %s", (self.token, f"upd {self.token}", i))
                    pending.append(Change(name, "u", i, self.token))
            if len(live) > 30 and rng.random() < 0.3:
                victim = rng.choice(live)
                run(conn, f"DELETE FROM {table} WHERE id = %s", (victim,))
                pending.append(Change(name, "d", victim, None))
        conn.commit()
        for ch in pending:
            if ch.op == "c":
                self.live[ch.table].append(ch.id)
            elif ch.op == "d":
                self.live[ch.table].remove(ch.id)
        self.committed.extend(pending)
        self.transactions += 1

    def run(self) -> None:
        conn: Any = None
        try:
            while not self.halt.is_set():
                try:
                    if conn is None:
                        conn = self.db.connect()
                        self._resync(conn)
                    self._one_tx(conn)
                except self.db.errors:
                    # the database went away: this transaction may or may not have committed,
                    # so it is not counted; the live ids are read again once it is back
                    self.errors += 1
                    if conn is not None:
                        try:
                            conn.close()
                        except Exception:  # noqa: BLE001 - a dead connection
                            pass
                    conn = None
                    self.halt.wait(0.1)
                    continue
                if self.pause:
                    self.halt.wait(self.pause)
        except BaseException as exc:  # reported by stop()
            self.failure = exc
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass

    def check(self) -> None:
        """Raise what made the writer die (call it while the test runs)."""
        if self.failure is not None:
            raise self.failure
        assert self.is_alive(), "the writer stopped"

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the writer did not stop"
        if self.failure is not None:
            raise self.failure


# -- what the sinks hold ---------------------------------------------------------------------------


class FileOut:
    """The file sink's folder: one stream."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def streams(self, complete_only: bool = True) -> list[list[dict[str, Any]]]:
        if not self.folder.exists():
            return [[]]
        return [read_complete_events(self.folder) if complete_only else read_events(self.folder)]


class KafkaOut:
    """The Kafka sink's data topics (a tests.kafka_harness.KafkaHarness): one stream per
    partition, in offset order; tombstones left out."""

    def __init__(self, harness: Any) -> None:
        self.harness = harness

    def streams(self, complete_only: bool = True) -> list[list[dict[str, Any]]]:
        out: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in self.harness.records():
            part = out.setdefault((r.topic, r.partition), [])
            if r.value is not None:
                part.append(orjson.loads(r.value))
        return list(out.values()) or [[]]


class ReceiverOut:
    """A webhook Receiver: the events of the requests it answered 2xx, in arrival order."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver

    def streams(self, complete_only: bool = True) -> list[list[dict[str, Any]]]:
        return [self.receiver.events()]


class StreamsOut:
    """A harness with ``streams()`` (tests.redis_harness.RedisHarness: one stream per Redis
    stream key; tests.nats_harness.NatsHarness: the JetStream stream), each in its order."""

    def __init__(self, harness: Any) -> None:
        self.harness = harness

    def streams(self, complete_only: bool = True) -> list[list[dict[str, Any]]]:
        return self.harness.streams() or [[]]


class RabbitOut:
    """The RabbitMQ sink's exchange, read through the ``#`` queue of a
    tests.rabbitmq_harness.RabbitHarness: one stream, in arrival order."""

    def __init__(self, harness: Any) -> None:
        self.harness = harness

    def streams(self, complete_only: bool = True) -> list[list[dict[str, Any]]]:
        return [self.harness.events()]


Out = FileOut | KafkaOut | ReceiverOut | StreamsOut | RabbitOut


# -- the checks ------------------------------------------------------------------------------------


def order_key(event: dict[str, Any]) -> tuple[Any, ...]:
    """A streamed event's place in the source's commit order, from its id
    (``pg:LSN:SEQ``, ``mysql:FILE:POS:SEQ``)."""
    parts = event["id"].split(":")
    if parts[0] == "pg":
        hi, _, lo = parts[1].partition("/")
        return ((int(hi, 16) << 32) | int(lo, 16), int(parts[2]))
    assert parts[0] == "mysql", event["id"]
    return (parts[1], int(parts[2]), int(parts[3]))


def folded(events: list[dict[str, Any]], names: list[str]) -> dict[str, dict[bytes, dict[str, Any]]]:
    unique = dedupe(events)
    return {n: fold(unique, n) for n in names}


def matches(out: Out, db: Tables, complete_only: bool = True) -> bool:
    events = [e for s in out.streams(complete_only) for e in s]
    got = folded(events, db.names)
    return all(got[n] == db.rows(n) for n in db.names)


def wait_converged(out: Out, db: Tables, timeout: float = 60, interval: float = 0.3) -> None:
    """Wait until folding what the sink holds gives exactly the tables (every change delivered)."""
    try:
        wait_for(lambda: matches(out, db), timeout, interval=interval, what="the sink to fold into the tables")
    except AssertionError:
        events = [e for s in out.streams() for e in s]
        got = folded(events, db.names)
        for n in db.names:
            want = db.rows(n)
            missing = [k for k in want if k not in got[n]][:5]
            extra = [k for k in got[n] if k not in want][:5]
            differ = [(got[n][k], want[k]) for k in want if k in got[n] and got[n][k] != want[k]][:3]
            print(f"{n}: {len(got[n])} folded vs {len(want)} rows; missing {missing} extra {extra} differ {differ}")
        raise


@dataclass
class Outcome:
    events: int  # delivered, duplicates included
    unique: int
    duplicates: int  # deliveries of an id already delivered (events - unique)
    duplicate_ids: int  # ids delivered more than once
    lost: int  # acknowledged changes missing from the sink
    missing: list[Change]
    changes: int  # acknowledged changes made by the writer
    snapshot_rows: int  # distinct r events


def outcome(out: Out, db: Tables, writer: ChangeWriter) -> Outcome:
    """Read what the sink holds (the service stopped) and check it:

    - every stream, de-duplicated by id, holds its streamed events strictly in commit order;
    - folding everything de-duplicated gives exactly the tables;
    - every change the writer had acknowledged is there (``lost`` counts those missing; the
      caller records the figure, then asserts it is 0).
    """
    streams = out.streams(complete_only=False)
    events = [e for s in streams for e in s]
    for s in streams:
        keys = [order_key(e) for e in dedupe(s) if not e["source"].get("snapshot")]
        for a, b in zip(keys, keys[1:], strict=False):
            assert a < b, f"streamed events out of commit order: {a} then {b}"
    unique = dedupe(events)
    counts: dict[str, int] = {}
    for e in events:
        counts[e["id"]] = counts.get(e["id"], 0) + 1
    seen = {
        (e["schema"]["name"], e["after"]["id"], e["after"]["v"])
        for e in unique
        if e["op"] in ("c", "u", "r") and e["after"]
    }
    deleted = {(e["schema"]["name"], e["key"]["id"]) for e in unique if e["op"] == "d"}
    missing = [
        ch
        for ch in writer.committed
        if ((ch.table, ch.id) not in deleted if ch.op == "d" else (ch.table, ch.id, ch.v) not in seen)
    ]
    got = folded(events, db.names)
    for n in db.names:
        want = db.rows(n)
        assert got[n] == want, (
            f"{n}: folding the sink gives {len(got[n])} rows, the table has {len(want)}; "
            f"missing {[k for k in want if k not in got[n]][:5]}, extra {[k for k in got[n] if k not in want][:5]}"
        )
    return Outcome(
        events=len(events),
        unique=len(unique),
        duplicates=len(events) - len(unique),
        duplicate_ids=sum(1 for n in counts.values() if n > 1),
        lost=len(missing),
        missing=missing[:10],
        changes=len(writer.committed),
        snapshot_rows=sum(1 for e in unique if e["op"] == "r"),
    )


# -- the running service ---------------------------------------------------------------------------


def health(svc: CdcService) -> int:
    status, _ = svc.get("/healthz")
    return status


def checkpoint(svc: CdcService, name: str) -> str | None:
    position: str | None = svc.pipeline(name)["checkpoint"]["position"]
    return position


def saved_checkpoint(state: Path, name: str) -> str | None:
    """The checkpoint in the state file (read while no service runs)."""
    conn = sqlite3.connect(state, timeout=10)
    try:
        row = conn.execute("SELECT position FROM checkpoints WHERE pipeline = ?", (name,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def alive(svc: CdcService) -> None:
    if svc.proc.poll() is not None:
        raise AssertionError(f"cdc exited with {svc.proc.returncode}:\n{svc.logs()[-4000:]}")


def wait_new_checkpoint(svc: CdcService, name: str, old: str | None, timeout: float = 30) -> str:
    """Wait until the service reports a checkpoint other than ``old``."""

    def moved() -> str | None:
        alive(svc)
        position = checkpoint(svc, name)
        return position if position is not None and position != old else None

    try:
        return wait_for(moved, timeout, interval=0.02, what=f"a checkpoint past {old}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- cdc log ---\n{svc.logs()[-4000:]}") from None


def wait_health(svc: CdcService, status: int, timeout: float, what: str = "") -> float:
    """Wait until /healthz answers ``status``; the moment (time.monotonic()) it did."""

    def check() -> float | None:
        alive(svc)
        return time.monotonic() if health(svc) == status else None

    try:
        return wait_for(check, timeout, interval=0.02, what=what or f"/healthz {status}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; pipelines: {svc.get('/pipelines')[1]}\n--- cdc log ---\n{svc.logs()[-3000:]}") from None


@dataclass
class Recovery:
    healthy_s: float  # fault end -> /healthz 200
    delivered_s: float  # fault end -> the first delivery after it

    @property
    def worst(self) -> float:
        return max(self.healthy_s, self.delivered_s)


def wait_recovered(
    svc: CdcService,
    name: str,
    since: float,
    *,
    delivered: Callable[[], float | None] | None = None,
    timeout: float = 60,
) -> Recovery:
    """After a fault ended at ``since`` (time.monotonic()): wait for /healthz 200 and for the
    first delivery after it. ``delivered`` returns the moment of that delivery once it
    happened; by default it is the first new checkpoint (saved only after the sink
    acknowledged the events before it)."""
    before = checkpoint(svc, name)
    first_ckpt: list[float] = []

    def new_checkpoint() -> float | None:
        if not first_ckpt and checkpoint(svc, name) != before:
            first_ckpt.append(time.monotonic())
        return first_ckpt[0] if first_ckpt else None

    probe = delivered or new_checkpoint
    healthy: list[float] = []
    got: list[float] = []

    def done() -> bool:
        alive(svc)
        if not got:
            at = probe()
            if at is not None:
                got.append(at)
        if not healthy and health(svc) == 200:
            healthy.append(time.monotonic())
        return bool(got and healthy)

    try:
        wait_for(done, timeout, interval=0.02, what="/healthz 200 and a delivery after the fault")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; pipelines: {svc.get('/pipelines')[1]}\n--- cdc log ---\n{svc.logs()[-3000:]}") from None
    return Recovery(healthy[0] - since, max(0.0, got[0] - since))


def stop_cleanly(svc: CdcService) -> None:
    code = svc.stop(timeout=20)
    assert code == 0, f"cdc exited with {code}:\n{svc.logs()[-4000:]}"


# -- fixtures shared by the fault tests (imported by name into their modules) ----------------------


@pytest.fixture
def pg15db(pg15: LocalPostgres) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL 15; dropped afterwards with its slots."""
    name, dsn = create_database(pg15)
    try:
        yield dsn
    finally:
        drop_database(pg15, name)
