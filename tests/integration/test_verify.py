"""`cdc verify` (contract section 12, section 1's row) against real servers while the pipeline
runs: PostgreSQL 15 and 18 and MariaDB sources, the file sink. A healthy pipeline under a
concurrent writer verifies equal (exit 0, nothing reported); a row deleted from the sink's
output and a row changed in it are found, with their keys, and exit 3."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from tests.helpers import (
    CdcService,
    execute,
    fold,
    pg_pipeline,
    read_events,
    run_cli,
    wait_for,
    write_config,
)
from tests.integration.test_mysql_source import my_pipeline, table_state
from tests.mariadb_fixtures import MyDB

ROWS = 600
#: rows the writer never touches (the tests tamper with their events)
QUIET = 100


@contextmanager
def _writer(step: Callable[[random.Random, int], None]) -> Iterator[list[int]]:
    """Run ``step`` in a loop on a thread until the block ends; yields the step count."""
    stop = threading.Event()
    done = [0]
    errors: list[BaseException] = []

    def loop() -> None:
        rnd = random.Random(7)
        while not stop.is_set():
            try:
                step(rnd, done[0])
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                return
            done[0] += 1
            time.sleep(0.002)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors


def _tamper(out: Path, table: str, key: dict[str, object] | None, old: bytes, new: bytes, *, first: bool = False) -> None:
    """Rewrite, in place and at the same length, every event line of ``table`` at ``key`` (only
    the first with ``first``) that holds ``old`` (the sink keeps appending meanwhile)."""
    assert len(old) == len(new)
    key_json = orjson.dumps(key)
    hits = 0
    for path in sorted(out.glob("events-*.jsonl")):
        with open(path, "r+b") as fh:
            offset = 0
            for line in fh.read().splitlines(keepends=True):
                if b'"key":' + key_json in line and f'"name":"{table}"'.encode() in line and old in line:
                    fh.seek(offset)
                    fh.write(line.replace(old, new, 1))
                    hits += 1
                    if first:
                        return
                offset += len(line)
    assert hits, f"no event of {table} {key} holds {old!r}"


def _verify(cfg: Path, *args: str) -> tuple[int, str, str]:
    proc = run_cli("verify", str(cfg), *args, timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


# -- PostgreSQL ----------------------------------------------------------------------------------


PG_TABLE = (
    "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(12,2), ts timestamptz, doc jsonb, "
    "b bytea, f float8, big bigint)"
)


def _pg_setup(pgdb: str) -> None:
    execute(
        pgdb,
        PG_TABLE,
        f"INSERT INTO t SELECT i, 'v' || i, i * 1.25, '2026-11-28 12:00:00+00'::timestamptz + i * interval '1 s', "
        f"jsonb_build_object('i', i, 'x', 1.50), decode(md5(i::text), 'hex'), i / 3.0, 9007199254740993 + i "
        f"FROM generate_series(1, {ROWS}) i",
        "CREATE TABLE k (a int, b text)",
        "ALTER TABLE k REPLICA IDENTITY FULL",
        "INSERT INTO k SELECT i % 5, 'k' || (i % 5) FROM generate_series(1, 40) i",
    )


def _pg_step(pgdb: str) -> Callable[[random.Random, int], None]:
    import psycopg

    conn = psycopg.connect(pgdb, autocommit=True)

    def step(rnd: random.Random, n: int) -> None:
        i = rnd.randint(QUIET + 1, ROWS)
        kind = n % 4
        if kind == 0:
            conn.execute("UPDATE t SET v = %s, n = n + 1, doc = doc || '{\"u\": 1}' WHERE id = %s", (f"u{n}", i))
        elif kind == 1:
            conn.execute("DELETE FROM t WHERE id = %s", (i,))
        elif kind == 2:
            conn.execute(
                "INSERT INTO t (id, v, n) VALUES (%s, 'new', 0.10) ON CONFLICT (id) DO UPDATE SET v = 'again'",
                (i,),
            )
        else:
            with conn.transaction():
                conn.execute("INSERT INTO k VALUES (%s, 'w')", (n,))
                conn.execute("UPDATE t SET ts = now() WHERE id = %s", (rnd.randint(QUIET + 1, ROWS),))

    return step


def test_postgres_file_sink_healthy_then_damaged(pgdb: str, tmp_path: Path, free_port: int) -> None:
    _pg_setup(pgdb)
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.t", "public.k"], out)
    p["snapshot"] = {"mode": "initial", "chunk_rows": 64}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        wait_for(lambda: len(fold(read_events(out), "public.t")) == ROWS or None,
                 timeout=60, interval=0.3, what="the snapshot in the sink")

        # healthy, while a writer changes rows (updates, deletes, inserts, a keyless table)
        with _writer(_pg_step(pgdb)) as done:
            code, stdout, stderr = _verify(cfg, "p")
            assert done[0] > 20, done
        assert code == 0, stdout + stderr
        lines = stdout.splitlines()
        assert len(lines) == 2, stdout
        assert lines[0].startswith("public.t: ") and lines[0].endswith(
            " compared, 0 missing, 0 extra, 0 differing"
        ), lines
        assert int(lines[0].split()[1]) >= ROWS - 300
        assert lines[1].startswith("public.k: ") and lines[1].endswith(" 0 missing, 0 extra, 0 differing"), lines

        # damage the sink's output: id 7's row read gone (op r -> d), id 9's value changed
        _tamper(out, "public.t", {"id": 7}, b'"op":"r"', b'"op":"d"')
        _tamper(out, "public.t", {"id": 9}, b'"v":"v9"', b'"v":"x9"')
        _tamper(out, "public.k", None, b'"b":"k3"', b'"b":"z3"', first=True)  # one keyless row
        code, stdout, stderr = _verify(cfg, "p", "public.t")
        assert code == 3, stdout + stderr
        (line,) = stdout.splitlines()
        assert line.startswith("public.t: ") and line.endswith(
            ' compared, 1 missing, 0 extra, 1 differing; missing {"id": 7}; differing {"id": 9}'
        ), line

        code, stdout, stderr = _verify(cfg, "p", "--json")
        assert code == 3, stdout + stderr
        doc = orjson.loads(stdout)
        t, k = doc["tables"]
        assert t["table"] == "public.t" and (t["missing"], t["extra"], t["differing"]) == (1, 0, 1), t
        assert t["examples"] == {"missing": [{"id": 7}], "extra": [], "differing": [{"id": 9}]}
        assert t["compared"] == int(line.split()[1])
        assert k["table"] == "public.k" and k["missing"] == 1 and k["extra"] == 1, k
        assert k["examples"]["missing"] == [{"a": 3, "b": "k3"}], k
        assert k["examples"]["extra"] == [{"a": 3, "b": "z3"}], k
        assert svc.stop() == 0


def test_verify_refuses_what_it_cannot_run(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")], api_port=free_port)
    code, _, stderr = _verify(cfg, "nope")
    assert code == 1 and "nope" in stderr
    code, _, stderr = _verify(cfg, "p", "public.other")
    assert code == 1 and "public.other" in stderr
    code, _, stderr = _verify(cfg, "p", "--timeout", "1")
    assert code == 1 and "no checkpoint to wait for" in stderr and "did not reach the source position" in stderr, stderr
    # the service ran once, then stopped: the sink never reaches a later read's position
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        assert svc.stop() == 0
    execute(pgdb, "INSERT INTO t VALUES (2)")
    code, _, stderr = _verify(cfg, "p", "--timeout", "1")
    assert code == 1 and "did not reach the source position" in stderr, stderr


# -- MariaDB -------------------------------------------------------------------------------------


def test_mariadb_file_sink_healthy_then_damaged(mydb_any: MyDB, tmp_path: Path, free_port: int) -> None:
    db = mydb_any
    db.execute(
        "CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(40), d DECIMAL(12,2), ts DATETIME(6), "
        "j JSON, bits BIT(10))",
        f"INSERT INTO items SELECT seq, CONCAT('v', seq), seq * 1.25, '2026-11-28 12:00:00' + INTERVAL seq SECOND, "
        f"JSON_OBJECT('i', seq), seq FROM seq_1_to_{ROWS}",
    )
    table = db.table("items")
    out = tmp_path / "out"
    p = my_pipeline("m", db.dsn(), [table], out, snapshot={"mode": "initial", "chunk_rows": 64})
    cfg = write_config(tmp_path, [p], api_port=free_port)
    conn = db.connect(autocommit=True)

    def step(rnd: random.Random, n: int) -> None:
        i = rnd.randint(QUIET + 1, ROWS)
        with conn.cursor() as cur:
            if n % 3 == 0:
                cur.execute("UPDATE items SET v = %s, d = d + 1 WHERE id = %s", (f"u{n}", i))
            elif n % 3 == 1:
                cur.execute("DELETE FROM items WHERE id = %s", (i,))
            else:
                cur.execute("REPLACE INTO items (id, v, d) VALUES (%s, 'new', 0.10)", (i,))

    with CdcService(cfg) as svc:
        svc.wait_state("m", "running")
        cols = "id, v, d, ts, j, bits"
        wait_for(lambda: len(fold(read_events(out), table)) == ROWS or None, timeout=60, interval=0.3,
                 what="the snapshot in the sink")
        assert fold(read_events(out), table).keys() == table_state(db, table, ["id"], cols).keys()
        with _writer(step) as done:
            code, stdout, stderr = _verify(cfg, "m")
            assert done[0] > 20, done
        assert code == 0, stdout + stderr
        assert stdout.strip().startswith(f"{table}: ") and stdout.strip().endswith(
            " compared, 0 missing, 0 extra, 0 differing"
        ), stdout

        _tamper(out, table, {"id": 7}, b'"op":"r"', b'"op":"d"')
        _tamper(out, table, {"id": 9}, b'"v":"v9"', b'"v":"x9"')
        code, stdout, stderr = _verify(cfg, "m", table)
        assert code == 3, stdout + stderr
        assert stdout.strip().endswith(
            ' compared, 1 missing, 0 extra, 1 differing; missing {"id": 7}; differing {"id": 9}'
        ), stdout
        assert svc.stop() == 0
    conn.close()


@pytest.mark.parametrize("pg", ["pg15"], indirect=True)
def test_a_row_the_sink_kept_is_extra(pgdb: str, tmp_path: Path, free_port: int) -> None:
    """A delete the sink's output lost (its event turned into an update) leaves an extra row."""
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 50) i")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.t"], out)
    p["snapshot"] = {"mode": "initial"}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        wait_for(lambda: len(fold(read_events(out), "public.t")) == 50 or None, timeout=60, what="the snapshot")
        execute(pgdb, "DELETE FROM t WHERE id = 30")
        wait_for(lambda: any(e["op"] == "d" for e in read_events(out)), what="the delete")
        code, stdout, _ = _verify(cfg, "p")
        assert code == 0, stdout
        _tamper(out, "public.t", {"id": 30}, b'"op":"d"', b'"op":"x"')  # an op no reader applies
        code, stdout, stderr = _verify(cfg, "p")
        assert code == 3, stdout + stderr
        assert stdout.strip() == 'public.t: 49 compared, 0 missing, 1 extra, 0 differing; extra {"id": 30}', stdout
        assert svc.stop() == 0


# -- Kafka -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pg", ["pg15"], indirect=True)
def test_postgres_kafka_sink_healthy_then_damaged(pgdb: str, tmp_path: Path, free_port: int) -> None:
    from confluent_kafka import Producer

    from tests.kafka_harness import KafkaHarness, shared_broker

    _pg_setup(pgdb)
    harness = KafkaHarness(tmp_path, shared_broker())
    p = pg_pipeline("p", pgdb, ["public.t", "public.k"], tmp_path / "unused")
    p["snapshot"] = {"mode": "initial", "chunk_rows": 64}
    p["sink"] = harness.sink_config()
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        wait_for(lambda: sum(1 for e in harness.events() if e["op"] == "r") >= ROWS + 40 or None,
                 timeout=90, interval=0.5, what="the snapshot in the topics")
        with _writer(_pg_step(pgdb)) as done:
            code, stdout, stderr = _verify(cfg, "p")
            assert done[0] > 20, done
        assert code == 0, stdout + stderr
        assert [line.split(":")[0] for line in stdout.splitlines()] == ["public.t", "public.k"], stdout
        assert all(line.endswith(" 0 missing, 0 extra, 0 differing") for line in stdout.splitlines()), stdout

        # damage the topic: a delete of id 7 and a changed id 9, on their keys' partitions
        topic = f"{harness.prefix}.p.public.t"
        by_key = {orjson.dumps(e["key"]): e for e in harness.events() if e["schema"]["name"] == "public.t" and e["key"]}
        gone = dict(by_key[b'{"id":7}'], op="d", after=None, id="fake-7")
        changed = dict(by_key[b'{"id":9}'], id="fake-9")
        changed["after"] = dict(changed["after"], v="x9")
        producer = Producer({"bootstrap.servers": harness.bootstrap, "partitioner": "murmur2_random"})
        for event in (gone, changed):
            producer.produce(topic, key=orjson.dumps(event["key"]), value=orjson.dumps(event))
        assert producer.flush(30) == 0
        code, stdout, stderr = _verify(cfg, "p", "public.t")
        assert code == 3, stdout + stderr
        assert stdout.strip().endswith(
            ' compared, 1 missing, 0 extra, 1 differing; missing {"id": 7}; differing {"id": 9}'
        ), stdout
        assert svc.stop() == 0


# -- the postgres sink's target layout (contract section 11) ----------------------------------------


def _copy_to_target(source_dsn: str, target_dsn: str, create: str, table: str, soft: bool) -> None:
    """Lay out ``table`` in the target as the postgres sink does (same columns, types and key;
    ``__deleted`` with ``deletes: soft``) and copy the source's rows into it."""
    import psycopg

    with psycopg.connect(source_dsn) as src, psycopg.connect(target_dsn, autocommit=True) as dst:
        dst.execute(create)
        if soft:
            dst.execute(f"ALTER TABLE {table} ADD COLUMN __deleted boolean NOT NULL DEFAULT false")
        cols = [r[0] for r in src.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (table,)).fetchall()]
        col_list = ", ".join(cols)
        with src.cursor().copy(f"COPY {table} ({col_list}) TO STDOUT") as out, dst.cursor().copy(
            f"COPY {table} ({col_list}) FROM STDIN"
        ) as into:
            for data in out:
                into.write(data)


@pytest.fixture
def target_db(pg: object, pg15: object, pg18: object) -> Iterator[str]:
    """A database for the sink's tables on the other server (PostgreSQL 15 and 18 as targets)."""
    from tests.helpers import create_database, drop_database

    server = pg18 if pg is pg15 else pg15
    name, dsn = create_database(server)
    try:
        yield dsn
    finally:
        drop_database(server, name)


def test_postgres_sink_tables_by_checksums(pgdb: str, target_db: str, tmp_path: Path, free_port: int) -> None:
    _pg_setup(pgdb)
    execute(pgdb, "CREATE TABLE w (a text, b int, PRIMARY KEY (b, a))", "INSERT INTO w SELECT 'k' || i, i % 9 FROM generate_series(1, 300) i")
    _copy_to_target(pgdb, target_db, PG_TABLE, "t", soft=True)
    _copy_to_target(pgdb, target_db, "CREATE TABLE k (a int, b text)", "k", soft=True)
    _copy_to_target(pgdb, target_db, "CREATE TABLE w (a text, b int, PRIMARY KEY (b, a))", "w", soft=True)
    execute(
        target_db,
        "CREATE TABLE public.cdc_sink_positions (pipeline text PRIMARY KEY, position text, updated_at timestamptz)",
        # a target that holds every change up to a position beyond the source's current one
        "INSERT INTO public.cdc_sink_positions VALUES ('p', '{\"count\": 1, \"source\": \"FFFFFFFF/0\"}', now())",
    )
    p = pg_pipeline("p", pgdb, ["public.t", "public.k", "public.w"], tmp_path / "unused")
    p["snapshot"] = {"mode": "never", "chunk_rows": 50}
    p["sink"] = {"type": "postgres", "dsn": target_db, "deletes": "soft"}
    cfg = write_config(tmp_path, [p], api_port=free_port)

    code, stdout, stderr = _verify(cfg, "p")
    assert code == 0, stdout + stderr
    assert stdout.splitlines() == [
        f"public.t: {ROWS} compared, 0 missing, 0 extra, 0 differing",
        "public.k: 40 compared, 0 missing, 0 extra, 0 differing",
        "public.w: 300 compared, 0 missing, 0 extra, 0 differing",
    ], stdout

    execute(
        target_db,
        "UPDATE t SET __deleted = true WHERE id = 7",  # soft-deleted: not a held row
        "UPDATE t SET n = n + 0.01 WHERE id = 9",
        "INSERT INTO t (id, v) VALUES (100000, 'ghost')",
        "DELETE FROM w WHERE a = 'k10'",
        "DELETE FROM k WHERE ctid = (SELECT min(ctid) FROM k WHERE a = 3)",
    )
    code, stdout, stderr = _verify(cfg, "p", "--json")
    assert code == 3, stdout + stderr
    t, k, w = orjson.loads(stdout)["tables"]
    assert t == {
        "table": "public.t", "compared": ROWS, "missing": 1, "extra": 1, "differing": 1,
        "examples": {"missing": [{"id": 7}], "extra": [{"id": 100000}], "differing": [{"id": 9}]},
    }, t
    assert (k["missing"], k["extra"], k["examples"]["missing"]) == (1, 0, [{"a": 3, "b": "k3"}]), k
    assert w["examples"] == {"missing": [{"b": 1, "a": "k10"}], "extra": [], "differing": []}, w
    code, stdout, _ = _verify(cfg, "p", "public.t")
    assert code == 3
    assert stdout.strip() == (
        f'public.t: {ROWS} compared, 1 missing, 1 extra, 1 differing; missing {{"id": 7}}; '
        'extra {"id": 100000}; differing {"id": 9}'
    ), stdout
