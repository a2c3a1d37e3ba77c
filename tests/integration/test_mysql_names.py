"""Table names that need quoting on MariaDB (a dot, a space, a backtick): listed in backticks or
double quotes, streamed and snapshotted under one canonical name."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import (
    CdcService,
    read_complete_events,
    read_schemas,
    run_cli,
    wait_for,
    write_config,
)
from tests.integration.test_mysql_source import my_pipeline
from tests.mariadb_fixtures import MyDB


def test_quoted_database_and_table_names_are_captured(mydb: MyDB, tmp_path: Path, free_port: int) -> None:
    mydb.execute(
        "CREATE TABLE `my.t ``x` (id INT PRIMARY KEY, v VARCHAR(20), secret VARCHAR(20))",
        "INSERT INTO `my.t ``x` VALUES (1, 'one', 's1')",
    )
    listed = f"`{mydb.name}`.`my.t ``x`"
    canonical = f'{mydb.name}."my.t `x"'
    out = tmp_path / "out"
    p = my_pipeline("m", mydb.dsn(), [listed], out)
    p["snapshot"] = {"mode": "initial"}
    p["columns"] = {"exclude": {f'"{mydb.name}"."my.t `x"': ["secret"]}}  # the same table, other quotes
    cfg = write_config(tmp_path, [p], api_port=free_port)
    assert run_cli("validate", str(cfg)).returncode == 0
    with CdcService(cfg):
        wait_for(lambda: len(read_complete_events(out)) >= 1, 60, what="the snapshot row")
        mydb.execute("INSERT INTO `my.t ``x` VALUES (2, 'two', 's2')", "UPDATE `my.t ``x` SET v = 'uno' WHERE id = 1")
        events = wait_for(lambda: (ev := read_complete_events(out)) and len(ev) >= 3 and ev, 30, what="the stream")
    assert [(e["op"], e["key"]) for e in events] == [("r", {"id": 1}), ("c", {"id": 2}), ("u", {"id": 1})]
    for e in events:
        assert e["schema"]["name"] == canonical
        assert (e["source"]["db"], e["source"]["table"]) == (mydb.name, "my.t `x")
        assert "secret" not in e["after"]
    assert {s["name"] for s in read_schemas(out)} == {canonical}
