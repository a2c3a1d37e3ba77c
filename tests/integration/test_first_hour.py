"""What a new user trips over in the first hour (issue "The first hour"): Ctrl-C and the other
stop signals, `cdc check`, `cdc snapshots`, `cdc tail`, the status of a failed pipeline. Real
servers and real subprocesses receiving real signals; PostgreSQL 15."""

from __future__ import annotations

import base64
import http.client
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from psycopg.conninfo import make_conninfo

from tests.helpers import (
    ROOT,
    CdcService,
    cdc_env,
    execute,
    metric_value,
    pg_pipeline,
    query,
    run_cli,
    run_until_exit,
    wait_for,
    write_config,
)

PG15 = pytest.mark.parametrize("pg", ["pg15"], indirect=True)


# -- stop signals -------------------------------------------------------------------------------


class _Lines:
    """Read a subprocess's stderr line by line with a deadline, keeping everything read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.text = ""
        self._sel = selectors.DefaultSelector()
        self._sel.register(proc.stderr, selectors.EVENT_READ)

    def until(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.text)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s; stderr:\n{self.text[-3000:]}")
            if self._sel.select(timeout=0.5):
                assert self.proc.stderr is not None
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    if self.proc.poll() is not None and not rx.search(self.text):
                        raise AssertionError(f"exited without {pattern!r}; stderr:\n{self.text[-3000:]}")
                    time.sleep(0.05)
                self.text += chunk.decode(errors="replace")

    def rest(self, timeout: float = 30) -> str:
        self.proc.wait(timeout)
        assert self.proc.stderr is not None
        self.text += self.proc.stderr.read().decode(errors="replace")
        return self.text


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _start_demo() -> tuple[subprocess.Popen[bytes], _Lines, Path, Path, int]:
    """A running `cdc demo` (own process group, like a shell job), once an event has landed:
    the process, its stderr reader, its PostgreSQL folder, its work folder and the postmaster's
    pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc", "demo"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=cdc_env(), cwd=str(ROOT), start_new_session=True,
    )
    lines = _Lines(proc)
    pg_dir = Path(lines.until(r"\(folder (\S+)\)").group(1))
    work = Path(lines.until(r"pipeline file (\S+)/pipeline\.yaml").group(1))
    pid = int((pg_dir / "data" / "postmaster.pid").read_text().split()[0])
    assert _pid_alive(pid)
    # once the service has delivered something, the whole demo is up
    wait_for(lambda: any((work / "out").glob("events-*.jsonl")), timeout=120, what="first events")
    return proc, lines, pg_dir, work, pid


def _assert_nothing_left(proc: subprocess.Popen[bytes], lines: _Lines, pg_dir: Path, work: Path, pid: int) -> None:
    try:
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = lines.rest()
    assert code == 0, text[-3000:]
    assert text.rstrip().endswith("cdc demo: stopped, nothing left running"), text[-3000:]
    wait_for(lambda: not _pid_alive(pid), timeout=10, what="the embedded PostgreSQL to be gone")
    assert not pg_dir.exists(), f"{pg_dir} left behind"
    assert not work.exists(), f"{work} left behind"


@pytest.mark.parametrize("how", ["SIGHUP", "group SIGTERM", "double Ctrl-C"])
def test_demo_leaves_nothing_behind_on_any_stop_signal(how: str) -> None:
    proc, lines, pg_dir, work, pid = _start_demo()
    try:
        if how == "SIGHUP":  # the terminal was closed
            proc.send_signal(signal.SIGHUP)
        elif how == "group SIGTERM":  # make (or a process manager) stopping the whole job
            os.killpg(proc.pid, signal.SIGTERM)
        else:  # an impatient user: a second Ctrl-C while the first one's clean-up runs
            proc.send_signal(signal.SIGINT)
            lines.until("cdc demo: stopping")
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)
    finally:
        _assert_nothing_left(proc, lines, pg_dir, work, pid)
    if how == "double Ctrl-C":
        assert "still stopping" in lines.text


@PG15
def test_ctrl_c_on_snapshot_wait_exits_130_and_says_the_snapshot_goes_on(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 50)")
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")], api_port=free_port)
    with CdcService(cfg) as svc, psycopg.connect(pgdb) as blocker:
        svc.wait_state("p", "running")
        # hold the table so that the snapshot cannot finish while the command waits
        blocker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", "snapshot", str(cfg), "p", "public.t", "--wait"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cdc_env(),
        )
        lines = _Lines(proc)
        try:
            lines.until(r"snapshot \S+: (pending|running)")
            proc.send_signal(signal.SIGINT)
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        text = lines.rest()
        assert proc.stdout is not None
        sid = orjson.loads(proc.stdout.read().splitlines()[0])["id"]
        assert code == 130, text
        assert "Traceback" not in text
        assert f"the snapshot {sid} goes on in the service" in text, text
        blocker.rollback()
        status, doc = svc.get(f"/pipelines/p/snapshots/{sid}")
        assert status == 200 and doc["state"] in ("pending", "running", "done"), doc
        wait_for(lambda: svc.get(f"/pipelines/p/snapshots/{sid}")[1]["state"] == "done", timeout=60,
                 what="the snapshot to finish after the command was interrupted")


def test_interrupted_command_exits_130() -> None:
    """Any command: Ctrl-C is 130, the code shells give an interrupted program (never 0)."""
    script = (
        "import sys, time\n"
        "from cdc import cli\n"
        "def slow(args):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
        "    return 0\n"
        "cli.cmd_validate = slow\n"
        "sys.exit(cli.main(['validate', 'x.yaml']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cdc_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "cdc validate: interrupted" in err and "Traceback" not in err


# -- cdc check ----------------------------------------------------------------------------------


@pytest.fixture
def role(pgdb: str) -> Iterator[str]:
    """A throw-away login role for ``pgdb``, dropped afterwards."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pgdb, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


@PG15
def test_check_lists_every_problem_of_every_pipeline_at_once_and_changes_nothing(
    pgdb: str, role: str, tmp_path: Path, free_port: int
) -> None:
    execute(
        pgdb,
        "CREATE TABLE t (id int PRIMARY KEY, ssn text)",
        "CREATE TABLE keyless (a int)",
        "CREATE SCHEMA hidden",
        "CREATE TABLE hidden.h (id int PRIMARY KEY)",
        f'CREATE ROLE "{role}" LOGIN',
        f'GRANT SELECT ON t, keyless TO "{role}"',
        f'GRANT SELECT ON hidden.h TO "{role}"',
        "CREATE PUBLICATION theirs FOR TABLE t",
    )
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("x")
    dsn = make_conninfo(pgdb, user=role)
    one = pg_pipeline("one", dsn, ["public.t", "public.keyless", "public.nope", "hidden.h"], not_a_folder)
    one["columns"] = {"exclude": {"public.t": ["ssn", "sn"]}}
    two = pg_pipeline("two", pgdb, ["public.t", "public.keyless"], tmp_path / "out2", publication="theirs")
    fine = pg_pipeline("fine", pgdb, ["public.t"], tmp_path / "out3")
    cfg = write_config(tmp_path, [one, two, fine], api_port=free_port)
    proc = run_cli("check", str(cfg))
    assert proc.returncode == 1, proc
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    one_part = out.split("\ntwo:")[0]
    for expected in (
        f'ALTER ROLE "{role}" WITH REPLICATION',  # the role
        "public.nope does not exist",  # a missing table, beside the others
        f'GRANT USAGE ON SCHEMA "hidden" TO "{role}"',  # schema usage
        "ALTER TABLE public.keyless REPLICA IDENTITY FULL",  # a keyless table
        "does not own hidden.h, public.keyless, public.t",  # cdc could not create its publication
        "columns.exclude names columns that public.t does not have: sn",
        f"path {not_a_folder} exists but is not a folder",  # the sink
    ):
        assert expected in one_part, f"{expected!r} missing from:\n{out}"
    two_part = out.split("\ntwo:")[1].split("\nfine:")[0]
    assert "publication theirs (not created by cdc) does not include public.keyless" in two_part, out
    assert "ALTER PUBLICATION theirs ADD TABLE public.keyless" in two_part
    assert "REPLICA IDENTITY FULL" in two_part
    assert "fine: ok" in out
    # nothing changed: no slot, no publication of cdc's, no state file, no sink folder
    assert query(pgdb, "SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert query(pgdb, "SELECT pubname FROM pg_publication") == [("theirs",)]
    assert not (tmp_path / "state.sqlite").exists()
    assert not (tmp_path / "out3").exists()
    # one pipeline by name; an unknown name is a usage error
    proc = run_cli("check", str(cfg), "fine")
    assert proc.returncode == 0 and proc.stdout.strip() == "fine: ok", proc
    proc = run_cli("check", str(cfg), "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr


@PG15
def test_check_names_a_slot_in_use_without_advising_to_drop_it(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    """Started twice: the running instance's slot is in use. The advice is to look for the
    other instance, never a new slot or `cdc drop` (which would break the running one)."""
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        proc = run_cli("check", str(cfg))
        assert proc.returncode == 1, proc
        assert "[slot_in_use]" in proc.stdout and "another cdc instance is running pipeline p" in proc.stdout
        assert f"cdc status {cfg}" in proc.stdout
        assert "cdc drop" not in proc.stdout and "another `slot`" not in proc.stdout
    proc = run_cli("check", str(cfg))
    assert proc.returncode == 0 and proc.stdout.strip() == "p: ok", proc


def test_check_mysql_lists_settings_and_grants_together(
    mariadb: Any, mydb: Any, tmp_path: Path, free_port: int
) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    user = f"u{mydb.name[-8:]}"
    mariadb.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
    try:
        p = {
            "name": "m",
            "source": {"type": "mysql", "dsn": mydb.dsn(user, "pw"), "tables": [mydb.table("t"), mydb.table("nope")]},
            "snapshot": {"mode": "never"},
            "sink": {"type": "file", "path": str(tmp_path / "out")},
        }
        cfg = write_config(tmp_path, [p], api_port=free_port)
        proc = run_cli("check", str(cfg))
        assert proc.returncode == 1, proc
        for expected in ("GRANT REPLICATION SLAVE ON *.*", "REPLICATION CLIENT", f"lacks SELECT on {mydb.table('t')}"):
            assert expected in proc.stdout, proc.stdout
        assert "pw" not in proc.stdout.replace("password", "")
    finally:
        mariadb.execute(f"DROP USER '{user}'@'%'")


def _masked(pipeline: dict[str, Any], columns: dict[str, dict[str, str]]) -> dict[str, Any]:
    pipeline["transforms"] = [{"mask": {"key": "k3y", "columns": columns}}]
    return pipeline


@PG15
def test_check_names_mask_columns_that_do_not_exist_postgres(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, email text, ssn text)")
    bad = _masked(pg_pipeline("bad", pgdb, ["public.t"], tmp_path / "o1"),
                  {"public.t": {"email": "hash", "emial": "hash", "SSN": "redact"}})
    bad["columns"] = {"exclude": {"public.t": ["nope"]}}
    good = _masked(pg_pipeline("good", pgdb, ["public.t"], tmp_path / "o2"),
                   {"public.t": {"email": "hash", "ssn": "redact"}})
    cfg = write_config(tmp_path, [bad, good], api_port=free_port)
    proc = run_cli("check", str(cfg))
    assert proc.returncode == 1, proc
    bad_part, good_part = proc.stdout.split("\ngood:")
    assert "transforms[0].mask.columns names columns that public.t does not have: SSN, emial" in bad_part, proc.stdout
    assert "columns.exclude names columns that public.t does not have: nope" in bad_part, proc.stdout
    assert good_part.split("\n")[0].strip() == "ok", proc.stdout
    assert "k3y" not in proc.stdout + proc.stderr


def test_check_names_mask_columns_that_do_not_exist_mariadb(
    mariadb: Any, mydb: Any, tmp_path: Path, free_port: int
) -> None:
    mydb.execute("CREATE TABLE t (id INT PRIMARY KEY, email TEXT)")

    def pipeline(name: str, masks: dict[str, str], exclude: list[str]) -> dict[str, Any]:
        return _masked({
            "name": name,
            "source": {"type": "mysql", "dsn": mydb.dsn(), "tables": [mydb.table("t")]},
            "snapshot": {"mode": "never"},
            "columns": {"exclude": {mydb.table("t"): exclude}},
            "sink": {"type": "file", "path": str(tmp_path / name)},
        }, {mydb.table("t"): masks})

    cfg = write_config(tmp_path, [pipeline("bad", {"email": "hash", "phone": "redact"}, ["fax"]),
                                  pipeline("good", {"email": "hash"}, [])], api_port=free_port)
    proc = run_cli("check", str(cfg))
    assert proc.returncode == 1, proc
    bad_part, good_part = proc.stdout.split("\ngood:")
    table = mydb.table("t")
    assert f"transforms[0].mask.columns names columns that {table} does not have: phone" in bad_part, proc.stdout
    assert f"columns.exclude names columns that {table} does not have: fax" in bad_part, proc.stdout
    assert good_part.split("\n")[0].strip() == "ok", proc.stdout


# -- snapshots: list, cancel, progress ----------------------------------------------------------


@PG15
def test_snapshots_list_and_cancel(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE u (id int PRIMARY KEY)",
            "INSERT INTO t SELECT generate_series(1, 10)")
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t", "public.u"], tmp_path / "out")],
                       api_port=free_port)
    proc = run_cli("snapshots", str(cfg), "p")
    assert proc.returncode == 0 and "p: no snapshots" in proc.stdout, proc
    with CdcService(cfg) as svc, psycopg.connect(pgdb) as blocker:
        svc.wait_state("p", "running")
        blocker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # the snapshot cannot finish
        proc = run_cli("snapshot", str(cfg), "p", "public.t", "public.u")
        assert proc.returncode == 0, proc
        sid = orjson.loads(proc.stdout)["id"]
        wait_for(lambda: svc.get(f"/pipelines/p/snapshots/{sid}")[1]["state"] == "running", what="running")
        proc = run_cli("snapshots", str(cfg), "p")
        assert proc.returncode == 0, proc
        assert re.search(rf"^{sid}  running .* public\.t, public\.u$", proc.stdout, re.M), proc.stdout
        listed = orjson.loads(run_cli("snapshots", str(cfg), "p", "--json").stdout)["snapshots"]
        assert [s["id"] for s in listed] == [sid]
        assert listed[0]["created_at"] > 10**12, "created_at is in milliseconds"
        proc = run_cli("snapshot", str(cfg), "p", "--cancel", sid)
        assert proc.returncode == 0 and f"snapshot {sid}: cancelled" in proc.stdout, proc
        blocker.rollback()
        _, doc = svc.get(f"/pipelines/p/snapshots/{sid}")
        assert doc["state"] == "cancelled"
        assert {q["state"] for q in doc["progress"].values()} == {"cancelled"}, doc["progress"]
        # an unknown id is refused
        proc = run_cli("snapshot", str(cfg), "p", "--cancel", "nope")
        assert proc.returncode == 2, proc
        wait_for(lambda: svc.pipeline("p")["snapshot"]["tables"]["public.t"]["state"] == "cancelled",
                 what="the service's status to show the cancelled tables")
    # without a service: from the state store
    proc = run_cli("snapshots", str(cfg), "p")
    assert proc.returncode == 0 and f"{sid}  cancelled" in proc.stdout, proc


@PG15
def test_snapshot_wait_shows_rate_and_eta_on_a_terminal_and_logs_each_chunk(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    import pty

    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 3000)",
            "ANALYZE t")
    p = pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")
    p["snapshot"] = {"mode": "never", "chunk_rows": 100}
    cfg = write_config(tmp_path, [p], api_port=free_port, extra={"log": {"level": "debug"}})
    env = cdc_env()
    env["CDC_TEST_SNAPSHOT_CHUNK_DELAY_S"] = "0.1"  # 30 chunks: about 3 s of snapshot
    with CdcService(cfg, env=env) as svc:
        svc.wait_state("p", "running")
        parent, child = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cdc", "snapshot", str(cfg), "p", "public.t", "--wait"],
                stdout=subprocess.PIPE, stderr=child, env=cdc_env(),
            )
            os.close(child)
            text = b""
            while True:
                try:
                    chunk = os.read(parent, 4096)
                except OSError:  # the terminal's other end closed: the command ended
                    break
                if not chunk:
                    break
                text += chunk
            assert proc.wait(60) == 0, text
        finally:
            os.close(parent)
        screen = text.decode(errors="replace")
        assert "\r" in screen, "the progress line is rewritten in place"
        assert re.search(r"running, [\d,]+ of ~3,000 rows \(\d+%\), [\d,]+ rows/s, ETA \d+:\d\d", screen), screen
        assert re.search(r"done, 3,000 of ~3,000 rows\r?\n", screen), screen
        chunks = [e for e in svc.log_events() if e.get("event") == "snapshot_chunk"]
        assert len(chunks) >= 30 and chunks[-1]["table_rows_done"] == 3000, chunks[-3:]


# -- cdc tail -----------------------------------------------------------------------------------


class _Stdout:
    """Lines of a subprocess's stdout, read with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.lines: list[str] = []
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(proc.stdout, selectors.EVENT_READ)

    def wait_lines(self, n: int, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while len(self.lines) < n and time.monotonic() < deadline:
            if self._sel.select(timeout=0.5):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self._buf += chunk
                *done, self._buf = self._buf.split(b"\n")
                self.lines += [d.decode() for d in done]
        if len(self.lines) < n and self.proc.poll() is not None:
            assert self.proc.stderr is not None
            raise AssertionError(f"exited {self.proc.returncode}: {self.proc.stderr.read()!r}")
        assert len(self.lines) >= n, f"{len(self.lines)} lines of {n}: {self.lines[-5:]}"
        return self.lines


@PG15
def test_tail_follows_the_file_sink_across_rotation_from_the_end(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, pad text)", "CREATE TABLE u (id int PRIMARY KEY)",
            "INSERT INTO t VALUES (-1, 'before the tail')")
    out = tmp_path / "out"
    p = pg_pipeline("p", pgdb, ["public.t", "public.u"], out)
    p["sink"]["rotate_mb"] = 0.01  # about 10 kB per file: a few events each
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        wait_for(lambda: any(out.glob("events-*.jsonl")), what="the first event")
        tails = {
            fmt: subprocess.Popen([sys.executable, "-m", "cdc", "tail", str(cfg), "p", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cdc_env())
            for fmt, args in (("short", ["--table", "public.t"]), ("json", ["--format", "json"]))
        }
        try:
            for proc in tails.values():  # each has taken its starting point
                _Lines(proc).until("following pipeline p's events from now on")
            for i in range(40):
                execute(pgdb, f"INSERT INTO t VALUES ({i}, repeat('x', 500))", f"INSERT INTO u VALUES ({i})")
            short = _Stdout(tails["short"]).wait_lines(40)
            assert short[:40] == [f'c public.t {{"id":{i}}}' for i in range(40)], short[:5]
            whole = _Stdout(tails["json"]).wait_lines(80)
            docs = [orjson.loads(line) for line in whole[:80]]
            assert [(d["source"]["table"], d["key"]["id"]) for d in docs] == [
                (t, i) for i in range(40) for t in ("t", "u")
            ]
            assert len(list(out.glob("events-*.jsonl"))) >= 3, "the events were rotated"
            for proc in tails.values():
                proc.send_signal(signal.SIGINT)
                assert proc.wait(20) == 0
        finally:
            for proc in tails.values():
                if proc.poll() is None:
                    proc.kill()


@PG15
def test_tail_follows_a_webhook_sink_through_the_service(pgdb: str, tmp_path: Path, free_port: int) -> None:
    """Sinks cdc cannot read back are followed through the running service's event feed: from
    the end, in order, as the sink got them (masked), filtered by --table; with the API token."""
    from tests.webhook_harness import Receiver

    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, email text)", "CREATE TABLE u (id int PRIMARY KEY)",
            "INSERT INTO t VALUES (-1, 'before@the.tail')")
    receiver = Receiver()
    try:
        p = pg_pipeline("w", pgdb, ["public.t", "public.u"], tmp_path / "unused")
        p["sink"] = {"type": "webhook", "url": receiver.url, "batch_max": 7}
        p["transforms"] = [{"mask": {"key": "k", "columns": {"public.t": {"email": "hash"}}}}]
        cfg = write_config(tmp_path, [p], api_port=free_port, extra={"api": {"token": "s3cret-token"}})
        # no service: a clear error
        proc = run_cli("tail", str(cfg), "w")
        assert proc.returncode == 1, proc
        assert "no cdc service answers" in proc.stderr and f"cdc run {cfg}" in proc.stderr, proc.stderr
        with CdcService(cfg) as svc:
            svc.wait_state("w", "running")
            execute(pgdb, "INSERT INTO t VALUES (-2, 'also@before.tail')")
            wait_for(lambda: len(receiver.events()) >= 1, what="the event before the tails")
            tails = {
                fmt: subprocess.Popen([sys.executable, "-m", "cdc", "tail", str(cfg), "w", *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cdc_env())
                for fmt, args in (("short", ["--table", "public.t"]), ("json", ["--format", "json"]))
            }
            try:
                for proc in tails.values():
                    _Lines(proc).until("following pipeline w's events from now on, through the service")
                for i in range(30):
                    execute(pgdb, f"INSERT INTO t VALUES ({i}, 'user{i}@example.com')",
                            f"INSERT INTO u VALUES ({i})")
                short = _Stdout(tails["short"]).wait_lines(30)
                assert short[:30] == [f'c public.t {{"id":{i}}}' for i in range(30)], short[:5]
                whole = _Stdout(tails["json"]).wait_lines(60)
                docs = [orjson.loads(line) for line in whole[:60]]
                assert [(d["source"]["table"], d["key"]["id"]) for d in docs] == [
                    (t, i) for i in range(30) for t in ("t", "u")
                ]
                # what the sink got, masked, and the same events
                wait_for(lambda: len(receiver.events()) >= 61, what="the webhook's events")
                got = {e["id"]: e for e in receiver.events()}
                for d in docs:
                    assert d == got[d["id"]]
                emails = [d["after"]["email"] for d in docs if d["source"]["table"] == "t"]
                assert all(len(e) == 64 and "@" not in e for e in emails), emails[:3]
                for proc in tails.values():
                    proc.send_signal(signal.SIGINT)
                    assert proc.wait(20) == 0
            finally:
                for proc in tails.values():
                    if proc.poll() is None:
                        proc.kill()
            # the endpoint: the token rules of /pipelines, unknown fields refused
            conn = http.client.HTTPConnection("127.0.0.1", free_port, timeout=10)
            conn.request("GET", "/pipelines/w/events")
            assert conn.getresponse().status == 401
            conn.close()
            auth = {"Authorization": "Bearer s3cret-token"}
            for path, status in (("/pipelines/w/events?after=0&wait=0&tabel=x", 400),
                                 ("/pipelines/nope/events", 404), ("/pipelines/w/events", 200)):
                conn = http.client.HTTPConnection("127.0.0.1", free_port, timeout=10)
                conn.request("GET", path, headers=auth)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                assert resp.status == status, (path, body)
            assert orjson.loads(body)["seq"] >= 60
    finally:
        receiver.close()


# -- status, lag, starting twice, small things ----------------------------------------------------


@PG15
def test_status_of_a_failed_pipeline_shows_its_last_error_and_no_none(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = write_config(tmp_path, [pg_pipeline("bad", pgdb, ["public.nope"], tmp_path / "out")], api_port=free_port)
    svc = CdcService(cfg)
    try:
        svc.wait_state("bad", "failed")
        for source in ("the running service", "state store"):
            proc = run_cli("status", str(cfg))
            assert proc.returncode == 0, proc
            assert source in proc.stdout, proc.stdout
            assert "None" not in proc.stdout, proc.stdout
            assert re.search(r"last error:\s+source_config at .*: table public\.nope does not exist", proc.stdout), proc.stdout
            assert "source position: -" in proc.stdout and "lag:             -" in proc.stdout
            svc.stop()
    finally:
        if svc.proc.poll() is None:
            svc.kill()


@PG15
def test_idle_lag_is_zero_within_3s_of_delivering_everything(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    p = pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out", heartbeat_s=60)  # no heartbeat helps
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t VALUES (1)")
        wait_for(lambda: svc.pipeline("p")["events_total"] >= 1, what="the event")
        delivered = time.monotonic()
        wait_for(lambda: svc.pipeline("p")["lag_s"] == 0, timeout=3, what="lag 0")
        assert time.monotonic() - delivered < 3
        _, text = svc.get("/metrics")
        assert metric_value(text, "cdc_source_lag_seconds", pipeline="p") == 0


@PG15
def test_started_twice_says_cdc_is_probably_running(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        code, _, stderr = run_until_exit(cfg, timeout=30)
        assert code == 1, stderr
        assert "Address already in use" in stderr and "Probably cdc is already running" in stderr, stderr
        assert f"cdc status {cfg}" in stderr


def test_state_path_under_a_missing_folder_is_an_error(tmp_path: Path, free_port: int) -> None:
    p = pg_pipeline("p", "postgresql://x@127.0.0.1:1/x", ["public.t"], tmp_path / "out")
    cfg = write_config(tmp_path, [p], api_port=free_port, extra={"state": {"path": str(tmp_path / "typo" / "s.sqlite")}})
    code, _, stderr = run_until_exit(cfg, timeout=30)
    assert code == 1 and "does not exist" in stderr, stderr
    assert not (tmp_path / "typo").exists()


def test_retrying_logs_the_attempt_and_the_next_delay(tmp_path: Path, free_port: int) -> None:
    from cdc_local.postgres import free_port as another_port

    dead = f"postgresql://x@127.0.0.1:{another_port()}/x"  # nothing listens there
    cfg = write_config(tmp_path, [pg_pipeline("p", dead, ["public.t"], tmp_path / "out")], api_port=free_port)
    with CdcService(cfg) as svc:
        wait_for(lambda: len([e for e in svc.log_events() if e.get("event") == "pipeline_retrying"]) >= 2,
                 timeout=30, what="two retries")
        retries = [e for e in svc.log_events() if e.get("event") == "pipeline_retrying"]
        assert [e["attempt"] for e in retries[:2]] == [1, 2], retries
        assert all(0 < e["next_attempt_in_s"] <= 30 for e in retries)
        started = next(e for e in svc.log_events() if e.get("event") == "service_started")
        assert "instance" not in started, started


def test_log_format_auto_is_console_on_a_terminal_and_json_otherwise(tmp_path: Path, free_port: int) -> None:
    import pty

    p = pg_pipeline("p", "postgresql://x@127.0.0.1:1/x", ["public.t"], tmp_path / "out")
    cfg = write_config(tmp_path, [p], api_port=free_port, extra={"state": {"path": str(tmp_path / "no" / "s.sqlite")}})
    doc = yaml.safe_load(cfg.read_text())
    del doc["log"]["format"]  # the default: auto
    cfg.write_text(yaml.safe_dump(doc))
    # not a terminal: JSON lines
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 1
    record = orjson.loads(proc.stderr.strip().splitlines()[-1])
    assert record["event"] == "cannot_start"
    # a terminal: console lines
    parent, child = pty.openpty()
    try:
        run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(cfg)], stdout=subprocess.DEVNULL,
                               stderr=child, env=cdc_env())
        os.close(child)
        text = b""
        while True:
            try:
                chunk = os.read(parent, 4096)
            except OSError:
                break
            if not chunk:
                break
            text += chunk
        assert run.wait(30) == 1
    finally:
        os.close(parent)
    line = text.decode().strip().splitlines()[-1]
    assert "cannot_start" in line and not line.startswith("{"), line


@PG15
def test_service_survives_its_stderr_pipe_closing(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], out)], api_port=free_port)
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=cdc_env())
    try:
        lines = _Lines(proc)
        lines.until('"event": "service_started"|service_started')
        assert proc.stderr is not None
        proc.stderr.close()  # the reader of its logs went away (a closed terminal, a dead pipe)

        def state() -> Any:
            conn = http.client.HTTPConnection("127.0.0.1", free_port, timeout=5)
            conn.request("GET", "/pipelines/p")
            return orjson.loads(conn.getresponse().read())

        wait_for(lambda: state()["state"] == "running", what="running")
        execute(pgdb, "INSERT INTO t SELECT generate_series(1, 20)")
        # logging happens now (a snapshot logs its start and end): nothing may die of it
        conn = http.client.HTTPConnection("127.0.0.1", free_port, timeout=5)
        conn.request("POST", "/pipelines/p/snapshots", body=b'{"tables": ["public.t"]}')
        assert conn.getresponse().status in (200, 202)
        wait_for(lambda: state()["snapshot"] and state()["snapshot"]["state"] == "done", what="the snapshot")
        assert state()["state"] == "running" and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_schemas_of_a_table_not_in_the_file_names_the_likely_table(tmp_path: Path, free_port: int) -> None:
    p = pg_pipeline("p", "postgresql://x@127.0.0.1:1/x", ["public.orders", "public.t"], tmp_path / "out")
    cfg = write_config(tmp_path, [p], api_port=free_port)
    proc = run_cli("schemas", str(cfg), "orders")
    assert proc.returncode == 0, proc
    assert f"orders is not a table of the pipelines in {cfg} (public.orders?)" in proc.stderr, proc.stderr
    assert "no schema versions recorded" not in proc.stdout


@PG15
def test_metrics_have_build_info_and_no_created_series(pgdb: str, tmp_path: Path, free_port: int) -> None:
    from cdc import __version__

    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t VALUES (1)")
        wait_for(lambda: svc.pipeline("p")["events_total"] >= 1, what="the event")
        _, text = svc.get("/metrics")
        assert metric_value(text, "cdc_build_info", version=__version__) == 1, text
        assert metric_value(text, "cdc_events_total", pipeline="p", op="c") == 1, text
        assert "_created" not in text, text


# -- the status page (GET /) in a real browser ----------------------------------------------------


def _chromium() -> str:
    import shutil

    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("chromium is missing: run scripts/setup-test-env.sh (it installs Debian's chromium)")


def _browse(url: str, tmp_path: Path) -> str:
    """The page's DOM as a headless chromium sees it after loading."""
    profile = tmp_path / f"chromium-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run(
        [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=2000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@PG15
def test_status_page_in_a_headless_browser(pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 30)")
    good = pg_pipeline("good", pgdb, ["public.t"], tmp_path / "good")
    bad = pg_pipeline("bad", pgdb, ["public.nope"], tmp_path / "bad")
    cfg = write_config(tmp_path, [good, bad], api_port=free_port, extra={"api": {"token": "s3cret-token"}})
    with CdcService(cfg) as svc:
        svc.wait_state("good", "running")
        svc.wait_state("bad", "failed")
        status, doc = svc.get("/pipelines/good/snapshots", token="s3cret-token", method="POST", body={"tables": ["public.t"]})
        assert status == 202, doc
        wait_for(lambda: svc.get("/pipelines/good", token="s3cret-token")[1]["snapshot"]["state"] == "done",
                 what="the snapshot")
        # same token rules as /pipelines: without it 401 (a browser is asked for Basic credentials)
        conn = http.client.HTTPConnection("127.0.0.1", free_port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 401 and resp.getheader("WWW-Authenticate", "").startswith("Basic")
        # works without JavaScript: names and states are in the HTML as served (Basic password)
        conn = http.client.HTTPConnection("127.0.0.1", free_port, timeout=5)
        conn.request("GET", "/", headers={"Authorization": "Basic " + base64.b64encode(b"x:s3cret-token").decode()})
        resp = conn.getresponse()
        served = resp.read().decode()
        assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/html")
        assert "<script" not in served and 'data-pipeline="good"' in served and ">running<" in served
        dom = _browse(f"http://cdc:s3cret-token@127.0.0.1:{free_port}/", tmp_path)
        assert 'data-pipeline="good"' in dom and 'data-pipeline="bad"' in dom, dom[-2000:]
        assert re.search(r'class="state running">running<', dom), dom[-2000:]
        assert re.search(r'class="state failed">failed<', dom) and "public.nope does not exist" in dom
        sid = doc["id"]
        assert f"{sid} done: 30 of ~30 rows" in dom, dom[-2000:]
        assert 'http-equiv="refresh"' in dom
        # no external assets: nothing on the page points anywhere but this service
        assert not re.search(r'(src|href)="(https?:)?//', dom), dom
        assert "s3cret-token" not in dom
        # a wrong password is refused
        dom = _browse(f"http://cdc:wrong@127.0.0.1:{free_port}/", tmp_path)
        assert 'data-pipeline="good"' not in dom


# -- the Grafana dashboard queries metrics that exist -------------------------------------------


@PG15
def test_grafana_dashboard_queries_only_metrics_the_service_exports(pgdb: str, tmp_path: Path, free_port: int) -> None:
    dashboard = orjson.loads((ROOT / "docker" / "grafana" / "dashboards" / "cdc.json").read_bytes())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bcdc_[a-z_]+\b", target["expr"])
    }
    queried |= set(re.findall(r"\bcdc_[a-z_]+\b", dashboard["templating"]["list"][0]["query"]["query"]))
    assert len(queried) >= 10, queried
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    cfg = write_config(tmp_path, [pg_pipeline("p", pgdb, ["public.t"], tmp_path / "out")], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        svc.get("/pipelines/p/snapshots", method="POST", body={"tables": ["public.t"]})
        wait_for(lambda: (svc.pipeline("p")["snapshot"] or {}).get("state") == "done", what="a snapshot")
        _, text = svc.get("/metrics")
    exported = set()  # the families' names (a family may have no sample yet) and the samples'
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line) or re.match(r"([a-z_]+)[{ ]", line)
        if m:
            exported.add(m[1])
    missing = queried - exported
    assert not missing, f"the dashboard queries metrics the service does not export: {missing}"
    # and the provisioning points at it
    provider = (ROOT / "docker" / "grafana" / "provisioning" / "dashboards" / "cdc.yaml").read_text()
    compose = (ROOT / "docker" / "compose.monitoring.yaml").read_text()
    assert "/var/lib/grafana/dashboards" in provider and "./grafana/dashboards:/var/lib/grafana/dashboards" in compose


def test_check_kafka_sink_reachability_and_schema_topic(tmp_path: Path, free_port: int) -> None:
    """The Kafka sink's part of `cdc check`: brokers that do not answer, a schema topic that is
    not compacted (its records would expire). On a real Kafka-compatible broker (Tansu)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from cdc_local.postgres import free_port as another_port
    from tests.kafka_harness import shared_broker

    broker = shared_broker()
    topic = f"fh{uuid.uuid4().hex[:8]}.schemas"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
    admin.create_topics([NewTopic(topic, 1, 1, config={"cleanup.policy": "delete"})])[topic].result(10)
    src = {"type": "postgres", "dsn": "postgresql://x@127.0.0.1:1/x", "tables": ["public.t"]}
    pipelines = [
        {"name": "k", "source": src, "snapshot": {"mode": "never"},
         "sink": {"type": "kafka", "bootstrap_servers": broker.bootstrap, "schema_topic": topic}},
        {"name": "down", "source": src, "snapshot": {"mode": "never"},
         "sink": {"type": "kafka", "bootstrap_servers": f"127.0.0.1:{another_port()}"}},
    ]
    cfg = write_config(tmp_path, pipelines, api_port=free_port)
    proc = run_cli("check", str(cfg), timeout=120)
    assert proc.returncode == 1, proc
    k_part, down_part = proc.stdout.split("\ndown:")
    assert f"schema topic {topic} has cleanup.policy=delete" in k_part and "cleanup.policy=compact" in k_part, proc.stdout
    assert "sink [sink_unavailable]" in down_part and "cluster metadata" in down_part, proc.stdout


# -- cdc check: the NATS, Redis and RabbitMQ sinks ------------------------------------------------


def _sink_check(pgdb: str, tmp_path: Path, free_port: int, sinks: dict[str, dict[str, Any]]) -> dict[str, str]:
    """`cdc check` of one healthy PostgreSQL pipeline per sink: each healthy one alone exits
    0; the whole file exits 1 when one is not. The output of each pipeline, by name."""
    execute(pgdb, "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
    pipelines = []
    for name, sink in sinks.items():
        p = pg_pipeline(name, pgdb, ["public.t"], tmp_path / name)
        p["sink"] = sink
        pipelines.append(p)
    cfg = write_config(tmp_path, pipelines, api_port=free_port)
    for name in sinks:
        if name.startswith("good"):
            proc = run_cli("check", str(cfg), name, timeout=120)
            assert proc.returncode == 0 and proc.stdout.strip() == f"{name}: ok", proc
    proc = run_cli("check", str(cfg), timeout=180)
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    parts = {}
    for chunk in ("\n" + proc.stdout).split("\n"):
        if chunk and not chunk.startswith(" ") and ":" in chunk and chunk.split(":")[0] in sinks:
            current = chunk.split(":")[0]
            parts[current] = chunk
        elif chunk.startswith(" ") and parts:
            parts[current] += "\n" + chunk
    return parts


@PG15
def test_check_nats_sink_login_reachability_and_stream(pgdb: str, tmp_path: Path, free_port: int) -> None:
    import asyncio

    from cdc_local.postgres import free_port as another_port
    from tests.nats_harness import LocalNats

    server = LocalNats(tmp_path / "nats", user="cdc", password="s3cret-pw").start()
    try:
        async def other_stream() -> None:
            nc = await server.connect()
            try:
                await nc.jetstream().add_stream(name="OTHER", subjects=["other.>"])
            finally:
                await nc.close()

        asyncio.run(other_stream())
        base = {"type": "nats", "url": server.url, "user": "cdc", "password": "s3cret-pw"}
        parts = _sink_check(pgdb, tmp_path, free_port, {
            "good": base,
            "good_existing": {**base, "stream": "OTHER", "subject": "other.{table}",
                              "schema_subject": "other.schemas", "create_stream": False},
            "badpw": {**base, "password": "wrong-pw"},
            "nostream": {**base, "stream": "NOPE", "create_stream": False},
            "uncovered": {**base, "stream": "OTHER", "create_stream": False},
            "down": {**base, "url": f"nats://127.0.0.1:{another_port()}"},
        })
        assert parts["good"] == "good: ok" and parts["good_existing"] == "good_existing: ok", parts
        assert "[sink_auth]" in parts["badpw"] and "refused the login" in parts["badpw"], parts
        assert "wrong-pw" not in "".join(parts.values())
        assert "the stream NOPE does not exist and create_stream is false" in parts["nostream"], parts
        assert "nats stream add NOPE" in parts["nostream"]
        assert "the stream OTHER does not cover the subject(s) cdc.uncovered.*.*" in parts["uncovered"], parts
        assert "[sink_unavailable]" in parts["down"] and "cannot reach" in parts["down"], parts
        # nothing was created
        async def streams() -> list[str]:
            nc = await server.connect()
            try:
                return [s.config.name for s in await nc.jetstream().streams_info()]
            finally:
                await nc.close()

        assert asyncio.run(streams()) == ["OTHER"]
    finally:
        server.stop()


@PG15
def test_check_redis_sink_login_acl_types_and_reachability(pgdb: str, tmp_path: Path, free_port: int) -> None:
    from cdc_local.postgres import free_port as another_port
    from tests.redis_harness import LocalRedis

    server = LocalRedis(tmp_path / "redis", requirepass="s3cret-pw")
    server.start()
    try:
        client = server.client()
        client.execute_command("ACL", "SETUSER", "limited", "on", ">lim-pw", "~*", "+@all", "-xadd", "-rpush")
        client.set("cdc:wrongtype:offsets", "a string")
        url = f"redis://127.0.0.1:{server.port}/0"
        parts = _sink_check(pgdb, tmp_path, free_port, {
            "good": {"type": "redis", "url": f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"},
            "badpw": {"type": "redis", "url": f"redis://:wrong-pw@127.0.0.1:{server.port}/0"},
            "limited": {"type": "redis", "url": url.replace("//", "//limited:lim-pw@")},
            "wrongtype": {"type": "redis", "url": f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"},
            "down": {"type": "redis", "url": f"redis://127.0.0.1:{another_port()}/0"},
        })
        assert parts["good"] == "good: ok", parts
        assert "[sink_auth]" in parts["badpw"] and "refused the login" in parts["badpw"], parts
        assert "wrong-pw" not in "".join(parts.values())
        assert "may not run XADD cdc:limited:public.t, RPUSH cdc:limited:since_flush" in parts["limited"], parts
        assert "ACL SETUSER" in parts["limited"]
        assert "the key cdc:wrongtype:offsets holds a string, where the sink keeps a hash" in parts["wrongtype"], parts
        assert "[sink_unavailable]" in parts["down"] and "cannot reach" in parts["down"], parts
        # nothing was written: only the test's own key
        assert sorted(k.decode() for k in client.keys("*")) == ["cdc:wrongtype:offsets"]
    finally:
        server.stop()


@PG15
def test_check_rabbitmq_sink_login_vhost_and_exchange_type(pgdb: str, tmp_path: Path, free_port: int) -> None:
    import asyncio

    from cdc_local.postgres import free_port as another_port
    from tests.rabbitmq_harness import _with_channel, exchange_exists, shared_node

    node = shared_node()
    taken = f"direct{uuid.uuid4().hex[:8]}"

    async def declare_direct(ch: Any) -> None:
        await ch.exchange_declare(taken, exchange_type="direct", durable=True)

    asyncio.run(_with_channel(node.url(), declare_direct))
    fresh = f"fresh{uuid.uuid4().hex[:8]}"
    existing = f"topic{uuid.uuid4().hex[:8]}"

    async def declare_topic(ch: Any) -> None:
        await ch.exchange_declare(existing, exchange_type="topic", durable=True)

    asyncio.run(_with_channel(node.url(), declare_topic))
    parts = _sink_check(pgdb, tmp_path, free_port, {
        "good": {"type": "rabbitmq", "url": node.url(), "exchange": fresh},
        "good_existing": {"type": "rabbitmq", "url": node.url(), "exchange": existing},
        "badpw": {"type": "rabbitmq", "url": node.url(password="wrong-pw"), "exchange": fresh},
        "novhost": {"type": "rabbitmq", "url": node.url("nope"), "exchange": fresh},
        "direct": {"type": "rabbitmq", "url": node.url(), "exchange": taken},
        "down": {"type": "rabbitmq", "url": f"amqp://cdc:x@127.0.0.1:{another_port()}/", "exchange": fresh},
    })
    assert parts["good"] == "good: ok" and parts["good_existing"] == "good_existing: ok", parts
    assert "[sink_auth]" in parts["badpw"] and "refused the login" in parts["badpw"], parts
    assert "wrong-pw" not in "".join(parts.values())
    assert "refused virtual host 'nope'" in parts["novhost"], parts
    assert f"exchange {taken!r} exists with other settings" in parts["direct"], parts
    assert "[sink_unavailable]" in parts["down"], parts
    assert not exchange_exists(node.url(), fresh), "cdc check declared the exchange"
