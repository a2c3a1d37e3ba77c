"""The `cdc` command line as a user runs it (contract section 1): exit codes, the
`FILE:LINE: path: message` problem lines, stop signals, status/schemas/drop/snapshot, and the
features that validate but are not built yet. On PostgreSQL 15."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import (
    CdcService,
    cdc_env,
    execute,
    find_log,
    pg_pipeline,
    query,
    read_events,
    run_cli,
    run_until_exit,
    slot_row,
    wait_for,
    write_config,
)

PG15 = pytest.mark.parametrize("pg", ["pg15"], indirect=True)

LINE_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<path>\S+): (?P<message>.+)$")

BAD = """\
state:
  path: ./state.sqlite
api:
  listen: 127.0.0.1:{port}
log:
  format: {fmt}
pipelines:
  - name: one
    source:
      type: postgres
      dsn: postgresql://cdc@127.0.0.1:5432/shop
      tables: [public.t]
      heartbeat_sec: 5
    sink:
      type: file
      path: ./out
      rotate_mb: lots
  - name: two
    source:
      type: postgres
      dsn: postgresql://cdc:${{CDC_TEST_UNSET_PW}}@db/shop
    sink:
      type: file
      path: ./out2
"""

#: (line, path, part of the message) of each problem in BAD
BAD_PROBLEMS = [
    (13, "pipelines[0].source.heartbeat_sec", "unknown key 'heartbeat_sec' (did you mean 'heartbeat_s'?)"),
    (17, "pipelines[0].sink.rotate_mb", "expected a number"),
    (19, "pipelines[1].source.tables", "required key 'tables' is missing"),
    (21, "pipelines[1].source.dsn", "CDC_TEST_UNSET_PW is not set"),
]


def _problems(stderr: str, path: Path) -> list[tuple[int, str, str]]:
    out = []
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in lines:
        m = LINE_RE.match(line)
        assert m is not None, f"not a FILE:LINE: path: message line: {line!r}\n{stderr}"
        assert m["file"] == str(path)
        out.append((int(m["line"]), m["path"], m["message"]))
    return out


def _assert_bad_lines(stderr: str, path: Path) -> None:
    found = _problems(stderr, path)
    assert len(found) == len(BAD_PROBLEMS), stderr
    for (line, p, msg), (eline, epath, emsg) in zip(found, BAD_PROBLEMS, strict=True):
        assert (line, p) == (eline, epath), stderr
        assert emsg in msg, stderr


# -- validate -------------------------------------------------------------------------------------


def test_validate_good_file(tmp_path: Path, free_port: int) -> None:
    cfg = write_config(
        tmp_path,
        [pg_pipeline("shop", "postgresql://cdc@db:5432/shop", ["public.orders"], tmp_path / "out")],
        api_port=free_port,
    )
    proc = run_cli("validate", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_validate_reports_each_problem_on_its_line(tmp_path: Path, free_port: int, fmt: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.format(port=free_port, fmt=fmt))
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    _assert_bad_lines(proc.stderr, path)


def test_validate_no_env_lets_unset_variables_pass(tmp_path: Path, free_port: int) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(
        f"""\
api:
  listen: 127.0.0.1:{free_port}
pipelines:
  - name: shop
    source:
      type: postgres
      dsn: postgresql://cdc:${{CDC_TEST_UNSET_PW}}@${{CDC_TEST_UNSET_HOST}}:5432/shop
      tables: [public.orders]
      heartbeat_s: ${{CDC_TEST_UNSET_HEARTBEAT}}
    snapshot: {{mode: never}}
    sink:
      type: file
      path: ./out
"""
    )
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2
    assert [(line, p, msg.split(" is not set")[0]) for line, p, msg in _problems(proc.stderr, path)] == [
        (7, "pipelines[0].source.dsn", "environment variable CDC_TEST_UNSET_PW"),
        (7, "pipelines[0].source.dsn", "environment variable CDC_TEST_UNSET_HOST"),
        (9, "pipelines[0].source.heartbeat_s", "environment variable CDC_TEST_UNSET_HEARTBEAT"),
    ]
    proc = run_cli("validate", str(path), "--no-env")
    assert proc.returncode == 0, proc.stderr
    # an environment value is converted to the field's type
    env = {**cdc_env(), "CDC_TEST_UNSET_PW": "pw", "CDC_TEST_UNSET_HOST": "db", "CDC_TEST_UNSET_HEARTBEAT": "soon"}
    proc = run_cli("validate", str(path), env=env)
    assert proc.returncode == 2
    ((line, p, msg),) = _problems(proc.stderr, path)
    assert (line, p) == (9, "pipelines[0].source.heartbeat_s")
    assert "expected a number" in msg and "'soon'" in msg


def test_run_invalid_file_exits_2_without_traceback(tmp_path: Path, free_port: int) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.format(port=free_port, fmt="json"))
    proc = run_cli("run", str(path), timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    _assert_bad_lines(proc.stderr, path)
    assert not (tmp_path / "state.sqlite").exists()


# -- run: signals and exit codes ------------------------------------------------------------------


@PG15
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_stops_on_signal_within_10s(pgdb: str, tmp_path: Path, free_port: int, sig: signal.Signals) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t SELECT generate_series(1, 100)")
        wait_for(lambda: len(read_events(out)) == 100, what="100 events")
        execute(pgdb, "INSERT INTO t SELECT generate_series(101, 200)")
        started = time.monotonic()
        svc.proc.send_signal(sig)
        code = svc.proc.wait(15)
        elapsed = time.monotonic() - started
        assert code == 0, svc.logs()[-3000:]
        assert elapsed < 10, elapsed
        records = svc.log_events()
        assert find_log(records, "service_stopped") is not None
        assert "Traceback" not in svc.logs()
    # it saved what was acknowledged: the next run resumes and loses nothing
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        wait_for(lambda: {e["after"]["id"] for e in read_events(out)} == set(range(1, 201)), what="all 200 rows")
        assert svc.stop() == 0


@PG15
def test_run_exits_1_when_its_only_pipeline_fails(pgdb: str, tmp_path: Path, free_port: int) -> None:
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.missing"], tmp_path / "out")], api_port=free_port)
    started = time.monotonic()
    code, records, stderr = run_until_exit(cfg, timeout=30)
    assert code == 1, stderr
    assert time.monotonic() - started < 20
    failed = find_log(records, "pipeline_failed", pipeline="p")
    assert failed is not None and "public.missing does not exist" in failed["error"]
    assert "Traceback" not in stderr


def test_run_unknown_pipeline_name_is_a_usage_error(tmp_path: Path, free_port: int) -> None:
    cfg = write_config(tmp_path, [pg_pipeline("p", "postgresql://x@127.0.0.1:1/x", ["public.t"], tmp_path / "out")], api_port=free_port)
    code, records, stderr = run_until_exit(cfg, "--pipeline", "nope", timeout=30)
    assert code == 2, stderr
    assert "no pipeline named 'nope'" in stderr and "its pipelines: p" in stderr, stderr


# -- status, schemas ------------------------------------------------------------------------------


@PG15
def test_status_and_schemas(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, price numeric(12,2))")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t VALUES (1, 9.5)", "ALTER TABLE t ADD COLUMN note varchar(20)", "INSERT INTO t VALUES (2, 1, 'x')")
        wait_for(lambda: len(read_events(out)) == 2, what="2 events")

        proc = run_cli("status", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert "from the running service" in proc.stdout
        assert "p: running" in proc.stdout
        assert "retained WAL:" in proc.stdout
        proc = run_cli("status", str(cfg), "--json")
        assert proc.returncode == 0
        doc = orjson.loads(proc.stdout)
        assert doc["from"] == "service"
        (p,) = doc["pipelines"]
        assert p["name"] == "p" and p["state"] == "running"
        assert p["checkpoint"]["position"] and p["source"]["position"]
        assert p["source"]["slot"] == "cdc_p"

        # schemas are readable while the service runs
        proc = run_cli("schemas", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert "public.t v1" in proc.stdout and "public.t v2" in proc.stdout
        assert "numeric(12,2)" in proc.stdout and "varchar(20)" in proc.stdout
        assert svc.stop() == 0

    proc = run_cli("status", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["from"] == "state"
    (p,) = doc["pipelines"]
    assert p["state"] == "not running"
    assert p["checkpoint"]["position"] is not None
    proc = run_cli("status", str(cfg))
    assert proc.returncode == 0 and "state store" in proc.stdout and "p: not running" in proc.stdout

    proc = run_cli("schemas", str(cfg), "public.t", "--json")
    assert proc.returncode == 0, proc.stderr
    versions = orjson.loads(proc.stdout)
    assert [(v["name"], v["version"], [c["name"] for c in v["columns"]]) for v in versions] == [
        ("public.t", 1, ["id", "price"]),
        ("public.t", 2, ["id", "price", "note"]),
    ]
    assert versions[1]["key"] == ["id"]
    assert [c["type"] for c in versions[1]["columns"]] == ["int4", "numeric(12,2)", "varchar(20)"]
    proc = run_cli("schemas", str(cfg), "public.other", "--json")
    assert proc.returncode == 0 and orjson.loads(proc.stdout) == []


def test_status_and_schemas_without_state(tmp_path: Path, free_port: int) -> None:
    cfg = write_config(tmp_path, [pg_pipeline("p", "postgresql://x@127.0.0.1:1/x", ["public.t"], tmp_path / "out")], api_port=free_port)
    proc = run_cli("status", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["from"] == "state" and doc["pipelines"][0]["state"] == "not running"
    proc = run_cli("schemas", str(cfg))
    assert proc.returncode == 0 and "no schema versions recorded" in proc.stdout


# -- drop -----------------------------------------------------------------------------------------


def _publications(dsn: str) -> list[str]:
    return [r[0] for r in query(dsn, "SELECT pubname FROM pg_publication ORDER BY 1")]


@PG15
def test_drop(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t VALUES (1)")
        wait_for(lambda: read_events(out), what="an event")
        assert svc.stop() == 0
    wait_for(lambda: slot_row(pgdb, "cdc_p")["active_pid"] is None, what="the slot released")  # type: ignore[index]

    # without --yes: only prints
    proc = run_cli("drop", str(cfg), "p")
    assert proc.returncode == 0, proc.stderr
    assert "would" in proc.stdout and "--yes" in proc.stdout
    assert "drop replication slot cdc_p" in proc.stdout
    assert "drop publication cdc_p" in proc.stdout
    assert "events-000001.jsonl" in proc.stdout
    assert "delete the state of p" in proc.stdout
    assert slot_row(pgdb, "cdc_p") is not None
    assert _publications(pgdb) == ["cdc_p"]
    assert (out / "events-000001.jsonl").exists()
    assert orjson.loads(run_cli("status", str(cfg), "--json").stdout)["pipelines"][0]["checkpoint"]["position"]

    proc = run_cli("drop", str(cfg), "p", "--yes")
    assert proc.returncode == 0, proc.stderr
    # one tense: what was done
    assert "dropped replication slot cdc_p" in proc.stdout and "dropped publication cdc_p" in proc.stdout
    assert "deleted the state of p" in proc.stdout, proc.stdout
    assert slot_row(pgdb, "cdc_p") is None
    assert _publications(pgdb) == []
    assert not (out / "events-000001.jsonl").exists()
    (dropped,) = list(out.glob("dropped-*"))
    assert (dropped / "events-000001.jsonl").exists() and (dropped / "schemas.jsonl").exists()
    assert len(read_events(dropped)) == 1
    assert orjson.loads(run_cli("status", str(cfg), "--json").stdout)["pipelines"][0]["checkpoint"]["position"] is None
    assert orjson.loads(run_cli("schemas", str(cfg), "--json").stdout) == []

    # a fresh start works (no "state lost"), with a new slot and publication
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t VALUES (2)")
        wait_for(lambda: read_events(out), what="an event after the fresh start")
        assert [e["after"]["id"] for e in read_events(out)] == [2]
        assert read_events(out)[0]["schema"]["version"] == 1
        assert find_log(svc.log_events(), "slot_created") is not None
        assert svc.stop() == 0
    assert _publications(pgdb) == ["cdc_p"]


@PG15
def test_drop_keeps_a_publication_cdc_did_not_create(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE PUBLICATION mine FOR TABLE t")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out, publication="mine")], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        assert svc.stop() == 0
    wait_for(lambda: slot_row(pgdb, "cdc_p")["active_pid"] is None, what="the slot released")  # type: ignore[index]
    proc = run_cli("drop", str(cfg), "p")
    assert proc.returncode == 0 and "keep publication mine (not created by cdc)" in proc.stdout
    proc = run_cli("drop", str(cfg), "p", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "kept publication mine" in proc.stdout
    assert slot_row(pgdb, "cdc_p") is None
    assert _publications(pgdb) == ["mine"]


# -- snapshot -------------------------------------------------------------------------------------


@PG15
def test_snapshot_command(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")], api_port=free_port)
    # no service answers
    proc = run_cli("snapshot", str(cfg), "p", "public.t")
    assert proc.returncode not in (0, 1), proc
    assert "no cdc service answers" in proc.stderr and "Traceback" not in proc.stderr
    # a table not in the pipeline, an unknown pipeline
    proc = run_cli("snapshot", str(cfg), "p", "public.other")
    assert proc.returncode not in (0, 1) and "public.other" in proc.stderr
    proc = run_cli("snapshot", str(cfg), "nope", "public.t")
    assert proc.returncode not in (0, 1) and "nope" in proc.stderr
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t SELECT generate_series(1, 100)")
        proc = run_cli("snapshot", str(cfg), "p", "public.t", "--wait")
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        sid = orjson.loads(proc.stdout.splitlines()[0])["id"]
        status, doc = svc.get(f"/pipelines/p/snapshots/{sid}")
        assert status == 200 and doc["state"] == "done" and doc["rows_done"] == 100, doc
        assert svc.pipeline("p")["state"] == "running"
        # cdc status shows the snapshot, from the service and from the state store
        proc = run_cli("status", str(cfg))
        assert proc.returncode == 0 and f"snapshot:        {sid} done" in proc.stdout, proc.stdout
        assert svc.stop() == 0
    proc = run_cli("status", str(cfg), "--json")
    doc = orjson.loads(proc.stdout)
    assert doc["from"] == "state" and doc["pipelines"][0]["snapshot"]["id"] == sid
