"""`kill -9` of `cdc run` with the postgres sink, again and again, while a writer keeps
inserting: the read model holds every change exactly once.

Source: a PostgreSQL 15 database with an insert-only keyless table ``public.events`` (a
duplicate there would be a row too many: nothing absorbs it) and a keyed ``public.orders``
that the writer upserts. Target: a database on the embedded PostgreSQL 18. The service is
killed with SIGKILL :data:`KILLS` times, each after a seeded random 0.3-1.5 s of running past
its recovery (its first new checkpoint), and restarted at once. After the last restart the
writer stops; once the target has caught up the service is stopped and:

- the target's ``events`` has exactly as many rows as the source's (and as the writer's
  acknowledged inserts): no change lost, none applied twice;
- the target's ``orders`` equals the source's.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_local.postgres import LocalPostgres
from tests.faults._support import alive, saved_checkpoint, stop_cleanly, wait_new_checkpoint
from tests.helpers import CdcService, wait_for, write_config

KILLS = 10
NAME = "model"


@pytest.fixture
def target18(pg18: LocalPostgres) -> Iterator[str]:
    from tests.conftest import _drop_database

    name = f"m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg18.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield pg18.dsn(name)
    finally:
        _drop_database(pg18, name)


class Inserter(threading.Thread):
    """Small transactions until stopped: 1-20 rows into ``events``, one upsert of ``orders``.
    ``rows`` counts the inserts of transactions whose COMMIT the server acknowledged."""

    def __init__(self, dsn: str, seed: str) -> None:
        super().__init__(name="inserter", daemon=True)
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.rows = 0
        self.transactions = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                while not self.halt.is_set():
                    n = self.rng.randint(1, 20)
                    conn.execute(
                        "INSERT INTO events SELECT %s, 'row ' || g FROM generate_series(1, %s) g",
                        (self.transactions, n),
                    )
                    conn.execute(
                        "INSERT INTO orders VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET "
                        "v = EXCLUDED.v",
                        (self.rng.randint(1, 200), self.transactions),
                    )
                    conn.commit()
                    self.rows += n
                    self.transactions += 1
                    self.halt.wait(0.005)
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        if self.failure is not None:
            raise self.failure


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _orders(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute("SELECT id, v FROM orders ORDER BY id").fetchall()


def test_postgres_sink_kill9_loop_applies_every_change_once(
    pg15db: str, target18: str, tmp_path: Path, free_port: int, ledger: Any
) -> None:
    with psycopg.connect(pg15db, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (tx int, note text)")
        conn.execute("ALTER TABLE events REPLICA IDENTITY FULL")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, v bigint)")
    pipeline = {
        "name": NAME,
        "source": {
            "type": "postgres",
            "dsn": pg15db,
            "tables": ["public.events", "public.orders"],
            "heartbeat_s": 1,
        },
        "snapshot": {"mode": "never"},
        "sink": {"type": "postgres", "dsn": target18},
    }
    config = write_config(tmp_path, [pipeline], api_port=free_port)
    state = tmp_path / "state.sqlite"
    rng = random.Random("pg-sink-crash-loop")
    writer = Inserter(pg15db, "pg-sink-writer")
    recoveries: list[float] = []
    skipped = 0
    t_start = time.monotonic()
    svc = CdcService(config)
    try:
        svc.wait_state(NAME, "running", timeout=60)
        writer.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.5))
            alive(svc)
            assert writer.failure is None, writer.failure
            svc.kill()
            skipped += svc.logs().count("skips the events the target already holds")
            saved = saved_checkpoint(state, NAME)
            t0 = time.monotonic()
            svc = CdcService(config)
            wait_new_checkpoint(svc, NAME, saved, timeout=45)
            recoveries.append(time.monotonic() - t0)
        writer.stop()
        wait_for(
            lambda: (
                _count(target18, "events") >= _count(pg15db, "events")
                and _orders(target18) == _orders(pg15db)
            ),
            90,
            what="the target caught up",
        )
        stop_cleanly(svc)
        skipped += svc.logs().count("skips the events the target already holds")
    finally:
        writer.halt.set()
        svc.kill()
    source_rows, target_rows = _count(pg15db, "events"), _count(target18, "events")
    elapsed = time.monotonic() - t_start
    print(
        f"postgres sink kill -9 loop: {KILLS} kills, {writer.transactions} transactions, "
        f"{writer.rows} rows; target {target_rows}, source {source_rows}; restarts that skipped "
        f"what the target held: {skipped}; recovery max {max(recoveries):.2f} s; {elapsed:.1f} s"
    )
    ledger.record(
        "PostgreSQL 15 kill -9 loop, postgres sink (PostgreSQL 18 target)",
        injected=KILLS,
        lost=max(0, source_rows - target_rows),
        duplicates=max(0, target_rows - source_rows),
        recover_s=max(recoveries),
        note=(
            f"kill -9 after a seeded random 0.3-1.5 s of running; an insert-only keyless table "
            f"({writer.rows:,} rows in {writer.transactions:,} transactions) and a keyed one; "
            f"{skipped} restarts skipped a batch the target had committed after the checkpoint "
            f"(mean recovery {statistics.mean(recoveries):.2f} s)"
        ),
    )
    assert source_rows == writer.rows
    assert target_rows == source_rows, f"target {target_rows} rows, source {source_rows}"
    assert _orders(target18) == _orders(pg15db)
