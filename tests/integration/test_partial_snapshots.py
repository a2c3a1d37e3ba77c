"""Partial snapshots (contract section 12): `cdc snapshot --where` and `"where"` in the API,
on PostgreSQL and MariaDB. Only matching rows are read, in key chunks; a condition the
database rejects is refused (400 / exit 2) with its message before anything is read; the
condition is kept with the snapshot record, so a snapshot resumed after kill -9 keeps it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import (
    CdcService,
    cdc_env,
    create_database,
    drop_database,
    execute,
    pg_pipeline,
    read_events,
    run_cli,
    snapshot_reads,
    snapshot_record,
    wait_for,
    wait_snapshot_done,
    write_config,
)
from tests.integration.test_mysql_source import my_pipeline

ROWS = 6_000
#: the condition (both dialects) and the python predicate it stands for
WHERE = "n % 3 = 0 AND v <> 'v9'"


def _matches(row: dict[str, Any]) -> bool:
    return row["n"] % 3 == 0 and row["v"] != "v9"


class Db:
    """One source database with its table and pipeline dict."""

    def __init__(self, kind: str, table: str, pipeline: dict[str, Any], bad_column: str) -> None:
        self.kind, self.table, self.pipeline, self.bad_column = kind, table, pipeline, bad_column


@pytest.fixture(params=["postgres", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    out = tmp_path / "out"
    if request.param == "postgres":
        server = request.getfixturevalue("pg15")
        name, dsn = create_database(server)
        request.addfinalizer(lambda: drop_database(server, name))
        execute(
            dsn,
            "CREATE TABLE public.items (grp int NOT NULL, id int NOT NULL, v text, n int, PRIMARY KEY (grp, id))",
            f"INSERT INTO public.items SELECT g % 7, g, 'v' || g, g FROM generate_series(1, {ROWS}) g",
        )
        p = pg_pipeline("p", dsn, ["public.items"], out)
        yield Db("postgres", "public.items", p, 'column "nosuch" does not exist')
    else:
        mydb = request.getfixturevalue("mydb")
        mydb.execute(
            "CREATE TABLE items (grp INT NOT NULL, id INT NOT NULL, v VARCHAR(40), n INT, PRIMARY KEY (grp, id))",
            f"INSERT INTO items SELECT seq % 7, seq, CONCAT('v', seq), seq FROM seq_1_to_{ROWS}",
        )
        table = mydb.table("items")
        p = my_pipeline("p", mydb.dsn(), [table], out)
        yield Db("mariadb", table, p, "Unknown column 'nosuch'")


def _expected() -> set[int]:
    return {i for i in range(1, ROWS + 1) if _matches({"n": i, "v": f"v{i}"})}


def test_where_reads_only_matching_rows_in_key_chunks(db: Db, tmp_path: Path, free_port: int) -> None:
    db.pipeline["snapshot"] = {"mode": "never", "chunk_rows": 500}
    cfg = write_config(tmp_path, [db.pipeline], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        proc = run_cli("snapshot", str(cfg), "p", db.table, "--where", WHERE, "--wait")
        assert proc.returncode == 0, proc.stderr
        sid = orjson.loads(proc.stdout.splitlines()[0])["id"]
        record = snapshot_record(svc, "p", sid)
        assert record["where"] == {db.table: WHERE}
        assert svc.stop() == 0
    reads = snapshot_reads(read_events(tmp_path / "out"), sid)
    ids = [e["after"]["id"] for e in reads]
    assert set(ids) == _expected() and len(ids) == len(_expected())
    assert all(_matches(e["after"]) for e in reads)
    # key order across chunks (grp, id), several chunks
    keys = [(e["key"]["grp"], e["key"]["id"]) for e in reads]
    assert keys == sorted(keys)
    assert len({e["id"].split(":")[2] for e in reads}) >= 3


def test_a_condition_the_database_rejects_is_refused_with_its_message(
    db: Db, tmp_path: Path, free_port: int
) -> None:
    cfg = write_config(tmp_path, [db.pipeline], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        status, doc = svc.get("/pipelines/p/snapshots", method="POST",
                              body={"tables": [db.table], "where": {db.table: "nosuch > 1"}})
        assert status == 400 and db.bad_column in doc["error"], doc
        proc = run_cli("snapshot", str(cfg), "p", db.table, "--where", "nosuch > 1")
        assert proc.returncode == 2 and db.bad_column in proc.stderr, proc.stderr
        # a statement end or a comment is refused before the database sees it
        proc = run_cli("snapshot", str(cfg), "p", db.table, "--where", "n > 1; DELETE FROM x")
        assert proc.returncode == 2 and "';'" in proc.stderr, proc.stderr
        status, doc = svc.get("/pipelines/p/snapshots", method="POST",
                              body={"tables": [db.table], "where": {db.table: "n > 1 -- x"}})
        assert status == 400 and "comment" in doc["error"], doc
        # a field the endpoint does not know is named, never ignored
        status, doc = svc.get("/pipelines/p/snapshots", method="POST",
                              body={"tables": [db.table], "wher": {db.table: "n > 1"}})
        assert status == 400 and "'wher'" in doc["error"], doc
        # nothing was recorded, nothing read
        status, doc = svc.get("/pipelines/p/snapshots")
        assert doc["snapshots"] == [], doc
        assert svc.stop() == 0
    assert not [e for e in read_events(tmp_path / "out") if e["op"] == "r"]


def test_a_resumed_partial_snapshot_keeps_its_condition(db: Db, tmp_path: Path, free_port: int) -> None:
    db.pipeline["snapshot"] = {"mode": "never", "chunk_rows": 200}
    cfg = write_config(tmp_path, [db.pipeline], api_port=free_port)
    env = cdc_env()
    env["CDC_TEST_SNAPSHOT_CHUNK_DELAY_S"] = "0.2"
    with CdcService(cfg, env=env) as svc:
        svc.wait_state("p", "running")
        status, doc = svc.get("/pipelines/p/snapshots", method="POST",
                              body={"tables": [db.table], "where": {db.table: WHERE}})
        assert status == 202, doc
        sid = doc["id"]
        wait_for(lambda: snapshot_record(svc, "p", sid)["rows_done"] >= 400, timeout=60, what="2 chunks")
        svc.kill()
    with sqlite3.connect(tmp_path / "state.sqlite") as conn:
        (text,) = conn.execute("SELECT record FROM snapshots WHERE id = ?", (sid,)).fetchone()
    saved = orjson.loads(text)
    assert saved["where"] == {db.table: WHERE} and saved["progress"][db.table]["state"] == "running"
    with CdcService(cfg) as svc:
        wait_snapshot_done(svc, "p", sid)
        assert svc.stop() == 0
    reads = snapshot_reads(read_events(tmp_path / "out"), sid)
    assert all(_matches(e["after"]) for e in reads)
    assert {e["after"]["id"] for e in reads} == _expected()
