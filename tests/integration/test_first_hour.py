"""What a new user trips over in the first hour (issue "The first hour"): Ctrl-C and the other
stop signals, `cdc check`, `cdc snapshots`, `cdc tail`, the status of a failed pipeline. Real
servers and real subprocesses receiving real signals; PostgreSQL 15."""

from __future__ import annotations

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
from psycopg.conninfo import make_conninfo

from tests.helpers import (
    ROOT,
    CdcService,
    cdc_env,
    execute,
    pg_pipeline,
    query,
    run_cli,
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
    # a sink that cannot be followed says what can
    p2 = pg_pipeline("w", pgdb, ["public.t"], out)
    p2["sink"] = {"type": "webhook", "url": "http://127.0.0.1:9/hook"}
    cfg2 = write_config(tmp_path / "w", [p2], api_port=free_port) if (tmp_path / "w").mkdir() is None else cfg
    proc = run_cli("tail", str(cfg2), "w")
    assert proc.returncode == 1 and "`type: file`" in proc.stderr and "webhook" in proc.stderr, proc
