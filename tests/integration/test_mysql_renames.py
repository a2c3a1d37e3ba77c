"""Renamed tables and ``columns.exclude`` on MySQL/MariaDB (docs/mysql.md, "Renamed tables").

Against the real MariaDB fixtures: ``cdc run`` with the file sink (the service as users run it,
killed with SIGKILL where the test says so), or a :class:`MySQLSource` in this process where a
test must choose the checkpoint a restart resumes from. Changes are made with plain SQL; the
tests wait with deadlines, never fixed sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc.errors import FatalError
from tests.helpers import (
    CdcService,
    dedupe,
    find_log,
    log_records,
    read_complete_events,
    read_events,
    run_until_exit,
    wait_for,
    write_config,
)
from tests.integration.test_mysql_snapshot_reader import Harness, Stream, read_all
from tests.integration.test_mysql_source import my_pipeline, service, wait_events
from tests.mariadb_fixtures import MyDB


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """MySQL sources of this test (stream and snapshot reader), closed at its end."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def _ids(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(op, table, id) of each event, in delivery order."""
    return [(e["op"], e["schema"]["name"], (e["after"] or e["before"])["id"]) for e in events]


def _renamed_logs(svc: CdcService) -> list[tuple[str, str]]:
    return [
        (r["old"], r["new"]) for r in log_records(svc.logs()) if r.get("event") == "table_renamed"
    ]


# -- following a rename while streaming ---------------------------------------------------------


def test_rename_while_streaming_follows_the_table_in_every_form(
    mydb_any: MyDB, tmp_path: Path, free_port: int
) -> None:
    db = mydb_any
    other = f"{db.name}_x"
    db.server.execute(f"CREATE DATABASE `{other}`")
    try:
        db.execute(
            "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(10))",
            "CREATE TABLE noise (id INT PRIMARY KEY)",
        )
        out = tmp_path / "out"
        with service(
            tmp_path, free_port, [my_pipeline("ren", db.dsn(), [db.table("a")], out)]
        ) as svc:
            db.execute("INSERT INTO a VALUES (1, 'one')")
            wait_events(out, 1, svc)
            db.execute(
                "RENAME /* moved */ TABLE `a` TO `b`",  # backticks, a comment, the default db
                "INSERT INTO b VALUES (2, 'two')",
                "UPDATE b SET v = 'uno' WHERE id = 1",
                f"ALTER TABLE `{db.name}`.b RENAME TO c",
                "INSERT INTO c VALUES (3, 'three')",
                "ALTER TABLE c ADD COLUMN z INT, RENAME AS d",  # with another change
                "INSERT INTO d VALUES (4, 'four', 4)",
                "INSERT INTO noise VALUES (1)",
                f"RENAME TABLE d TO `{other}`.e",  # into another database
                f"INSERT INTO `{other}`.e VALUES (5, 'five', 5)",
            )
            events = wait_events(out, 6, svc)
            renamed = wait_for(
                lambda: _renamed_logs(svc) if len(_renamed_logs(svc)) == 4 else None, 10
            )
        t = db.table
        assert _ids(events) == [
            ("c", t("a"), 1),
            ("c", t("b"), 2),
            ("u", t("b"), 1),
            ("c", t("c"), 3),
            ("c", t("d"), 4),
            ("c", f"{other}.e", 5),
        ]
        # a new name starts its own version history at 1, even with a new column list
        assert {e["schema"]["version"] for e in events} == {1}
        assert events[4]["after"] == {"id": 4, "v": "four", "z": 4}
        assert renamed == [
            (t("a"), t("b")),
            (t("b"), t("c")),
            (t("c"), t("d")),
            (t("d"), f"{other}.e"),
        ]
        record = find_log(log_records(svc.logs()), "table_renamed", old=t("a"))
        assert record is not None and record["level"] == "warning"
        assert "tables" in record["note"] and t("b") in record["note"]
        assert read_events(out) == events  # nothing else, nothing twice
    finally:
        db.server.execute(f"DROP DATABASE IF EXISTS `{other}`")


def test_multi_table_rename_and_an_unlisted_table_taking_a_listed_name(
    mydb: MyDB, tmp_path: Path, free_port: int
) -> None:
    mydb.execute(*(f"CREATE TABLE {n} (id INT PRIMARY KEY)" for n in ("a", "b", "x", "c")))
    t = mydb.table
    out = tmp_path / "out"
    pipeline = my_pipeline("multi", mydb.dsn(), [t("a"), t("b"), t("c")], out)
    with service(tmp_path, free_port, [pipeline]) as svc:
        mydb.execute(
            "RENAME TABLE a TO a2, x TO x2, b TO tmp, tmp TO b2",
            "INSERT INTO a2 VALUES (1)",
            "INSERT INTO x2 VALUES (2)",  # unlisted: not streamed
            "INSERT INTO b2 VALUES (3)",
            "DROP TABLE c",
            "RENAME TABLE x2 TO c",  # an unlisted table takes the listed name c
            "INSERT INTO c VALUES (4)",
        )
        events = wait_events(out, 3, svc)
        records = log_records(svc.logs())
    assert _ids(events) == [("c", t("a2"), 1), ("c", t("b2"), 3), ("c", t("c"), 4)]
    assert _renamed_logs(svc) == [(t("a"), t("a2")), (t("b"), t("tmp")), (t("tmp"), t("b2"))]
    replaced = find_log(records, "listed_table_replaced", table=t("c"))
    assert replaced is not None and replaced["renamed_from"] == t("x2")


# -- restarts across a rename -------------------------------------------------------------------


def test_kill_9_after_a_rename_then_the_old_name_is_fatal_and_the_new_one_resumes(
    mydb_any: MyDB, tmp_path: Path, free_port: int
) -> None:
    db = mydb_any
    db.execute("CREATE TABLE a (id INT PRIMARY KEY, v INT)")
    out = tmp_path / "out"
    old = [my_pipeline("crash", db.dsn(), [db.table("a")], out)]
    config = write_config(tmp_path, old, api_port=free_port)
    with CdcService(config) as svc:
        svc.wait_state("crash", "running")
        db.execute("INSERT INTO a VALUES (1, 1)", "INSERT INTO a VALUES (2, 2)")
        wait_events(out, 2, svc)
        db.execute(
            "RENAME TABLE a TO b", "INSERT INTO b VALUES (3, 3)", "UPDATE b SET v = 20 WHERE id = 2"
        )
        wait_events(out, 4, svc)
        wait_for(lambda: _renamed_logs(svc), 10, what="the table_renamed warning")
        svc.kill()
    db.execute("INSERT INTO b VALUES (4, 4)")

    # (a) the file still lists the old name, which no longer exists: fatal, saying what to do
    code, records, stderr = run_until_exit(config, timeout=60)
    assert code == 1, stderr[-3000:]
    failed = find_log(records, "pipeline_failed")
    assert failed is not None and failed["error_kind"] == "source_config", stderr[-3000:]
    message = failed["error"]
    assert f"{db.table('a')} was renamed to {db.table('b')}" in message
    assert f"list {db.table('b')}" in message and "tables" in message

    # listing the new name: it resumes, nothing is lost
    new = [my_pipeline("crash", db.dsn(), [db.table("b")], out)]
    config = write_config(tmp_path, new, api_port=free_port)
    with CdcService(config) as svc:
        svc.wait_state("crash", "running")
        db.execute("DELETE FROM b WHERE id = 1")
        wait_for(
            lambda: ("d", db.table("b"), 1) in _ids(read_complete_events(out)),
            30,
            what="the delete after the restart",
        )
        assert svc.stop() == 0
    events = dedupe(read_events(out))
    got = [x for x in _ids(events)]
    for change in [
        ("c", db.table("a"), 1),
        ("c", db.table("a"), 2),
        ("c", db.table("b"), 3),
        ("u", db.table("b"), 2),
        ("c", db.table("b"), 4),
        ("d", db.table("b"), 1),
    ]:
        assert change in got, (change, got)
    assert len(got) == 6, got


def test_restart_before_the_rename_replays_the_old_names_events(
    mydb_any: MyDB, harness: Harness
) -> None:
    """The checkpoint is before the rename (chosen here: the position the first run started
    at): listing the new name, the events of the old name up to the rename are replayed under
    the old name, as they were, and the rename is not followed a second time."""
    db = mydb_any
    db.execute(
        "CREATE TABLE a (id INT PRIMARY KEY, v INT)", "CREATE TABLE noise (id INT PRIMARY KEY)"
    )
    first = harness.source(db, [db.table("a")], name="ren")
    start = first.open(None)
    db.execute(
        "INSERT INTO a VALUES (1, 1)",
        "ALTER TABLE a RENAME TO b",
        "INSERT INTO b VALUES (2, 2)",
        "UPDATE b SET v = 10 WHERE id = 1",
    )
    stream = Stream(first)
    events = stream.wait_events(3)
    assert [(e.op, e.schema.name) for e in events] == [
        ("c", db.table("a")),
        ("c", db.table("b")),
        ("u", db.table("b")),
    ]
    first.close()

    # (a) the old name listed again, and gone: fatal at open
    stale = harness.source(db, [db.table("a")], name="ren")
    with pytest.raises(FatalError) as info:
        stale.open(str(start))
    assert info.value.kind == "source_config"
    assert f"renamed to {db.table('b')}" in str(info.value)
    stale.close()

    # (b) the new name listed, resuming from before the rename: nothing dropped
    again = harness.source(db, [db.table("b")], name="ren")
    again.open(str(start))
    db.execute("INSERT INTO noise VALUES (1)", "INSERT INTO b VALUES (3, 3)")
    replayed = Stream(again).wait_events(4)
    assert [(e.id, e.op, e.schema.name, e.schema.version) for e in replayed[:3]] == [
        (e.id, e.op, e.schema.name, e.schema.version) for e in events
    ]
    assert [e.after for e in replayed[:3]] == [e.after for e in events]
    assert (replayed[3].op, replayed[3].schema.name, replayed[3].after) == (
        "c",
        db.table("b"),
        {"id": 3, "v": 3},
    )
    assert again.tables == {db.table("b")}


# -- columns.exclude naming a column the table does not have -------------------------------------


def test_exclude_naming_a_missing_column_stops_the_pipeline(
    mydb: MyDB, tmp_path: Path, free_port: int
) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY, secret VARCHAR(20), v INT)")
    out = tmp_path / "out"
    pipeline = my_pipeline(
        "typo",
        mydb.dsn(),
        [mydb.table("t")],
        out,
        columns={"exclude": {mydb.table("t"): ["secrte"]}},
    )
    config = write_config(tmp_path, [pipeline], api_port=free_port)
    with CdcService(config) as svc:
        svc.wait_state("typo", "running")
        mydb.execute("INSERT INTO t VALUES (1, 'hunter2', 1)")
        failed = wait_for(
            lambda: find_log(log_records(svc.logs()), "pipeline_failed"),
            30,
            what="the pipeline to fail",
        )
    assert failed["error_kind"] == "config"
    message = failed["error"]
    assert "'secrte'" in message and mydb.table("t") in message
    assert "id, secret, v" in message and "columns.exclude" in message
    assert "hunter2" not in out.read_text() if out.is_file() else True
    assert all("hunter2" not in str(e) for e in read_events(out)) if out.exists() else True


def test_exclude_typo_in_the_snapshot_reader_and_a_dropped_excluded_column(
    mydb: MyDB, harness: Harness
) -> None:
    mydb.execute(
        "CREATE TABLE t (id INT PRIMARY KEY, secret VARCHAR(20), v INT)",
        "INSERT INTO t VALUES (1, 'x', 1)",
    )
    table = mydb.table("t")
    typo = harness.source(mydb, [table], name="typo", exclude={table: ["secrte"]})
    with pytest.raises(FatalError) as info:
        read_all(harness.reader(typo), table, None)
    assert info.value.kind == "config" and "'secrte'" in str(info.value)

    # a column excluded, seen, then dropped: nothing to hide any more, the pipeline goes on
    ok = harness.source(mydb, [table], name="ok", exclude={table: ["secret"]})
    ok.open(None)
    mydb.execute(
        "INSERT INTO t VALUES (2, 'hidden', 2)",
        "ALTER TABLE t DROP COLUMN secret",
        "INSERT INTO t VALUES (3, 3)",
    )
    events = Stream(ok).wait_events(2)
    assert [e.after for e in events] == [{"id": 2, "v": 2}, {"id": 3, "v": 3}]


def test_exclude_of_a_column_added_after_the_checkpoint_is_no_typo(
    mydb: MyDB, harness: Harness
) -> None:
    """Events from before an ``ADD COLUMN`` lack the column that the file now excludes: the
    table has it, so it is no typo, and the new rows have it hidden."""
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    table = mydb.table("t")
    first = harness.source(mydb, [table], name="first")
    start = first.open(None)
    mydb.execute(
        "INSERT INTO t VALUES (1, 1)",
        "ALTER TABLE t ADD COLUMN added VARCHAR(20)",
        "INSERT INTO t VALUES (2, 2, 'hidden')",
    )
    assert len(Stream(first).wait_events(2)) == 2
    again = harness.source(mydb, [table], name="again", exclude={table: ["added"]})
    again.open(str(start))
    events = Stream(again).wait_events(2)
    assert [e.after for e in events] == [{"id": 1, "v": 1}, {"id": 2, "v": 2}]
