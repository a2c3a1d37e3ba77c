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

from cdc_local.postgres import LocalPostgres, find_debian_bindir, free_port
from tests.helpers import (
    CdcService,
    cdc_env,
    create_database,
    dedupe,
    drop_database,
    execute,
    fold,
    lsn_int,
    metric_value,
    pg_pipeline,
    query,
    read_events,
    run_cli,
    slot_row,
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


def test_snapshot_requested_through_a_standby_runs_in_the_active_instance(
    dbs: tuple[str, str, str], tmp_path: Path
) -> None:
    state_dsn, dsn_a, _ = dbs
    execute(dsn_a, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)",
            "INSERT INTO t SELECT g, g FROM generate_series(1, 3000) g")
    cfg = _config(tmp_path, state_dsn, {"a": dsn_a})
    instances = [Instance(cfg) for _ in range(2)]
    try:
        active = wait_for(lambda: _settled(instances, ["a"]), 30, 0.2, "one active instance")["a"]
        standby = next(i for i in instances if i is not active)
        status, doc = standby.get("/pipelines/a/snapshots", method="POST", body={"tables": ["public.t"]})
        assert status == 202, doc
        sid = doc["id"]
        # the record is in the shared state database: both instances see it, the active one runs it
        wait_for(lambda: standby.get(f"/pipelines/a/snapshots/{sid}")[1]["state"] == "done", 30, 0.2, "snapshot done")
        assert active.get(f"/pipelines/a/snapshots/{sid}")[1]["rows_done"] == 3000
        with Writer(dsn_a, start=10_000):
            wait_for(lambda: len(read_events(tmp_path / "out_a")) > 3100, 30, what="the stream after the snapshot")
        wait_for(lambda: _converged(tmp_path / "out_a", dsn_a), 30, 0.2, "fold == table")
        reads = [e for e in read_events(tmp_path / "out_a") if e["op"] == "r"]
        assert len(reads) == 3000 and {e["source"]["snapshot_id"] for e in reads} == {sid}
    finally:
        for i in instances:
            i.stop()


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


# -- the state database unreachable ---------------------------------------------------------------

#: a longer expiry for the outage test, so an outage can be held well inside it (and past it)
OUTAGE_RENEW_S, OUTAGE_EXPIRE_S = 0.5, 8.0


class _OutageInstance(Instance):
    """An :class:`Instance` with the outage test's lease timings."""

    def __init__(self, config: Path) -> None:
        port = free_port()
        env = cdc_env()
        env.update(
            CDC_API_PORT=str(port),
            CDC_LEASE_RENEW_S=str(OUTAGE_RENEW_S),
            CDC_LEASE_EXPIRE_S=str(OUTAGE_EXPIRE_S),
        )
        self.env = env
        CdcService.__init__(self, config, env=env)
        self.port = port


@pytest.fixture
def state_server() -> Iterator[LocalPostgres]:
    """A PostgreSQL 15 of its own for the state, on a fixed port: it can be stopped and started
    again where the instances look for it."""
    server = LocalPostgres(find_debian_bindir(15), port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def source_dsn(pg15: LocalPostgres) -> Iterator[str]:
    name, dsn = create_database(pg15)
    try:
        yield dsn
    finally:
        drop_database(pg15, name)


def _lease_row(state_dsn: str, name: str) -> tuple[str, int]:
    rows = query(state_dsn, "SELECT holder, token FROM cdc_leases WHERE pipeline = %s", (name,))
    assert rows, f"no lease for {name}"
    return rows[0]  # type: ignore[return-value]


def _slot_flush(dsn: str) -> int:
    row = slot_row(dsn, "cdc_a")
    assert row is not None and row["confirmed_flush_lsn"], row
    return lsn_int(row["confirmed_flush_lsn"])


def _hold_state_outage(
    server: LocalPostgres, instances: list[Instance], active: Instance, source: str, hold_s: float
) -> tuple[str, list[str], list[Any]]:
    """Stop the state database for ``hold_s`` seconds and watch the instances meanwhile: the
    active one turns ``retrying``, saves no checkpoint and acknowledges nothing to the source;
    every instance stays live (/livez 200) and not ready (/healthz 503). Returns (the frozen
    checkpoint, the active instance's states seen, the last /healthz body of each instance)."""
    server.stop("fast")
    down_at = time.monotonic()
    try:
        # the next checkpoint cannot be saved: the pipeline retries from its last checkpoint
        active.wait_state("a", "retrying", timeout=10)
        frozen = active.pipeline("a")["checkpoint"]["position"]
        slot = _slot_flush(source)
        assert slot <= lsn_int(frozen), "the slot was confirmed past the saved checkpoint"
        # the standby notices at its next renewal
        wait_for(lambda: all(i.get("/healthz")[0] == 503 for i in instances), 5, 0.1, "/healthz 503")
        states: list[str] = []
        health: list[Any] = []
        while time.monotonic() - down_at < hold_s:  # holding the outage for the chosen time
            health = []
            for i in instances:
                assert i.get("/livez")[0] == 200
                code, body = i.get("/healthz")
                assert code == 503, body
                health.append(body)
            doc = active.pipeline("a")
            states.append(doc["state"])
            assert doc["checkpoint"]["position"] == frozen, "a checkpoint advanced while the state database was down"
            assert _slot_flush(source) == slot, "the source was acknowledged while the state database was down"
            time.sleep(0.2)
    finally:
        server.start()
    return frozen, states, health


def test_state_database_outage_holds_checkpoints_and_resumes(
    state_server: LocalPostgres, source_dsn: str, tmp_path: Path
) -> None:
    state_dsn = state_server.dsn()
    execute(source_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
    cfg = _config(tmp_path, state_dsn, {"a": source_dsn})
    instances: list[Instance] = [_OutageInstance(cfg) for _ in range(2)]
    out = tmp_path / "out_a"
    try:
        active = wait_for(lambda: _settled(instances, ["a"]), 30, 0.2, "one active instance")["a"]
        active_id = active.instance_id()
        with Writer(source_dsn) as writer:
            wait_for(lambda: len(read_events(out)) > 100, 20, what="events of a")
            wait_for(lambda: _checkpoint_owner(state_dsn, "a")[0] == active_id, 10, 0.1, "checkpoint by the holder")

            # 1. an outage shorter than the lease expiry: the lease is kept (renewed again on
            # return, same token), checkpoints stop meanwhile and resume afterwards
            lease_before = _lease_row(state_dsn, "a")
            frozen, states, health = _hold_state_outage(state_server, instances, active, source_dsn, 3.0)
            assert set(states) == {"retrying"}, states
            assert {"pipeline": "a", "state": "retrying", "error": "state_unreachable"} in health[instances.index(active)]["failing"]
            active.wait_state("a", "running", timeout=20)
            assert _lease_row(state_dsn, "a") == lease_before, "the lease was not kept through a short outage"
            wait_for(
                lambda: lsn_int(_checkpoint_owner(state_dsn, "a")[2]) > lsn_int(frozen)
                and _checkpoint_owner(state_dsn, "a")[0] == active_id,
                15,
                0.1,
                "checkpoints advancing after the short outage",
            )
            assert _settled(instances, ["a"]) is not None
            for i in instances:
                assert i.get("/healthz")[0] == 200

            # 2. an outage longer than the expiry: the instances give the pipeline up (standby)
            # and one of them takes it again when the database returns, from the checkpoint
            _, token_before = _lease_row(state_dsn, "a")
            frozen, states, health = _hold_state_outage(
                state_server, instances, active, source_dsn, OUTAGE_EXPIRE_S + 3.0
            )
            assert states[0] == "retrying" and states[-1] == "standby", states
            # past the expiry every instance has given the pipeline up, and says why it is not ready
            for body in health:
                assert body["failing"] == [{"pipeline": "a", "state": "standby", "error": "state_unreachable"}], body
            holder = wait_for(lambda: _settled(instances, ["a"]), 20, 0.2, "a running again")["a"]
            holder_id = holder.instance_id()
            assert _lease_row(state_dsn, "a")[1] > token_before
            wait_for(
                lambda: lsn_int(_checkpoint_owner(state_dsn, "a")[2]) > lsn_int(frozen)
                and _checkpoint_owner(state_dsn, "a")[0] == holder_id,
                15,
                0.1,
                "checkpoints advancing after the long outage",
            )
            n = writer.count
            wait_for(lambda: writer.count > n + 100, 10, what="more writes")
            writer.stop()
        wait_for(lambda: _converged(out, source_dsn), 30, 0.2, "fold == source")
        for i in instances:
            code, body = i.get("/healthz")
            assert code == 200, (body, i.pipeline("a"))
        for i in instances:
            assert i.stop() == 0, i.logs()[-3000:]
    finally:
        for i in instances:
            i.kill()
