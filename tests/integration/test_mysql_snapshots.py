"""Snapshots on MariaDB (file and GTID positions): initial then stream, on demand under
concurrent writes, kill -9 in the middle, initial_only, bad requests (contract section 5)."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import (
    CdcService,
    cdc_env,
    fold,
    read_complete_events,
    read_events,
    run_cli,
    run_until_exit,
    snapshot_reads,
    snapshot_record,
    wait_for,
    wait_snapshot_done,
    write_config,
)
from tests.integration.test_mysql_source import my_pipeline, table_state
from tests.mariadb_fixtures import MyDB


def _create(db: MyDB, rows: int, name: str = "items") -> str:
    db.execute(
        f"CREATE TABLE {name} (grp INT NOT NULL, id INT NOT NULL, v VARCHAR(40), n INT, PRIMARY KEY (grp, id))",
        f"INSERT INTO {name} SELECT seq % 7, seq, CONCAT('v', seq), seq FROM seq_1_to_{rows}",
    )
    return db.table(name)


def _state(db: MyDB, table: str) -> dict[bytes, dict[str, Any]]:
    return table_state(db, table, ["grp", "id"], "grp, id, v, n")


def _caught_up(out: Path, db: MyDB, table: str, timeout: float = 60) -> None:
    def same() -> bool:
        return fold(read_complete_events(out), table) == _state(db, table)

    try:
        wait_for(same, timeout, interval=0.3, what="fold == table")
    except AssertionError:
        got, want = fold(read_complete_events(out), table), _state(db, table)
        missing = [k for k in want if k not in got][:5]
        extra = [k for k in got if k not in want][:5]
        wrong = [(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]][:5]
        raise AssertionError(f"fold != table: missing {missing} extra {extra} wrong {wrong}") from None


def test_initial_snapshot_of_50000_rows_then_stream(mydb_any: MyDB, tmp_path: Path, free_port: int) -> None:
    table = _create(mydb_any, 50_000)
    out = tmp_path / "out"
    p = my_pipeline("m", mydb_any.dsn(), [table], out, snapshot={"mode": "initial"})
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("m", "running")
        sid = wait_for(lambda: (svc.pipeline("m").get("snapshot") or {}).get("id"), what="a snapshot")
        doc = wait_snapshot_done(svc, "m", sid)
        assert doc["rows_done"] == 50_000 and doc["progress"][table]["state"] == "done", doc
        mydb_any.execute("UPDATE items SET v = 'x' WHERE id % 10 = 0", "DELETE FROM items WHERE id % 7 = 3",
                         "INSERT INTO items VALUES (1, 60001, 'late', 1)")
        _caught_up(out, mydb_any, table)
        assert svc.stop() == 0
    events = read_events(out)
    reads = snapshot_reads(events)
    assert len(reads) == 50_000 and len({e["id"] for e in reads}) == 50_000
    first = reads[0]
    assert first["transaction"] is None and first["before"] is None
    assert first["source"]["snapshot"] is True and first["source"]["snapshot_id"] == sid
    assert first["source"]["connector"] == "mysql" and first["source"]["tx"] is None
    assert first["key"] == {"grp": 0, "id": 7} and first["after"] == {"grp": 0, "id": 7, "v": "v7", "n": 7}
    streamed = [e for e in events if e["op"] != "r"]
    assert streamed and streamed[0]["schema"] == first["schema"]  # the same schema version


class _Writer(threading.Thread):
    """Updates, deletes, re-keys and inserts random rows in small transactions."""

    def __init__(self, db: MyDB, max_id: int) -> None:
        super().__init__(daemon=True)
        self.db, self.max_id = db, max_id
        self.stop = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(11)
        next_id = self.max_id + 1
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    for _ in range(rnd.randint(1, 5)):
                        op = rnd.random()
                        i = rnd.randint(1, self.max_id)
                        if op < 0.55:
                            cur.execute("UPDATE items SET v = %s, n = n + 1 WHERE grp = %s AND id = %s", (f"u{self.transactions}", i % 7, i))
                        elif op < 0.8:
                            cur.execute("DELETE FROM items WHERE grp = %s AND id = %s", (i % 7, i))
                        elif op < 0.9:
                            cur.execute("UPDATE items SET grp = grp + 7 WHERE grp = %s AND id = %s", (i % 7, i))
                        else:
                            cur.execute("INSERT INTO items VALUES (%s, %s, 'new', 0)", (next_id % 7, next_id))
                            next_id += 1
                    conn.commit()
                    self.transactions += 1
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


def test_on_demand_snapshot_under_concurrent_writes(mydb_any: MyDB, tmp_path: Path, free_port: int) -> None:
    table = _create(mydb_any, 30_000)
    out = tmp_path / "out"
    p = my_pipeline("m", mydb_any.dsn(), [table], out, snapshot={"mode": "never", "chunk_rows": 2_000})
    cfg = write_config(tmp_path, [p], api_port=free_port)
    writer = _Writer(mydb_any, 30_000)
    with CdcService(cfg) as svc:
        svc.wait_state("m", "running")
        writer.start()
        wait_for(lambda: writer.transactions > 50, what="writer running")
        status, doc = svc.get("/pipelines/m/snapshots", method="POST", body={"tables": [table]})
        assert status == 202, doc
        sid = doc["id"]
        status, again = svc.get("/pipelines/m/snapshots", method="POST", body={"tables": [table]})
        assert status == 200 and again["id"] == sid, again
        wait_snapshot_done(svc, "m", sid)
        wait_for(lambda: writer.transactions > 400, timeout=60, what="more writes after the snapshot")
        writer.stop.set()
        writer.join(10)
        assert writer.error is None, writer.error
        _caught_up(out, mydb_any, table)
        assert svc.stop() == 0
    events = read_events(out)
    reads = snapshot_reads(events, sid)
    assert 15_000 < len(reads) <= 30_000
    positions = [i for i, e in enumerate(events) if e["op"] == "r"]
    assert [e for e in events[positions[0]: positions[-1]] if e["op"] != "r"], "the stream stopped during the snapshot"


def test_kill_mid_snapshot_resumes_from_the_next_chunk(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    table = _create(mydb, 20_000)
    out = tmp_path / "out"
    p = my_pipeline("m", mydb.dsn(), [table], out, snapshot={"mode": "initial", "chunk_rows": 1_000})
    cfg = write_config(tmp_path, [p], api_port=free_port)
    env = cdc_env()
    env["CDC_TEST_SNAPSHOT_CHUNK_DELAY_S"] = "0.15"
    with CdcService(cfg, env=env) as svc:
        sid = wait_for(lambda: (svc.pipeline("m").get("snapshot") or {}).get("id"), what="a snapshot")
        wait_for(lambda: snapshot_record(svc, "m", sid)["rows_done"] >= 5_000, timeout=60, what="5 chunks")
        mydb.execute("UPDATE items SET v = 'during' WHERE id % 100 = 1")
        svc.kill()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        (record,) = db.execute("SELECT record FROM snapshots WHERE id = ?", (sid,)).fetchone()
    saved = orjson.loads(record)["progress"][table]
    assert saved["state"] == "running" and 5 <= saved["chunks"] < 20, saved
    with CdcService(cfg) as svc:
        wait_snapshot_done(svc, "m", sid)
        _caught_up(out, mydb, table)
        assert svc.stop() == 0
    reads = snapshot_reads(read_events(out), sid)
    assert sorted({int(e["id"].split(":")[2]) for e in reads}) == list(range(20))
    assert 20_000 <= len(reads) <= 21_000, len(reads)


def test_initial_only_and_bad_requests(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    table = _create(mydb, 2_500)
    mydb.execute("CREATE TABLE keyless (a INT, b VARCHAR(10))", "INSERT INTO keyless SELECT seq % 3, 'x' FROM seq_1_to_40")
    out = tmp_path / "out"
    p = my_pipeline("m", mydb.dsn(), [table, mydb.table("keyless")], out, snapshot={"mode": "initial_only", "chunk_rows": 1_000})
    cfg = write_config(tmp_path, [p], api_port=free_port)
    code, _, stderr = run_until_exit(cfg, timeout=60)
    assert code == 0, stderr
    events = read_events(out)
    assert Counter(e["op"] for e in events) == {"r": 2_540}
    assert fold(events, table) == _state(mydb, table)

    # a streaming pipeline of its own: on-demand snapshot of the keyless table, bad requests
    out2 = tmp_path / "out2"
    p2 = my_pipeline("m2", mydb.dsn(), [table, mydb.table("keyless")], out2, snapshot={"mode": "never"})
    cfg = write_config(tmp_path, [p2], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("m2", "running")
        status, doc = svc.get("/pipelines/m2/snapshots", method="POST", body={"tables": [f"{mydb.name}.nope"]})
        assert status == 400 and "nope" in doc["error"], doc
        assert svc.get("/pipelines/x/snapshots", method="POST", body={"tables": [table]})[0] == 404
        proc = run_cli("snapshot", str(cfg), "m2", mydb.table("keyless"), "--wait")
        assert proc.returncode == 0, proc.stderr
        reads = snapshot_reads(read_events(out2))
        assert len(reads) == 40 and all(e["key"] is None for e in reads)
        assert svc.stop() == 0
