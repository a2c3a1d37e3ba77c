"""The README's first steps, as a new user runs them on a fresh clone: `make demo` (a virtualenv,
the install, the demo), then in a new terminal the README's next commands, then Ctrl-C.

The clone is of the committed HEAD; the install uses pip's configured package sources."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

import orjson

from tests.helpers import ROOT


def _user_env() -> dict[str, str]:
    """A new terminal: no virtualenv active, none of ours on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    ours = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != ours)
    return env


def _blocks(readme: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", readme, re.S)


def test_readme_first_steps_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "cdc"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    readme = (clone / "README.md").read_text()
    first = _blocks(readme, "sh")[0]
    assert first.splitlines()[0].split("#")[0].strip() == "make demo", first
    env = _user_env()
    demo = subprocess.Popen(["make", "demo"], cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    sel = selectors.DefaultSelector()
    assert demo.stdout is not None and demo.stderr is not None
    sel.register(demo.stdout, selectors.EVENT_READ, "out")
    sel.register(demo.stderr, selectors.EVENT_READ, "err")
    out, err = b"", b""
    try:
        deadline = time.monotonic() + 600  # the virtualenv and the install come first
        while time.monotonic() < deadline and demo.poll() is None:
            for key, _ in sel.select(timeout=1):
                chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if key.data == "out":
                    out += chunk
                else:
                    err += chunk
            if any(line.startswith(b'{"id"') for line in out.splitlines()):
                break
        events = [orjson.loads(line) for line in out.splitlines() if line.startswith(b'{"id"')]
        assert events, f"no event from make demo:\n{err.decode()[-3000:]}"

        # a new terminal: the README's next commands, as written there
        tour = readme.split("**2. A real pipeline.**", 1)[1]
        assert ". .venv/bin/activate" in readme.split("## A five-minute tour")[0]
        (clone / "shop.yaml").write_text(_blocks(tour, "yaml")[0])
        commands = _blocks(tour, "sh")[0]
        validate = next(line.split("#")[0].strip() for line in commands.splitlines() if "validate" in line)
        assert validate == "cdc validate shop.yaml"
        proc = subprocess.run(["bash", "-c", f". .venv/bin/activate && {validate}"], cwd=clone,
                              env={**env, "PGPASSWORD": "secret"}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "valid" in proc.stdout, proc
        # the command the demo itself suggests for a new terminal
        m = re.search(r"in another terminal: (\S+) status (\S+)", err.decode())
        assert m, err.decode()[-3000:]
        proc = subprocess.run([m[1], "status", m[2]], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "demo: running" in proc.stdout, proc
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole job
        try:
            demo.wait(60)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
    rest = demo.stderr.read()
    text = (err + rest).decode()
    assert "cdc demo: stopped, nothing left running" in text, text[-3000:]
