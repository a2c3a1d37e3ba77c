"""DDL against listed tables while the stream runs or is behind (contract section 4), from
PostgreSQL's own test_decoding ``ddl.sql``: a renamed table keeps every change, keys describe
the row as it was when written, a typo in ``columns.exclude`` stops the pipeline, and names
that need quoting can be listed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import (
    CdcService,
    execute,
    find_log,
    pg_pipeline,
    read_complete_events,
    read_schemas,
    run_cli,
    run_until_exit,
    wait_for,
    write_config,
)


def _wait_events(out: Path, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (ev := read_complete_events(out)) and len(ev) >= n and ev, timeout, interval=0.1,
        what=f"{n} events",
    )


def _changes(events: list[dict[str, Any]]) -> list[tuple[str, str, Any, Any]]:
    return [
        (e["op"], e["schema"]["name"], e["key"], (e["after"] or e["before"] or {}).get("data"))
        for e in events
    ]


# -- renames ----------------------------------------------------------------------------------


def test_a_renamed_table_is_followed_while_streaming_and_a_restart_says_how_to_go_on(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    execute(
        pgdb,
        "CREATE TABLE tr_unique (id2 serial unique NOT NULL, data int)",
        "ALTER TABLE tr_unique REPLICA IDENTITY FULL",
    )
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.tr_unique"], out)
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO tr_unique(data) VALUES (10)")
        execute(
            pgdb,
            "ALTER TABLE tr_unique RENAME TO tr_pkey",
            "INSERT INTO tr_pkey(data) VALUES (20)",
            "DELETE FROM tr_pkey WHERE data = 10",
        )
        events = _wait_events(out, 3)
        assert svc.stop() == 0
        logs = svc.log_events()
    assert _changes(events) == [
        ("c", "public.tr_unique", None, 10),
        ("c", "public.tr_pkey", None, 20),
        ("d", "public.tr_pkey", None, 10),
    ]
    warning = find_log(logs, "table_renamed")
    assert warning is not None and warning["listed"] == "public.tr_unique" and warning["streamed"] == "public.tr_pkey"
    # (versions that first appear in one batch are written in name order)
    assert sorted(s["name"] for s in read_schemas(out)) == ["public.tr_pkey", "public.tr_unique"]

    # the file still names the old table: a clear stop that names the new one
    code, records, stderr = run_until_exit(cfg)
    assert code == 1, stderr[-3000:]
    failed = find_log(records, "pipeline_failed", pipeline="p")
    assert failed is not None and failed["error_kind"] == "source_config"
    assert "renamed to public.tr_pkey" in failed["error"] and "list public.tr_pkey in `tables`" in failed["error"]

    # the file names the new table: the pipeline goes on where it was, nothing again, nothing lost
    p["source"]["tables"] = ["public.tr_pkey"]
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO tr_pkey(data) VALUES (30)")
        events = _wait_events(out, 4)
        assert svc.stop() == 0
    assert _changes(events)[3:] == [("c", "public.tr_pkey", None, 30)]
    assert len(events) == 4


def test_changes_from_before_a_rename_are_delivered_when_the_stream_was_behind(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    execute(pgdb, "CREATE TABLE before_name (id int PRIMARY KEY, data int)")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.before_name"], out)
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO before_name VALUES (1, 1)")
        _wait_events(out, 1)
        assert svc.stop() == 0
    # while the service is down: changes, the rename, more changes
    execute(
        pgdb,
        "INSERT INTO before_name VALUES (2, 2)",
        "ALTER TABLE before_name RENAME TO after_name",
        "INSERT INTO after_name VALUES (3, 3)",
        "UPDATE after_name SET data = 20 WHERE id = 2",
    )
    p["source"]["tables"] = ["public.after_name"]  # the operator lists the new name
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        events = _wait_events(out, 4)
        assert svc.stop() == 0
    assert _changes(events) == [
        ("c", "public.before_name", {"id": 1}, 1),
        ("c", "public.before_name", {"id": 2}, 2),
        ("c", "public.after_name", {"id": 3}, 3),
        ("u", "public.after_name", {"id": 2}, 20),
    ]


# -- keys as they were ----------------------------------------------------------------------------


def test_a_primary_key_added_while_the_stream_is_behind_does_not_key_older_rows(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    execute(
        pgdb,
        "CREATE TABLE tr_pkey (id2 serial unique NOT NULL, data int)",
        "ALTER TABLE tr_pkey REPLICA IDENTITY FULL",
    )
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.tr_pkey"], out)
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        assert svc.stop() == 0
    execute(
        pgdb,
        "INSERT INTO tr_pkey(data) VALUES (1)",
        "ALTER TABLE tr_pkey ADD COLUMN id serial primary key",
        "INSERT INTO tr_pkey(data) VALUES (2)",
    )
    with CdcService(cfg) as svc:
        events = _wait_events(out, 2)
        assert svc.stop() == 0
        logs = svc.log_events()
    assert [(e["key"], e["schema"]["version"]) for e in events] == [(None, 1), ({"id": 2}, 2)]
    schemas = {s["version"]: s for s in read_schemas(out)}
    assert schemas[1]["key"] == [] and [c["name"] for c in schemas[1]["columns"]] == ["id2", "data"]
    assert schemas[2]["key"] == ["id"]
    assert find_log(logs, "key_unknown", table="public.tr_pkey") is not None


def test_primary_key_dropped_added_and_changed_while_behind_keys_each_row_as_it_was(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    execute(pgdb, "CREATE TABLE k (a int NOT NULL, b int NOT NULL, data int, CONSTRAINT k_pk PRIMARY KEY (a))")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.k"], out)
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        assert svc.stop() == 0
    execute(
        pgdb,
        "INSERT INTO k VALUES (1, 10, 1)",
        "ALTER TABLE k DROP CONSTRAINT k_pk",
        "INSERT INTO k VALUES (2, 20, 2)",  # no key at all then
        "ALTER TABLE k ADD CONSTRAINT k_pk PRIMARY KEY (b, a)",
        "INSERT INTO k VALUES (3, 30, 3)",
        "ALTER TABLE k DROP CONSTRAINT k_pk, ADD CONSTRAINT k_pk PRIMARY KEY (b)",
        "INSERT INTO k VALUES (4, 40, 4)",
        "UPDATE k SET data = 44 WHERE b = 40",
    )
    with CdcService(cfg) as svc:
        events = _wait_events(out, 5)
        assert svc.stop() == 0
    assert [(e["op"], e["key"]) for e in events] == [
        ("c", {"a": 1}),
        ("c", None),
        ("c", {"b": 30, "a": 3}),
        ("c", {"b": 40}),
        ("u", {"b": 40}),
    ]
    # that index is gone: its column order cannot be known any more, so the key is in column order
    assert list(events[2]["key"]) == ["a", "b"]
    keys = [s["key"] for s in read_schemas(out)]
    assert keys == [["a"], [], ["a", "b"], ["b"]]
    for e in events:
        for column in e["key"] or {}:
            assert column in e["after"], e  # a key never names a column the row lacks


# -- columns.exclude ---------------------------------------------------------------------------------


def test_an_excluded_column_the_table_lacks_stops_the_pipeline(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    execute(pgdb, "CREATE TABLE people (id int PRIMARY KEY, ssn text)")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.people"], out)
    p["columns"] = {"exclude": {"public.people": ["snn"]}}  # the typo
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO people VALUES (1, '123-45-6789')")
        doc = svc.wait_state("p", "failed")
        assert svc.stop() == 0
    assert doc["last_error"]["kind"] == "config"
    assert "'snn'" in doc["last_error"]["message"] and "id, ssn" in doc["last_error"]["message"]
    assert "123-45-6789" not in out.joinpath("events-000001.jsonl").read_text() if out.exists() else True
    assert not read_complete_events(out)


# -- names that need quoting ------------------------------------------------------------------------------


def test_quoted_schema_and_table_names_are_captured(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(
        pgdb,
        'CREATE SCHEMA "Quoted_"" . Schema"',
        'CREATE TABLE "Quoted_"" . Schema"."Quoted_"" . Table" (id int PRIMARY KEY, "the data" text, secret text)',
        'INSERT INTO "Quoted_"" . Schema"."Quoted_"" . Table" VALUES (1, \'one\', \'s1\')',
    )
    name = '"Quoted_"" . Schema"."Quoted_"" . Table"'
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, [name], out)
    p["snapshot"] = {"mode": "initial"}
    # the same table, written with backticks in columns.exclude
    p["columns"] = {"exclude": {'`Quoted_" . Schema`.`Quoted_" . Table`': ["secret"]}}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    assert run_cli("validate", str(cfg)).returncode == 0
    with CdcService(cfg) as svc:
        _wait_events(out, 1)
        execute(pgdb, f"INSERT INTO {name} VALUES (2, 'two', 's2')")
        _wait_events(out, 2)
        snap = run_cli("snapshot", str(cfg), "p", name, "--wait")
        assert snap.returncode == 0, snap.stderr
        events = _wait_events(out, 4)
        assert svc.stop() == 0
    assert [(e["op"], e["key"]) for e in events] == [("r", {"id": 1}), ("c", {"id": 2}), ("r", {"id": 1}), ("r", {"id": 2})]
    for e in events:
        assert e["schema"]["name"] == name
        assert (e["source"]["schema"], e["source"]["table"]) == ('Quoted_" . Schema', 'Quoted_" . Table')
        assert "secret" not in e["after"] and e["after"]["the data"] in ("one", "two")
    assert read_schemas(out)[0]["name"] == name
