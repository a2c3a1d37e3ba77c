"""Several instances sharing a PostgreSQL state database (``state.dsn``): leases, standby,
failover after ``kill -9``, and fencing of a paused instance.

Real PostgreSQL 15 for the state and the sources; real ``cdc run`` processes on one pipeline
file (the API port comes from ``${CDC_API_PORT}``, so each process listens on its own). Lease
timings are shortened through ``CDC_LEASE_RENEW_S`` / ``CDC_LEASE_EXPIRE_S`` (0.5 s / 3 s
instead of 5 s / 30 s) to keep the tests fast; the logic is the same.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml

from sources.postgres.server import LocalPostgres, free_port
from tests.helpers import (
    CdcService,
    cdc_env,
    create_database,
    dedupe,
    drop_database,
    execute,
    fold,
    metric_value,
    pg_pipeline,
    query,
    read_events,
    run_cli,
    table_rows,
    wait_for,
    write_config,
)

RENEW_S, EXPIRE_S = 0.5, 3.0
# A paused instance keeps its replication connection open; the server ends its walsender
# after wal_sender_timeout (60 s by default), which bounds failover after a pause (the docs
# say so). A short one here keeps the SIGSTOP test fast.
SOURCE_OPTIONS = "?options=-c%20wal_sender_timeout%3D2s"


@pytest.fixture
def dbs(pg15: LocalPostgres) -> Iterator[tuple[str, str, str]]:
    """(state DSN, source A DSN, source B DSN): three fresh databases."""
    made = [create_database(pg15) for _ in range(3)]
    try:
        yield made[0][1], made[1][1], made[2][1]
    finally:
        for name, _ in made:
            drop_database(pg15, name)


def _config(tmp_path: Path, state_dsn: str, sources: dict[str, str]) -> Path:
    pipelines = [
        pg_pipeline(name, dsn + SOURCE_OPTIONS, ["public.t"], tmp_path / f"out_{name}")
        for name, dsn in sources.items()
    ]
    cfg = write_config(tmp_path, pipelines, api_port=0)
    doc = yaml.safe_load(cfg.read_text())
    doc["state"] = {"dsn": state_dsn}
    doc["api"]["listen"] = "127.0.0.1:${CDC_API_PORT}"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


class Instance(CdcService):
    def __init__(self, config: Path) -> None:
        port = free_port()
        env = cdc_env()
        env.update(CDC_API_PORT=str(port), CDC_LEASE_RENEW_S=str(RENEW_S), CDC_LEASE_EXPIRE_S=str(EXPIRE_S))
        self.env = env
        super().__init__(config, env=env)
        self.port = port

    def instance_id(self) -> str:
        def find() -> str | None:
            for r in self.log_events():
                if r.get("event") == "service_started":
                    return str(r["instance"])
            return None

        return wait_for(find, 20, what="service_started")  # type: ignore[no-any-return]

    def state(self, name: str) -> str | None:
        try:
            return str(self.pipeline(name)["state"])
        except (OSError, AssertionError):
            return None


def _active(instances: list[Instance], name: str) -> list[Instance]:
    return [i for i in instances if i.proc.poll() is None and i.state(name) == "running"]


def _settled(instances: list[Instance], names: list[str]) -> dict[str, Instance] | None:
    """Each pipeline running in exactly one live instance, standby in the others."""
    out = {}
    for name in names:
        states = [i.state(name) for i in instances if i.proc.poll() is None]
        if states.count("running") != 1 or states.count("standby") != len(states) - 1:
            return None
        out[name] = _active(instances, name)[0]
    return out


class Writer:
    """Inserts and updates rows of ``t`` in a loop until stopped."""

    def __init__(self, dsn: str, start: int = 0) -> None:
        self.dsn = dsn
        self.start = start
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self.count = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                i = self.start
                while not self._stop.is_set():
                    i += 1
                    conn.execute("INSERT INTO t (id, v) VALUES (%s, 0)", (i,))
                    if i % 3 == 0:
                        conn.execute("UPDATE t SET v = v + 1 WHERE id = %s", (self.start + (i - self.start) // 2,))
                    self.count = i - self.start
                    time.sleep(0.003)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, self.errors

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


def _converged(folder: Path, dsn: str) -> bool:
    return fold(dedupe(read_events(folder)), "public.t") == table_rows(dsn, "t", ["id"])


def _checkpoint_owner(state_dsn: str, name: str) -> tuple[str, int, str]:
    rows = query(state_dsn, "SELECT holder, token, position FROM cdc_checkpoints WHERE pipeline = %s", (name,))
    assert rows, f"no checkpoint for {name}"
    return rows[0]  # type: ignore[return-value]


def test_three_instances_share_pipelines_and_fail_over_after_kill(dbs: tuple[str, str, str], tmp_path: Path) -> None:
    state_dsn, dsn_a, dsn_b = dbs
    for dsn in (dsn_a, dsn_b):
        execute(dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
    cfg = _config(tmp_path, state_dsn, {"a": dsn_a, "b": dsn_b})
    instances = [Instance(cfg) for _ in range(3)]
    try:
        active = wait_for(lambda: _settled(instances, ["a", "b"]), 30, 0.2, "one active instance per pipeline")
        # spread: with three idle instances starting together, not every lease on one instance
        assert active["a"] is not active["b"], "both pipelines went to one instance"
        standby = next(i for i in instances if i is not active["a"])
        # a standby is healthy and says so everywhere
        status, body = standby.get("/healthz")
        assert status == 200, body
        metrics = standby.get("/metrics")[1]
        assert metric_value(metrics, "cdc_pipeline_state", pipeline="a", state="standby") == 1.0
        proc = run_cli("status", str(cfg), env=standby.env)
        assert proc.returncode == 0 and "a: standby" in proc.stdout, proc.stdout + proc.stderr

        with Writer(dsn_a) as wa, Writer(dsn_b) as wb:
            wait_for(lambda: len(read_events(tmp_path / "out_a")) > 200, 30, what="events of a")
            victim = active["a"]
            _, token_before, _ = _checkpoint_owner(state_dsn, "a")
            victim.kill()  # kill -9: no lease released, the walsender's connection drops
            killed_at = time.monotonic()
            survivors = [i for i in instances if i is not victim]
            wait_for(lambda: len(_active(survivors, "a")) == 1, 35, 0.1, "a taken over")
            took = time.monotonic() - killed_at
            assert took < EXPIRE_S + 10, took
            new_holder = _active(survivors, "a")[0]
            wait_for(lambda: _checkpoint_owner(state_dsn, "a")[0] == new_holder.instance_id(), 20, 0.1, "checkpoint by the new holder")
            assert _checkpoint_owner(state_dsn, "a")[1] > token_before
            n = wa.count
            wait_for(lambda: wa.count > n + 200, 30, what="more writes")
            wa.stop()
            wb.stop()
        wait_for(lambda: _converged(tmp_path / "out_a", dsn_a), 30, 0.2, "a: fold == source")
        wait_for(lambda: _converged(tmp_path / "out_b", dsn_b), 30, 0.2, "b: fold == source")
        assert len(_settled(survivors, ["a", "b"]) or {}) == 2
        for i in survivors:
            assert i.stop() == 0, i.logs()[-3000:]
    finally:
        for i in instances:
            i.kill()


def test_paused_instance_is_fenced_and_goes_standby(dbs: tuple[str, str, str], tmp_path: Path) -> None:
    state_dsn, dsn_a, _ = dbs
    execute(dsn_a, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
    cfg = _config(tmp_path, state_dsn, {"a": dsn_a})
    instances = [Instance(cfg) for _ in range(2)]
    try:
        active = wait_for(lambda: _settled(instances, ["a"]), 30, 0.2, "one active instance")["a"]
        other = next(i for i in instances if i is not active)
        execute(dsn_a, "INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g")
        wait_for(lambda: _converged(tmp_path / "out_a", dsn_a), 20, 0.1, "first rows")
        paused_id = active.instance_id()
        holder, paused_token, _ = _checkpoint_owner(state_dsn, "a")
        assert holder == paused_id

        with Writer(dsn_a, start=1000) as writer:
            wait_for(lambda: writer.count > 50, 10, what="writes")
            active.proc.send_signal(signal.SIGSTOP)
            try:
                # the other instance takes the lease after the expiry and streams
                other.wait_state("a", "running", timeout=EXPIRE_S + 30)
                wait_for(
                    lambda: _checkpoint_owner(state_dsn, "a")[0] == other.instance_id(), 20, 0.1, "checkpoint by the new holder"
                )
                n = writer.count
                wait_for(lambda: writer.count > n + 100, 10, what="more writes")
            finally:
                active.proc.send_signal(signal.SIGCONT)
            # the paused instance wakes up fenced: it goes standby and writes no checkpoint
            active.wait_state("a", "standby", timeout=15)
            writer.stop()
        wait_for(lambda: _converged(tmp_path / "out_a", dsn_a), 30, 0.2, "fold == source")
        holder, token, _ = _checkpoint_owner(state_dsn, "a")
        assert holder == other.instance_id() and token > paused_token
        records = active.log_events()
        lost = [r for r in records if r.get("event") in ("pipeline_standby", "lease_lost", "lease_expired") and r.get("pipeline") == "a"]
        assert lost, active.logs()[-3000:]
        # no checkpoint was ever saved with the paused instance's old token after the takeover
        leases = query(state_dsn, "SELECT holder, token FROM cdc_leases WHERE pipeline = 'a'")
        assert leases == [(other.instance_id(), token)]
        assert orjson.dumps(active.pipeline("a")["state"]) == b'"standby"'
        for i in instances:
            assert i.stop() == 0, i.logs()[-3000:]
    finally:
        for i in instances:
            i.proc.send_signal(signal.SIGCONT) if i.proc.poll() is None else None
            i.kill()
