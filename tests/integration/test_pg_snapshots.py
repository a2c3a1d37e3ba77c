"""Snapshots on PostgreSQL 15 and 18: initial and on demand, under concurrent writes, after a
kill -9, keyless tables, initial_only, and bad requests (contract section 5, API section 8)."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg

from tests.helpers import (
    CdcService,
    cdc_env,
    execute,
    fold,
    metric_value,
    pg_pipeline,
    query,
    read_complete_events,
    read_events,
    run_cli,
    run_until_exit,
    slot_row,
    snapshot_reads,
    snapshot_record,
    wait_for,
    wait_snapshot_done,
    write_config,
)

TABLE = "public.items"


def _rows(dsn: str, table: str = TABLE) -> dict[bytes, dict[str, Any]]:
    """The table as the events show it (int and text columns only, so the forms are plain)."""
    out = {}
    for id_, grp, v, n in query(dsn, f"SELECT id, grp, v, n FROM {table}"):
        out[orjson.dumps({"grp": grp, "id": id_}, option=orjson.OPT_SORT_KEYS)] = {"id": id_, "grp": grp, "v": v, "n": n}
    return out


def _create(dsn: str, rows: int, table: str = TABLE) -> None:
    # a composite key, so keyset paging over (grp, id) is exercised
    execute(
        dsn,
        f"CREATE TABLE {table} (grp int NOT NULL, id int NOT NULL, v text, n int, PRIMARY KEY (grp, id))",
        f"INSERT INTO {table} SELECT g % 7, g, 'v' || g, g FROM generate_series(1, {rows}) g",
    )


def _fold(out: Path, table: str = TABLE) -> dict[bytes, dict[str, Any]]:
    rows = fold(read_complete_events(out), table)
    return {k: v for k, v in rows.items()}


def _caught_up(svc: CdcService, out: Path, dsn: str, table: str = TABLE, timeout: float = 60) -> None:
    def same() -> bool:
        return _fold(out, table) == _rows(dsn, table)

    try:
        wait_for(same, timeout, interval=0.3, what="fold == table")
    except AssertionError:
        got, want = _fold(out, table), _rows(dsn, table)
        missing = [k for k in want if k not in got][:5]
        extra = [k for k in got if k not in want][:5]
        wrong = [(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]][:5]
        raise AssertionError(f"fold != table: missing {missing} extra {extra} wrong {wrong}") from None


class _Writer(threading.Thread):
    """Keeps updating, deleting and inserting random rows of the table in small transactions."""

    def __init__(self, dsn: str, max_id: int, table: str = TABLE) -> None:
        super().__init__(daemon=True)
        self.dsn, self.max_id, self.table = dsn, max_id, table
        self.stop = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(7)
        next_id = self.max_id + 1
        try:
            with psycopg.connect(self.dsn, autocommit=False) as conn:
                while not self.stop.is_set():
                    for _ in range(rnd.randint(1, 5)):
                        op = rnd.random()
                        i = rnd.randint(1, self.max_id)
                        if op < 0.55:
                            conn.execute(f"UPDATE {self.table} SET v = %s, n = n + 1 WHERE grp = %s AND id = %s", (f"u{self.transactions}", i % 7, i))
                        elif op < 0.8:
                            conn.execute(f"DELETE FROM {self.table} WHERE grp = %s AND id = %s", (i % 7, i))
                        elif op < 0.9:
                            # a key change: the row moves to another group
                            conn.execute(f"UPDATE {self.table} SET grp = grp + 7 WHERE grp = %s AND id = %s", (i % 7, i))
                        else:
                            conn.execute(f"INSERT INTO {self.table} VALUES (%s, %s, 'new', 0)", (next_id % 7, next_id))
                            next_id += 1
                    conn.commit()
                    self.transactions += 1
        except BaseException as exc:
            self.error = exc


# -- initial snapshot ---------------------------------------------------------------------------


def test_initial_snapshot_of_50000_rows_then_stream(pgdb: str, tmp_path: Path, free_port: int) -> None:
    _create(pgdb, 50_000)
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, [TABLE], out)
    p["snapshot"] = {"mode": "initial"}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        sid = wait_for(lambda: (svc.pipeline("p").get("snapshot") or {}).get("id"), what="a snapshot")
        doc = wait_snapshot_done(svc, "p", sid)
        assert doc["rows_done"] == 50_000 and doc["reason"] == "initial", doc
        assert doc["progress"][TABLE]["chunks"] == 6 and doc["progress"][TABLE]["state"] == "done", doc
        assert doc["rows_estimated"] > 0, orjson.dumps(doc).decode()
        execute(pgdb, f"UPDATE {TABLE} SET v = 'x' WHERE id % 10 = 0", f"DELETE FROM {TABLE} WHERE id % 7 = 3",
                f"INSERT INTO {TABLE} VALUES (1, 60001, 'late', 1)")
        _caught_up(svc, out, pgdb)
        metrics = svc.get("/metrics")[1]
        assert metric_value(metrics, "cdc_snapshot_rows_done", pipeline="p", table=TABLE) == 50_000
        assert metric_value(metrics, "cdc_snapshot_rows_total", pipeline="p", table=TABLE) > 0
        assert metric_value(metrics, "cdc_events_total", pipeline="p", table=TABLE, op="r") == 50_000
        assert svc.stop() == 0
    events = read_events(out)
    reads = snapshot_reads(events)
    assert len(reads) == 50_000 and len({e["id"] for e in reads}) == 50_000
    first = reads[0]
    assert first["transaction"] is None and first["before"] is None
    assert first["source"]["snapshot"] is True and first["source"]["snapshot_id"] == sid
    assert first["source"]["tx"] is None and first["source"]["lsn"]
    assert first["key"] == {"grp": 0, "id": 7} and first["after"] == {"grp": 0, "id": 7, "v": "v7", "n": 7}
    assert first["schema"] == {"name": TABLE, "version": 1}
    assert all(not e["source"]["snapshot"] for e in events if e["op"] != "r")

    # restarted: the table has a completed snapshot, so none is taken again; a table added to
    # the file later gets its initial snapshot
    execute(pgdb, "CREATE TABLE public.later (grp int, id int, v text, n int, PRIMARY KEY (grp, id))",
            "INSERT INTO public.later SELECT 1, g, 'l', g FROM generate_series(1, 300) g")
    p["source"]["tables"] = [TABLE, "public.later"]
    write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        status, doc = svc.get("/pipelines/p/snapshots")
        snaps = wait_for(lambda: [s for s in svc.get("/pipelines/p/snapshots")[1]["snapshots"] if s["id"] != sid], what="second snapshot")
        assert len(snaps) == 1 and snaps[0]["tables"] == ["public.later"], snaps
        wait_snapshot_done(svc, "p", snaps[0]["id"])
        _caught_up(svc, out, pgdb, "public.later")
        assert svc.stop() == 0
    assert len(snapshot_reads(read_events(out))) == 50_300


def test_initial_only_reads_the_tables_and_finishes(pgdb: str, tmp_path: Path, free_port: int) -> None:
    _create(pgdb, 2_500)
    execute(pgdb, "CREATE TABLE public.keyless (a int, b text)", "INSERT INTO public.keyless SELECT g % 3, 'x' FROM generate_series(1, 40) g")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, [TABLE, "public.keyless"], out)
    p["snapshot"] = {"mode": "initial_only", "chunk_rows": 1000}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    code, records, stderr = run_until_exit(cfg, timeout=60)
    assert code == 0, stderr
    assert slot_row(pgdb, "cdc_p") is None  # no slot was created
    events = read_events(out)
    assert Counter(e["op"] for e in events) == {"r": 2_540}
    assert fold(events, TABLE) == _rows(pgdb)
    assert sorted((e["after"]["a"], e["key"]) for e in events if e["schema"]["name"] == "public.keyless")[:2] == [(0, None), (0, None)]
    # run again: everything is read already, it finishes at once and writes nothing
    code, _, stderr = run_until_exit(cfg, timeout=60)
    assert code == 0, stderr
    assert len(read_events(out)) == 2_540


# -- on demand, under concurrent writes ---------------------------------------------------------


def test_on_demand_snapshot_under_concurrent_writes(pgdb: str, tmp_path: Path, free_port: int) -> None:
    _create(pgdb, 30_000)
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, [TABLE], out)
    p["snapshot"] = {"mode": "never", "chunk_rows": 2_000}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    writer = _Writer(pgdb, 30_000)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        writer.start()
        wait_for(lambda: writer.transactions > 50, what="writer running")
        status, doc = svc.get("/pipelines/p/snapshots", method="POST", body={"tables": [TABLE]})
        assert status == 202, doc
        sid = doc["id"]
        # a second request for the same table is answered with the running snapshot
        status, again = svc.get("/pipelines/p/snapshots", method="POST", body={"tables": [TABLE]})
        assert status == 200 and again["id"] == sid, again
        wait_snapshot_done(svc, "p", sid)
        wait_for(lambda: writer.transactions > 400, timeout=60, what="more writes after the snapshot")
        writer.stop.set()
        writer.join(10)
        assert writer.error is None, writer.error
        _caught_up(svc, out, pgdb)
        assert svc.stop() == 0
    events = read_events(out)
    reads = snapshot_reads(events, sid)
    assert 15_000 < len(reads) <= 30_000
    # the stream did not stop: changes were delivered between the snapshot's first and last rows
    positions = [i for i, e in enumerate(events) if e["op"] == "r"]
    between = [e for e in events[positions[0]: positions[-1]] if e["op"] != "r"]
    assert between, "no streamed change was delivered while the snapshot ran"


# -- kill -9 in the middle ------------------------------------------------------------------------


def test_kill_mid_snapshot_resumes_from_the_next_chunk(pgdb: str, tmp_path: Path, free_port: int) -> None:
    _create(pgdb, 20_000)
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, [TABLE], out)
    p["snapshot"] = {"mode": "initial", "chunk_rows": 1_000}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    env = cdc_env()
    env["CDC_TEST_SNAPSHOT_CHUNK_DELAY_S"] = "0.15"
    with CdcService(cfg, env=env) as svc:
        sid = wait_for(lambda: (svc.pipeline("p").get("snapshot") or {}).get("id"), what="a snapshot")
        wait_for(lambda: snapshot_record(svc, "p", sid)["rows_done"] >= 5_000, timeout=60, what="5 chunks")
        execute(pgdb, f"UPDATE {TABLE} SET v = 'during' WHERE id % 100 = 1")
        svc.kill()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        (record,) = db.execute("SELECT record FROM snapshots WHERE id = ?", (sid,)).fetchone()
    saved = orjson.loads(record)["progress"][TABLE]
    assert saved["state"] == "running" and 5 <= saved["chunks"] < 20, saved
    before = len(snapshot_reads(read_events(out), sid))
    assert before >= saved["chunks"] * 1000 - 1000  # what the checkpoint covers (the file may hold a little more)

    with CdcService(cfg) as svc:
        doc = wait_snapshot_done(svc, "p", sid)
        assert doc["progress"][TABLE]["chunks"] == 21  # the last read finds no more rows
        _caught_up(svc, out, pgdb)
        assert svc.stop() == 0
    reads = snapshot_reads(read_events(out), sid)
    # continued from the next chunk: chunk numbers after the restart start where the saved
    # progress ended, and the total is one table's worth plus at most the chunk in flight
    chunk_numbers = sorted({int(e["id"].split(":")[2]) for e in reads})
    assert chunk_numbers == list(range(20)), chunk_numbers
    assert 20_000 <= len(reads) <= 20_000 + 1_000, len(reads)


# -- keyless tables, cancelling, bad requests -------------------------------------------------------


def test_keyless_table_is_read_in_one_piece(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE public.log (a int, b text)", "ALTER TABLE public.log REPLICA IDENTITY FULL",
            "INSERT INTO public.log SELECT g % 50, 'b' || g FROM generate_series(1, 5000) g")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.log"], out)
    cfg = write_config(tmp_path, [p], api_port=free_port)
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                conn.execute("INSERT INTO public.log VALUES (%s, 'w')", (i,))
                conn.execute("DELETE FROM public.log WHERE ctid = (SELECT ctid FROM public.log WHERE a = %s LIMIT 1)", (i % 50,))
                i += 1

    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        t = threading.Thread(target=write, daemon=True)
        t.start()
        status, doc = svc.get("/pipelines/p/snapshots", method="POST", body={"tables": ["public.log"]})
        assert status == 202, doc
        done = wait_snapshot_done(svc, "p", doc["id"])
        stop.set()
        t.join(10)
        assert done["progress"]["public.log"]["chunks"] >= 1

        def multiset(events: list[dict[str, Any]]) -> Counter[bytes]:
            rows: Counter[bytes] = Counter()
            snap = [i for i, e in enumerate(events) if e["op"] == "r"]
            # a keyless table's snapshot is its whole content at the point of its rows
            for e in events[snap[0]:]:
                if e["schema"]["name"] != "public.log":
                    continue
                if e["op"] in ("r", "c"):
                    rows[orjson.dumps(e["after"], option=orjson.OPT_SORT_KEYS)] += 1
                elif e["op"] == "d":
                    rows[orjson.dumps(e["before"], option=orjson.OPT_SORT_KEYS)] -= 1
            return +rows

        def table() -> Counter[bytes]:
            return Counter(orjson.dumps({"a": a, "b": b}, option=orjson.OPT_SORT_KEYS) for a, b in query(pgdb, "SELECT a, b FROM public.log"))

        wait_for(lambda: multiset(read_complete_events(out)) == table(), timeout=60, interval=0.3, what="multiset fold")
        assert svc.stop() == 0


def test_cancel_and_bad_requests(pgdb: str, tmp_path: Path, free_port: int) -> None:
    _create(pgdb, 20_000)
    execute(pgdb, "CREATE TABLE public.other (id int PRIMARY KEY)")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, [TABLE, "public.other"], out)
    p["snapshot"] = {"mode": "never", "chunk_rows": 1_000}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    env = cdc_env()
    env["CDC_TEST_SNAPSHOT_CHUNK_DELAY_S"] = "0.2"
    with CdcService(cfg, env=env) as svc:
        svc.wait_state("p", "running")
        for body, want in [
            ({"tables": ["public.nope"]}, "public.nope"),
            ({"tables": []}, "at least one table"),
            ({"tables": "public.items"}, "at least one table"),
            (None, "at least one table"),
        ]:
            status, doc = svc.get("/pipelines/p/snapshots", method="POST", body=body)
            assert status == 400 and want in doc["error"], (body, status, doc)
        status, doc = svc.get("/pipelines/nope/snapshots", method="POST", body={"tables": [TABLE]})
        assert status == 404 and "nope" in doc["error"]
        assert svc.get("/pipelines/p/snapshots/nope")[0] == 404
        assert svc.get("/pipelines/p/snapshots/nope", method="DELETE")[0] == 404
        proc = run_cli("snapshot", str(cfg), "p", "public.nope")
        assert proc.returncode not in (0, 1) and "public.nope" in proc.stderr
        proc = run_cli("snapshot", str(cfg), "nope", TABLE)
        assert proc.returncode not in (0, 1) and "nope" in proc.stderr

        # two tables in one request; the second request for one of them gets the running one
        status, doc = svc.get("/pipelines/p/snapshots", method="POST", body={"tables": [TABLE, "public.other"]})
        assert status == 202, doc
        sid = doc["id"]
        proc = run_cli("snapshot", str(cfg), "p", TABLE)
        assert proc.returncode == 0 and orjson.loads(proc.stdout)["id"] == sid, proc
        wait_for(lambda: snapshot_record(svc, "p", sid)["rows_done"] >= 2_000, what="some rows")
        waiter = subprocess.Popen(
            [sys.executable, "-m", "cdc", "snapshot", str(cfg), "p", TABLE, "--wait"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cdc_env(), text=True,
        )
        assert waiter.stdout is not None
        assert orjson.loads(waiter.stdout.readline())["id"] == sid  # following the running one
        status, doc = svc.get(f"/pipelines/p/snapshots/{sid}", method="DELETE")
        assert status == 200 and doc["state"] == "cancelled", doc
        _, stderr = waiter.communicate(timeout=30)
        assert waiter.returncode == 1 and "cancelled" in stderr, stderr
        done = snapshot_record(svc, "p", sid)["rows_done"]
        # the stream goes on; no more rows of the cancelled snapshot arrive
        execute(pgdb, f"INSERT INTO {TABLE} VALUES (1, 99999, 'after', 0)")
        wait_for(lambda: any(e["op"] == "c" for e in read_complete_events(out)), what="the stream after the cancel")
        assert svc.pipeline("p")["state"] == "running"
        reads = snapshot_reads(read_complete_events(out), sid)
        assert len(reads) <= done + 1_000
        status, listing = svc.get("/pipelines/p/snapshots")
        assert [s["state"] for s in listing["snapshots"]] == ["cancelled"]
        assert svc.stop() == 0
