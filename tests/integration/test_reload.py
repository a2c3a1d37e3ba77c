"""Changing a running service (contract section 12): reload through ``cdc reload``, SIGHUP and
``POST /reload``; pause and resume through ``cdc pause``/``cdc resume``.

Real PostgreSQL 15 (and MariaDB for the binlog filter), real ``cdc run`` processes, the file
sink. A pipeline that a reload must not touch is watched through its log (one start only),
its retries, and its events: every row a writer inserted, once, in order.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cdc_local.postgres import LocalPostgres
from tests.helpers import (
    CdcService,
    create_database,
    drop_database,
    execute,
    fold,
    log_records,
    pg_pipeline,
    read_complete_events,
    run_cli,
    slot_row,
    table_rows,
    wait_for,
    wait_snapshot_done,
    write_config,
)
from tests.integration.test_instances import Instance, _config, _settled
from tests.integration.test_mysql_source import my_pipeline, table_state
from tests.mariadb_fixtures import MyDB


class _Inserter(threading.Thread):
    """Inserts rows n = 1, 2, 3, ... into each of ``tables`` (one transaction per round)."""

    def __init__(self, dsn: str, tables: list[str]) -> None:
        super().__init__(daemon=True)
        self.dsn, self.tables = dsn, tables
        self.stop = threading.Event()
        self.n = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=False) as conn:
                while not self.stop.is_set():
                    self.n += 1
                    for t in self.tables:
                        conn.execute(f"INSERT INTO {t} (n) VALUES (%s)", (self.n,))
                    conn.commit()
                    self.stop.wait(0.01)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> int:
        self.stop.set()
        self.join(10)
        assert self.error is None, self.error
        return self.n


def _starts(svc: CdcService, pipeline: str) -> int:
    """How many times the pipeline opened its source (a restart opens it again)."""
    return sum(
        1
        for r in log_records(svc.logs())
        if r.get("pipeline") == pipeline and r.get("event") in ("started_fresh", "resuming")
    )


def _ns(out: Path, table: str) -> list[int]:
    """The ``n`` of the table's insert events, in delivery order."""
    return [e["after"]["n"] for e in read_complete_events(out) if e["schema"]["name"] == table and e["op"] == "c"]


def _reconfigure(cfg: Path, pipelines: list[dict[str, Any]]) -> None:
    doc = yaml.safe_load(cfg.read_text())
    doc["pipelines"] = pipelines
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))


def _same(out: Path, dsn: str, table: str, timeout: float = 60) -> None:
    def check() -> bool:
        return fold(read_complete_events(out), table) == table_rows(dsn, table, ["id"])

    wait_for(check, timeout, interval=0.3, what=f"the fold of {table} == the table")


def _tables(dsn: str, *names: str) -> None:
    execute(dsn, *(f"CREATE TABLE {t} (id serial PRIMARY KEY, n int NOT NULL)" for t in names))


# -- reload -------------------------------------------------------------------------------------


def test_reload_starts_new_stops_removed_and_restarts_only_changed_pipelines(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    _tables(pgdb, "ta", "tb", "tb2", "tc", "td")
    out = {name: tmp_path / f"out_{name}" for name in "abcd"}
    a = pg_pipeline("a", pgdb, ["public.ta"], out["a"])
    b = pg_pipeline("b", pgdb, ["public.tb", "public.tb2"], out["b"])
    c = pg_pipeline("c", pgdb, ["public.tc"], out["c"])
    d = pg_pipeline("d", pgdb, ["public.td"], out["d"])
    cfg = write_config(tmp_path, [a, b, c], api_port=free_port)
    writer = _Inserter(pgdb, ["ta", "tb", "td"])
    with CdcService(cfg) as svc:
        for name in "abc":
            svc.wait_state(name, "running")
        writer.start()
        wait_for(lambda: len(_ns(out["a"], "public.ta")) > 20, what="a streams")
        # b loses a table, c goes, d comes; a stays as it is
        _reconfigure(cfg, [a, pg_pipeline("b", pgdb, ["public.tb"], out["b"]), d])
        done = run_cli("reload", str(cfg))
        assert done.returncode == 0, done.stderr
        assert "pipelines added: d" in done.stdout, done.stdout
        assert "pipelines removed" in done.stdout and ": c" in done.stdout, done.stdout
        assert "pipelines restarted: b" in done.stdout, done.stdout
        assert "b: tables removed: public.tb2" in done.stdout, done.stdout
        svc.wait_state("d", "running")
        svc.wait_state("b", "running")
        assert svc.get("/pipelines/c")[0] == 404
        # the removed pipeline's slot stays until `cdc drop`
        assert slot_row(pgdb, "cdc_c") is not None
        execute(pgdb, "INSERT INTO tb2 (n) VALUES (-1)", "INSERT INTO tc (n) VALUES (-1)")
        wait_for(lambda: len(_ns(out["d"], "public.td")) > 20, what="d streams")
        n = writer.finish()
        wait_for(lambda: _ns(out["a"], "public.ta")[-1:] == [n], what="a caught up")
        wait_for(lambda: _ns(out["b"], "public.tb")[-1:] == [n], what="b caught up")
        # a never stopped: one start, no retry, every row once and in order
        assert _starts(svc, "a") == 1
        assert svc.pipeline("a")["retries"] == 0
        assert _ns(out["a"], "public.ta") == list(range(1, n + 1))
        # b restarted alone from its checkpoint: nothing lost (a replay may repeat a few)
        assert _starts(svc, "b") == 2
        assert sorted(set(_ns(out["b"], "public.tb"))) == list(range(1, n + 1))
        # a removed table produces no more events; a removed pipeline neither
        assert -1 not in _ns(out["b"], "public.tb2")
        assert -1 not in _ns(out["c"], "public.tc")
        records = log_records(svc.logs())
        reloaded = [r for r in records if r.get("event") == "reloaded"]
        assert reloaded and reloaded[0]["added"] == ["d"] and reloaded[0]["removed"] == ["c"], reloaded
        assert svc.stop() == 0


def test_sighup_reloads_and_an_invalid_file_changes_nothing(pgdb: str, tmp_path: Path, free_port: int) -> None:
    _tables(pgdb, "ta", "tb")
    out_a, out_b = tmp_path / "out_a", tmp_path / "out_b"
    a = pg_pipeline("a", pgdb, ["public.ta"], out_a)
    cfg = write_config(tmp_path, [a], api_port=free_port)
    good = cfg.read_text()
    writer = _Inserter(pgdb, ["ta"])
    with CdcService(cfg) as svc:
        svc.wait_state("a", "running")
        writer.start()
        # an invalid file: the CLI, the API and SIGHUP each say why; nothing changes
        bad = dict(a, sink={"type": "file", "path": str(out_a), "rotate_mb": "many"})
        _reconfigure(cfg, [bad, pg_pipeline("b", pgdb, ["public.tb"], out_b)])
        done = run_cli("reload", str(cfg))
        assert done.returncode == 2, done
        assert f"{cfg}:" in done.stderr and "pipelines[0].sink" in done.stderr, done.stderr
        status, doc = svc.get("/reload", method="POST")
        assert status == 400, doc
        assert doc["problems"] and all(p.startswith(f"{cfg.resolve()}:") for p in doc["problems"]), doc
        assert "pipelines[0].sink" in doc["problems"][0], doc
        svc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(r.get("event") == "reload_refused" for r in log_records(svc.logs())),
                 what="the refused reload logged")
        # a slot rename would make another pipeline: refused, with the way on
        cfg.write_text(good)
        _reconfigure(cfg, [dict(a, source=dict(a["source"], slot="other_slot"))])
        status, doc = svc.get("/reload", method="POST")
        assert status == 400 and "slot" in doc["error"] and "cdc drop" in doc["error"], doc
        status, doc = svc.get("/reload", method="POST", body={"force": True})
        assert status == 400 and "force" in doc["error"], doc
        assert svc.get("/pipelines/b")[0] == 404
        # a valid file through SIGHUP: b starts, a goes on
        cfg.write_text(good)
        _reconfigure(cfg, [a, pg_pipeline("b", pgdb, ["public.tb"], out_b)])
        svc.proc.send_signal(signal.SIGHUP)
        svc.wait_state("b", "running")
        assert svc.proc.poll() is None
        n = writer.finish()
        wait_for(lambda: _ns(out_a, "public.ta")[-1:] == [n], what="a caught up")
        assert _starts(svc, "a") == 1
        assert _ns(out_a, "public.ta") == list(range(1, n + 1))
        assert svc.stop() == 0


def test_reload_adds_a_table_while_the_stream_goes_on(pgdb: str, tmp_path: Path, free_port: int) -> None:
    _tables(pgdb, "t1", "t2")
    execute(pgdb, "INSERT INTO t2 (n) SELECT -g FROM generate_series(1, 5000) g")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.t1"], out)
    p["snapshot"] = {"mode": "initial", "chunk_rows": 500}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    writer = _Inserter(pgdb, ["t1", "t2"])
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        writer.start()
        wait_for(lambda: len(_ns(out, "public.t1")) > 20, what="p streams")
        _reconfigure(cfg, [dict(p, source=dict(p["source"], tables=["public.t1", "public.t2"]))])
        status, doc = svc.get("/reload", method="POST")
        assert status == 200, doc
        assert doc["tables_added"] == {"p": ["public.t2"]} and doc["tables_added_in_place"] == ["p"], doc
        assert doc["restarted"] == [] and doc["unchanged"] == [], doc
        sid = doc["snapshots"]["p"]
        assert sid
        record = wait_snapshot_done(svc, "p", sid)
        assert record["tables"] == ["public.t2"], record
        wait_for(lambda: len([x for x in _ns(out, "public.t2") if x > writer.n - 5]) > 0,
                 what="t2's new rows streamed")
        n = writer.finish()
        wait_for(lambda: _ns(out, "public.t1")[-1:] == [n], what="t1 caught up")
        _same(out, pgdb, "public.t2")
        _same(out, pgdb, "public.t1")
        # the stream never stopped: one start, no retry, t1's rows once each and in order
        assert _starts(svc, "p") == 1
        assert svc.pipeline("p")["retries"] == 0
        assert _ns(out, "public.t1") == list(range(1, n + 1))
        reads = [e for e in read_complete_events(out) if e["op"] == "r" and e["schema"]["name"] == "public.t2"]
        assert len({e["key"]["id"] for e in reads}) >= 5000 - 10  # the snapshot read t2
        # a second reload grows it again
        _tables(pgdb, "t3")
        execute(pgdb, "INSERT INTO t3 (n) SELECT g FROM generate_series(1, 100) g")
        _reconfigure(cfg, [dict(p, source=dict(p["source"], tables=["public.t1", "public.t2", "public.t3"]))])
        status, doc = svc.get("/reload", method="POST")
        assert status == 200 and doc["tables_added_in_place"] == ["p"], doc
        wait_snapshot_done(svc, "p", doc["snapshots"]["p"])
        execute(pgdb, "UPDATE t3 SET n = -n WHERE id % 3 = 0")
        _same(out, pgdb, "public.t3")
        assert _starts(svc, "p") == 1
        assert svc.stop() == 0


def test_reload_adds_a_table_to_the_binlog_filter(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute(
        "CREATE TABLE t1 (id INT AUTO_INCREMENT PRIMARY KEY, n INT NOT NULL)",
        "CREATE TABLE t2 (id INT AUTO_INCREMENT PRIMARY KEY, n INT NOT NULL)",
        "INSERT INTO t2 (n) SELECT -seq FROM seq_1_to_2000",
    )
    t1, t2 = mydb.table("t1"), mydb.table("t2")
    out = tmp_path / "out"
    p = my_pipeline("m", mydb.dsn(), [t1], out, snapshot={"mode": "initial", "chunk_rows": 500})
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("m", "running")
        mydb.execute("INSERT INTO t1 (n) VALUES (1)", "INSERT INTO t2 (n) VALUES (1)")
        wait_for(lambda: _ns(out, t1) == [1], what="t1 streams")
        _reconfigure(cfg, [dict(p, source=dict(p["source"], tables=[t1, t2]))])
        done = run_cli("reload", str(cfg))
        assert done.returncode == 0, done.stderr
        assert f"m: tables added: {t2} (while streaming; snapshot" in done.stdout, done.stdout
        for i in range(2, 40):
            mydb.execute(f"INSERT INTO t1 (n) VALUES ({i})", f"INSERT INTO t2 (n) VALUES ({i})",
                         f"UPDATE t2 SET n = n * 10 WHERE id = {i * 7}")
        wait_for(lambda: _ns(out, t1)[-1:] == [39], what="t1 caught up")

        def same() -> bool:
            return fold(read_complete_events(out), t2) == table_state(mydb, t2, ["id"], "id, n")

        wait_for(same, 60, interval=0.3, what="the fold of t2 == the table")
        assert _starts(svc, "m") == 1
        assert _ns(out, t1) == list(range(1, 40))
        assert svc.stop() == 0


# -- pause / resume -----------------------------------------------------------------------------


def test_pause_keeps_position_survives_a_restart_and_resume_delivers_in_order(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    """A second pipeline on the same table proves time passed: it gets the rows the paused one
    does not."""
    _tables(pgdb, "t")
    out_p, out_q = tmp_path / "out_p", tmp_path / "out_q"
    p = pg_pipeline("p", pgdb, ["public.t"], out_p)
    q = pg_pipeline("q", pgdb, ["public.t"], out_q)
    cfg = write_config(tmp_path, [p, q], api_port=free_port)
    execute(pgdb, "INSERT INTO t (n) VALUES (1)")
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        svc.wait_state("q", "running")
        execute(pgdb, "INSERT INTO t (n) VALUES (2)")
        wait_for(lambda: _ns(out_p, "public.t") == [2], what="p streams")
        done = run_cli("pause", str(cfg), "p")
        assert done.returncode == 0 and "p: paused" in done.stdout, done
        doc = svc.pipeline("p")
        assert doc["state"] == "paused"
        checkpoint = doc["checkpoint"]["position"]
        assert svc.get("/healthz") == (200, {"status": "ok"})
        for i in range(3, 53):
            execute(pgdb, f"INSERT INTO t (n) VALUES ({i})")
        wait_for(lambda: _ns(out_q, "public.t")[-1:] == [52], what="q got the rows")
        assert _ns(out_p, "public.t") == [2]
        slot = slot_row(pgdb, "cdc_p")
        assert slot is not None and slot["confirmed_flush_lsn"] == checkpoint, (slot, checkpoint)
        assert svc.stop() == 0
    done = run_cli("status", str(cfg))  # no service: from the state store
    assert "p: not running (paused" in done.stdout, done.stdout
    # the pause is kept in the state store: a restart stays paused
    with CdcService(cfg) as svc:
        svc.wait_state("q", "running")
        svc.wait_state("p", "paused")
        execute(pgdb, "INSERT INTO t (n) VALUES (53)")
        wait_for(lambda: _ns(out_q, "public.t")[-1:] == [53], what="q got row 53")
        assert _ns(out_p, "public.t") == [2]
        assert svc.get("/healthz") == (200, {"status": "ok"})
        status, doc = svc.get("/pipelines/p/pause", method="POST", body={"now": True})
        assert status == 400 and "now" in doc["error"], doc
        assert svc.get("/pipelines/nope/pause", method="POST")[0] == 404
        assert run_cli("pause", str(cfg), "nope").returncode == 1
        done = run_cli("resume", str(cfg), "p")
        assert done.returncode == 0 and "p: running" in done.stdout, done
        wait_for(lambda: _ns(out_p, "public.t")[-1:] == [53], what="p caught up")
        assert _ns(out_p, "public.t") == list(range(2, 54))
        assert svc.stop() == 0
    with CdcService(cfg) as svc:  # resumed is kept too
        svc.wait_state("p", "running")
        assert svc.stop() == 0


def test_paused_pipeline_still_alerts_on_retained_wal(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE unlisted (id int, pad text)")
    cfg = write_config(
        tmp_path, [pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out", max_retained_wal_mb=1)],
        api_port=free_port,
    )
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        status, doc = svc.get("/pipelines/p/pause", method="POST")
        assert status == 200 and doc["state"] == "paused", doc
        assert svc.get("/healthz") == (200, {"status": "ok"})
        execute(pgdb, "INSERT INTO unlisted SELECT g, repeat('x', 500) FROM generate_series(1, 6000) g")

        def unhealthy() -> Any:
            status, doc = svc.get("/healthz")
            return doc if status == 503 else None

        doc = wait_for(unhealthy, timeout=30, what="/healthz 503")
        assert doc["failing"] == [{"pipeline": "p", "state": "paused", "error": "retained_wal_exceeded"}]
        status, doc = svc.get("/pipelines/p/resume", method="POST")
        assert status == 200 and doc["state"] == "running", doc
        wait_for(lambda: svc.get("/healthz")[0] == 200, timeout=30, what="healthy once resumed")
        assert svc.stop() == 0


@pytest.fixture
def state_and_source(pg15: LocalPostgres) -> Iterator[tuple[str, str]]:
    """(state DSN, source DSN): two fresh databases."""
    made = [create_database(pg15) for _ in range(2)]
    try:
        yield made[0][1], made[1][1]
    finally:
        for name, _ in made:
            drop_database(pg15, name)


def test_pause_reaches_the_lease_holder_and_survives_a_restart_with_a_state_database(
    state_and_source: tuple[str, str], tmp_path: Path
) -> None:
    """With ``state.dsn``: a pause asked of the instance that does not run the pipeline
    reaches the one that does (through the state database), and a new instance starts it
    paused."""
    state_dsn, src = state_and_source
    _tables(src, "t")
    out = tmp_path / "out_p"
    cfg = _config(tmp_path, state_dsn, {"p": src})
    instances = [Instance(cfg), Instance(cfg)]
    try:
        holder = wait_for(lambda: _settled(instances, ["p"]), 30, what="one holder")["p"]
        other = instances[1] if holder is instances[0] else instances[0]
        execute(src, "INSERT INTO t (n) VALUES (1)")
        wait_for(lambda: _ns(out, "public.t") == [1], what="p streams")
        status, doc = other.get("/pipelines/p/pause", method="POST")
        assert status == 200 and doc["state"] == "standby" and "note" in doc, doc
        wait_for(lambda: holder.state("p") == "paused", 20, what="the holder pauses")
        execute(src, "INSERT INTO t (n) VALUES (2)")
        for i in instances:
            assert i.stop() == 0
        instances.append(Instance(cfg))
        fresh = instances[-1]
        wait_for(lambda: fresh.state("p") == "paused", 30, what="paused after the restart")
        assert _ns(out, "public.t") == [1]
        done = run_cli("resume", str(cfg), "p", env=fresh.env)
        assert done.returncode == 0, done
        wait_for(lambda: _ns(out, "public.t") == [1, 2], what="resumed")
        assert fresh.stop() == 0
    finally:
        for i in instances:
            if i.proc.poll() is None:
                i.kill()


def test_a_reload_of_one_instance_reaches_the_others_with_a_state_database(
    state_and_source: tuple[str, str], tmp_path: Path
) -> None:
    """With ``state.dsn`` a reload asked of one instance is announced in the state database and
    every instance re-reads its own file: a new pipeline runs in exactly one of them, and a
    removed one in none, whichever instance held it."""
    state_dsn, src = state_and_source
    _tables(src, "t")
    cfg = _config(tmp_path, state_dsn, {"p": src})
    instances = [Instance(cfg), Instance(cfg)]
    try:
        wait_for(lambda: _settled(instances, ["p"]), 30, what="p runs once")
        doc = yaml.safe_load(cfg.read_text())
        q = dict(doc["pipelines"][0], name="q", sink={"type": "file", "path": str(tmp_path / "out_q")})
        _reconfigure(cfg, [q])
        done = run_cli("reload", str(cfg), env=instances[0].env)  # one instance only
        assert done.returncode == 0 and "pipelines added: q" in done.stdout, done
        wait_for(lambda: _settled(instances, ["q"]), 30, what="q runs once")
        wait_for(lambda: all(i.get("/pipelines/p")[0] == 404 for i in instances), 30,
                 what="p gone from every instance")
        execute(src, "INSERT INTO t (n) VALUES (7)")
        wait_for(lambda: _ns(tmp_path / "out_q", "public.t") == [7], what="q streams")
        for i in instances:
            assert i.stop() == 0
    finally:
        for i in instances:
            if i.proc.poll() is None:
                i.kill()
