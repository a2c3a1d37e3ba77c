"""What the PostgreSQL source refuses, and how it says so (contract sections 1, 3 and 7).

Every refusal is a fatal error of its pipeline (state ``failed``; with a single pipeline the
service then exits 1) whose message names the fix; passing faults (a slot in use, a server
that does not answer) are ``retrying`` and heal by themselves. The state rules of section 3
(lost state, state behind the slot, missing slot, adopted slot) are exercised end to end on a
real server. Mostly on PostgreSQL 15, to keep the time down.
"""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from cdc_local.postgres import LocalPostgres, find_debian_bindir
from cdc_local.postgres import free_port as pick_port
from tests.helpers import (
    CdcService,
    execute,
    find_log,
    lsn_int,
    pg_pipeline,
    query,
    read_events,
    read_schemas,
    run_until_exit,
    slot_row,
    wait_for,
    write_config,
)

PG15 = pytest.mark.parametrize("pg", ["pg15"], indirect=True)


def _failure(records: list[dict], stderr: str, pipeline: str = "p") -> dict:
    rec = find_log(records, "pipeline_failed", pipeline=pipeline)
    assert rec is not None, f"no pipeline_failed in the log:\n{stderr[-4000:]}"
    return rec


def _expect_fatal(
    tmp_path: Path, free_port: int, pipeline: dict, kind: str, *needles: str, args: tuple[str, ...] = ()
) -> str:
    """Run a one-pipeline service that must fail: exit 1, error kind ``kind``, message with
    every needle. Returns the message."""
    cfg = write_config(tmp_path, [pipeline], api_port=free_port)
    code, records, stderr = run_until_exit(cfg, *args)
    assert code == 1, stderr[-4000:]
    rec = _failure(records, stderr, pipeline["name"])
    assert rec["error_kind"] == kind, rec
    for needle in needles:
        assert needle in rec["error"], (needle, rec["error"])
    assert "Traceback" not in stderr
    return str(rec["error"])


@pytest.fixture
def role(pgdb: str) -> Iterator[str]:
    """A throw-away login role name for ``pgdb`` (created by the test, dropped afterwards)."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pgdb, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


# -- the server and the role ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def replica_server() -> Iterator[LocalPostgres]:
    server = LocalPostgres(find_debian_bindir(15), settings={"wal_level": "replica"})
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def test_wal_level_replica_is_fatal(replica_server: LocalPostgres, tmp_path: Path, free_port: int) -> None:
    execute(replica_server.dsn(), "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
    p = pg_pipeline("p", replica_server.dsn(), ["public.t"], tmp_path / "out")
    _expect_fatal(tmp_path, free_port, p, "source_config", "wal_level", "'replica'", "wal_level = logical", "restart")
    assert query(replica_server.dsn(), "SELECT count(*) FROM pg_replication_slots") == [(0,)]


@PG15
def test_role_without_replication(pgdb: str, role: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", f'CREATE ROLE "{role}" LOGIN', f'GRANT SELECT ON t TO "{role}"')
    p = pg_pipeline("p", make_conninfo(pgdb, user=role), ["public.t"], tmp_path / "out")
    _expect_fatal(tmp_path, free_port, p, "source_permission", "REPLICATION", f'ALTER ROLE "{role}" WITH REPLICATION')


@PG15
def test_role_without_select(pgdb: str, role: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", f'CREATE ROLE "{role}" LOGIN REPLICATION')
    p = pg_pipeline("p", make_conninfo(pgdb, user=role), ["public.t"], tmp_path / "out")
    _expect_fatal(tmp_path, free_port, p, "source_permission", "SELECT", "GRANT SELECT ON public.t")


# -- the tables -----------------------------------------------------------------------------------


@PG15
def test_missing_table_fails_only_its_pipeline(pgdb: str, tmp_path: Path, free_port: int) -> None:
    """A fatal error stops only its own pipeline: the other one and the API run on, /healthz
    names the failed pipeline, and a stop signal still exits 0."""
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    bad = pg_pipeline("bad", pgdb, ["public.nope"], tmp_path / "bad")
    good = pg_pipeline("good", pgdb, ["public.t"], tmp_path / "good")
    cfg = write_config(tmp_path, [bad, good], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("good", "running")
        doc = svc.wait_state("bad", "failed")
        assert doc["last_error"]["kind"] == "source_config"
        assert "public.nope does not exist" in doc["last_error"]["message"]
        assert "remove it from `tables`" in doc["last_error"]["message"]
        status, health = svc.get("/healthz")
        assert status == 503
        assert health["failing"] == [{"pipeline": "bad", "state": "failed", "error": "source_config"}]
        execute(pgdb, "INSERT INTO t VALUES (1)")
        wait_for(lambda: read_events(tmp_path / "good"), what="the good pipeline's event")
        assert svc.pipeline("good")["state"] == "running"
        assert svc.stop() == 0
    assert slot_row(pgdb, "cdc_bad") is None


@PG15
@pytest.mark.parametrize("identity", ["nothing", "default_without_pk"])
def test_unusable_replica_identity(pgdb: str, tmp_path: Path, free_port: int, identity: str) -> None:
    if identity == "nothing":
        execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, v text)", "ALTER TABLE t REPLICA IDENTITY NOTHING")
        needle = "REPLICA IDENTITY NOTHING"
        before = "n"
    else:
        execute(pgdb, "CREATE TABLE t (id int, v text)")
        needle = "no primary key"
        before = "d"
    p = pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")
    _expect_fatal(
        tmp_path, free_port, p, "source_config", needle, "ALTER TABLE public.t REPLICA IDENTITY FULL", "USING INDEX"
    )
    # the service never changes a replica identity, and made no publication or slot
    assert query(pgdb, "SELECT relreplident::text FROM pg_class WHERE relname = 't'") == [(before,)]
    assert query(pgdb, "SELECT count(*) FROM pg_publication") == [(0,)]
    assert slot_row(pgdb, "cdc_p") is None


@PG15
def test_partition_listed_with_its_root(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(
        pgdb,
        "CREATE TABLE m (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
        "CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    )
    p = pg_pipeline("p", pgdb, ["public.m", "public.m_2026"], tmp_path / "out")
    _expect_fatal(
        tmp_path, free_port, p, "source_config", "public.m_2026 is a partition of public.m", "remove public.m_2026"
    )


# -- someone else's publication -------------------------------------------------------------------


@PG15
@pytest.mark.parametrize("problem", ["missing_table", "no_delete", "row_filter", "column_list"])
def test_foreign_publication_is_only_checked(pgdb: str, tmp_path: Path, free_port: int, problem: str) -> None:
    execute(pgdb, "CREATE TABLE a (id int PRIMARY KEY, v text)", "CREATE TABLE b (id int PRIMARY KEY, v text)")
    tables = ["public.a", "public.b"]
    if problem == "missing_table":
        execute(pgdb, "CREATE PUBLICATION theirs FOR TABLE a")
        needles: tuple[str, ...] = ("does not include public.b", "ALTER PUBLICATION theirs ADD TABLE public.b")
    elif problem == "no_delete":
        execute(pgdb, "CREATE PUBLICATION theirs FOR TABLE a, b WITH (publish = 'insert, update, truncate')")
        needles = ("does not publish delete", "ALTER PUBLICATION theirs SET (publish = ")
    elif problem == "row_filter":
        execute(pgdb, "CREATE PUBLICATION theirs FOR TABLE a, b WHERE (id > 10)")
        needles = ("row filter on public.b", "without a WHERE clause")
    else:
        execute(pgdb, "CREATE PUBLICATION theirs FOR TABLE a, b (id)")
        needles = ("column list on public.b", "columns.exclude")
    p = pg_pipeline("p", pgdb, tables, tmp_path / "out", publication="theirs")
    _expect_fatal(tmp_path, free_port, p, "source_config", "not created by cdc" if problem in ("missing_table", "no_delete") else "theirs", *needles)
    # only checked, never changed
    published = query(pgdb, "SELECT tablename FROM pg_publication_tables WHERE pubname = 'theirs' ORDER BY 1")
    assert published == ([("a",)] if problem == "missing_table" else [("a",), ("b",)])
    assert query(pgdb, "SELECT pubdelete, obj_description(oid, 'pg_publication') FROM pg_publication") == [
        (problem != "no_delete", None)
    ]


# -- slots ----------------------------------------------------------------------------------------


@PG15
def test_slot_in_use_retries_then_recovers(pg: LocalPostgres, pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(
        pgdb,
        "CREATE TABLE t (id int PRIMARY KEY)",
        "SELECT pg_create_logical_replication_slot('cdc_p', 'pgoutput')",
    )
    dbname = pgdb.rsplit("/", 1)[1]
    holder = subprocess.Popen(
        [
            str(pg.bindir / "pg_recvlogical"),
            "-d", f"host=127.0.0.1 port={pg.port} user=postgres dbname={dbname}",
            "-S", "cdc_p", "--start", "--no-loop", "-f", "/dev/null",
            "-o", "proto_version=1", "-o", "publication_names=cdc_p",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: (slot_row(pgdb, "cdc_p") or {}).get("active_pid"), what="pg_recvlogical holding the slot")
        out = tmp_path / "out"
        cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
        with CdcService(cfg) as svc:
            doc = svc.wait_state("p", "retrying")
            assert doc["last_error"]["kind"] == "slot_in_use"
            assert "in use by another connection" in doc["last_error"]["message"]
            status, health = svc.get("/healthz")
            assert status == 503 and health["failing"][0]["error"] == "slot_in_use"
            holder.terminate()
            holder.wait(10)
            svc.wait_state("p", "running", timeout=60)
            execute(pgdb, "INSERT INTO t VALUES (1)")
            events = wait_for(lambda: read_events(out), what="the event after recovering")
            assert [e["after"] for e in events] == [{"id": 1}]
            assert svc.stop() == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def _backup_state(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as s, sqlite3.connect(dst) as d:
        s.backup(d)
    s.close()
    d.close()


def _remove_state(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _checkpoint_of(state: Path, pipeline: str = "p") -> str:
    with sqlite3.connect(state) as conn:
        row = conn.execute("SELECT position FROM checkpoints WHERE pipeline = ?", (pipeline,)).fetchone()
    conn.close()
    assert row is not None
    return str(row[0])


def _run_and_stop(cfg: Path, until: Callable[[], object], *args: str) -> None:
    """Run the service until ``until()`` returned, then stop it (exit 0)."""
    with CdcService(cfg, *args) as svc:
        svc.wait_state("p", "running")
        until()
        assert svc.stop() == 0, svc.logs()[-3000:]


@PG15
def test_state_lost_then_adopt(pgdb: str, tmp_path: Path, free_port: int) -> None:
    out = tmp_path / "out"
    state = tmp_path / "state.sqlite"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, v text)")

    def first_run() -> None:
        execute(pgdb, "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        execute(pgdb, "ALTER TABLE t ADD COLUMN w int", "INSERT INTO t VALUES (3, 'c', 3)")
        wait_for(lambda: len(read_events(out)) == 3, what="3 events")

    _run_and_stop(cfg, first_run)
    assert [s["version"] for s in read_schemas(out)] == [1, 2]

    # the state file is lost while the sink holds events; changes go on meanwhile
    _remove_state(state)
    execute(pgdb, "INSERT INTO t VALUES (4, 'd', 4)", "ALTER TABLE t ADD COLUMN z int", "INSERT INTO t VALUES (5, 'e', 5, 5)")
    message = _expect_fatal(
        tmp_path, free_port, pg_pipeline("p", pgdb, ["public.t"], out), "state_lost",
        "cdc drop", "--adopt p", "snapshot.mode: initial",
    )
    assert "no saved state" in message
    assert len(read_events(out)) == 3  # nothing written, nothing moved

    # --adopt continues from the slot's confirmed position, versions after the sink's highest
    with CdcService(cfg, "--adopt", "p") as svc:
        svc.wait_state("p", "running")
        wait_for(lambda: {4, 5} <= {e["after"]["id"] for e in read_events(out) if e["after"]}, what="rows 4 and 5")
        assert find_log(svc.log_events(), "adopting") is not None
        assert svc.stop() == 0
    events = read_events(out)
    assert {e["after"]["id"] for e in events} == {1, 2, 3, 4, 5}
    by_id = {e["after"]["id"]: e["schema"]["version"] for e in events}
    assert by_id == {1: 1, 2: 1, 3: 2, 4: 2, 5: 3}
    assert [(s["version"], [c["name"] for c in s["columns"]]) for s in read_schemas(out)] == [
        (1, ["id", "v"]),
        (2, ["id", "v", "w"]),
        (3, ["id", "v", "w", "z"]),
    ]
    # and the state now has a checkpoint again: a plain restart resumes
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        assert svc.stop() == 0


@PG15
def test_checkpoint_behind_slot_is_fatal(pgdb: str, tmp_path: Path, free_port: int) -> None:
    out = tmp_path / "out"
    state = tmp_path / "state.sqlite"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")

    def insert(n: int) -> Callable[[], None]:
        def go() -> None:
            execute(pgdb, f"INSERT INTO t VALUES ({n})")
            wait_for(lambda: len(read_events(out)) >= n, what=f"{n} events")
        return go

    _run_and_stop(cfg, insert(1))
    backup = tmp_path / "backup.sqlite"
    _backup_state(state, backup)
    old = _checkpoint_of(backup)

    def advance() -> None:
        insert(2)()
        wait_for(
            lambda: lsn_int(slot_row(pgdb, "cdc_p")["confirmed_flush_lsn"]) > lsn_int(old),  # type: ignore[index]
            what="the slot's confirmed position to pass the old checkpoint",
        )

    _run_and_stop(cfg, advance)
    _remove_state(state)
    _backup_state(backup, state)
    _expect_fatal(
        tmp_path, free_port, pg_pipeline("p", pgdb, ["public.t"], out), "state_behind_slot",
        f"checkpoint {old} is behind", "restored from a backup", "cdc drop",
    )


@PG15
def test_slot_dropped_while_stopped(pgdb: str, tmp_path: Path, free_port: int) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    _run_and_stop(cfg, lambda: None)
    checkpoint = _checkpoint_of(tmp_path / "state.sqlite")
    wait_for(lambda: (slot_row(pgdb, "cdc_p") or {"active_pid": 1})["active_pid"] is None, what="the slot released")
    execute(pgdb, "SELECT pg_drop_replication_slot('cdc_p')")
    _expect_fatal(
        tmp_path, free_port, pg_pipeline("p", pgdb, ["public.t"], out), "slot_missing",
        "cdc_p is missing", checkpoint, "cdc drop", "snapshot.mode: initial",
    )
    assert slot_row(pgdb, "cdc_p") is None  # not silently re-created


@PG15
def test_existing_slot_without_state_is_adopted(pgdb: str, tmp_path: Path, free_port: int) -> None:
    # the DBA's way: the publication first, then the slot
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE PUBLICATION cdc_p FOR TABLE t")
    ((created,),) = query(pgdb, "SELECT lsn::text FROM pg_create_logical_replication_slot('cdc_p', 'pgoutput')")
    # committed after the DBA made the slot, before cdc ever ran: must be delivered
    execute(pgdb, "INSERT INTO t VALUES (1)")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t VALUES (2)")
        wait_for(lambda: len(read_events(out)) == 2, what="both rows")
        adopted = find_log(svc.log_events(), "slot_adopted")
        assert adopted is not None and adopted["position"] == created and adopted["slot"] == "cdc_p"
        assert find_log(svc.log_events(), "slot_created") is None
        assert svc.stop() == 0
    assert [e["after"]["id"] for e in read_events(out)] == [1, 2]


@PG15
def test_slot_made_before_its_publication(pgdb: str, tmp_path: Path, free_port: int) -> None:
    """PostgreSQL 15's pgoutput looks the publication up as of each change, so a change
    between a DBA's slot and the publication can never be streamed: fatal, naming the fix
    (not an endless retry with the server's message hidden)."""
    execute(
        pgdb,
        "CREATE TABLE t (id int PRIMARY KEY)",
        "SELECT pg_create_logical_replication_slot('cdc_p', 'pgoutput')",
        "INSERT INTO t VALUES (1)",
    )
    _expect_fatal(
        tmp_path, free_port, pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out"), "source_config",
        'publication "cdc_p" does not exist', "create the publication first", "cdc drop",
    )


# -- the database is not there yet ----------------------------------------------------------------


def test_database_unreachable_at_start(tmp_path: Path, free_port: int) -> None:
    """Connection refused is a passing fault: `retrying`, /healthz 503; once a server listens
    on the port the pipeline starts streaming by itself."""
    server = LocalPostgres(find_debian_bindir(15), port=free_port)
    try:
        server.start()
        execute(server.dsn(), "CREATE TABLE t (id int PRIMARY KEY)")
        server.stop()
        out = tmp_path / "out"
        cfg = write_config(tmp_path, [pg_pipeline("p", server.dsn(), ["public.t"], out)], api_port=pick_port())
        with CdcService(cfg) as svc:
            doc = svc.wait_state("p", "retrying")
            assert doc["last_error"]["kind"] == "source_unreachable"
            assert f"port {free_port} failed" in doc["last_error"]["message"]
            status, health = svc.get("/healthz")
            assert status == 503
            assert health["failing"] == [{"pipeline": "p", "state": "retrying", "error": "source_unreachable"}]
            assert svc.get("/livez")[0] == 200
            server.start()
            svc.wait_state("p", "running", timeout=60)
            assert svc.get("/healthz") == (200, {"status": "ok"})
            execute(server.dsn(), "INSERT INTO t VALUES (7)")
            events = wait_for(lambda: read_events(out), what="the first event")
            assert events[0]["after"] == {"id": 7}
            assert svc.stop() == 0
    finally:
        server.cleanup()
