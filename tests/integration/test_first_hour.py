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
from pathlib import Path

import orjson
import psycopg
import pytest

from tests.helpers import (
    ROOT,
    CdcService,
    cdc_env,
    execute,
    pg_pipeline,
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
