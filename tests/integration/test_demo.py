"""`cdc demo` (contract section 1): an embedded PostgreSQL, a writer and a file sink, each event
printed on stdout as one JSON line; the CLI reaches the demo through its entry point."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time

from tests.helpers import ROOT, cdc_env


def test_demo_prints_events_and_stops_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cdc_env(), cwd=str(ROOT),
    )
    events = []
    try:
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        while len(events) < 3 and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=1):
                line = proc.stdout.readline()
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and doc.get("op") in ("c", "u", "d", "r"):
                    events.append(doc)
        assert len(events) >= 3, proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no events"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert code == 0
    assert all(e["id"] and e["schema"]["name"] for e in events)
