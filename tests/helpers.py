"""Helpers for integration tests: run the real `cdc` CLI, read what the file sink wrote,
fold events into rows, and wait for conditions with a deadline (never fixed sleeps)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may raise until it holds
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def write_config(folder: Path, pipelines: list[dict[str, Any]], *, api_port: int, extra: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {
        "state": {"path": str(folder / "state.sqlite")},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "log": {"level": "info", "format": "json"},
        "pipelines": pipelines,
    }
    if extra:
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(doc.get(k), dict):
                doc[k].update(v)
            else:
                doc[k] = v
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def pg_pipeline(name: str, dsn: str, tables: list[str], out: Path, **source: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": name,
        "source": {"type": "postgres", "dsn": dsn, "tables": tables, "heartbeat_s": 1, **source},
        "snapshot": {"mode": "never"},
        "sink": {"type": "file", "path": str(out)},
    }
    return p


def cdc_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cdc_env(),
        cwd=str(ROOT),
    )


class CdcService:
    """A `cdc run` process with its stderr captured to a file."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config.parent / f"cdc-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", str(config), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or cdc_env(),
            cwd=str(ROOT),
        )
        doc = yaml.safe_load(config.read_text())
        port = doc["api"]["listen"].rpartition(":")[2]
        if port.startswith("${"):  # one file for several instances: the port from the env
            port = (env or os.environ)[port[2:-1]]
        self.port = int(port)
        self.token = doc["api"].get("token")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out

    def get(self, path: str, token: str | None = None, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        headers = {}
        tok = token if token is not None else self.token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        try:
            conn.request(method, path, body=orjson.dumps(body) if body is not None else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        if "json" in ctype:
            return resp.status, orjson.loads(data)
        return resp.status, data.decode()

    def pipeline(self, name: str) -> dict[str, Any]:
        status, doc = self.get(f"/pipelines/{name}")
        assert status == 200, doc
        return doc  # type: ignore[no-any-return]

    def wait_state(self, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"cdc exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            doc = self.pipeline(name)
            return doc if doc["state"] == state else None

        try:
            return wait_for(check, timeout, what=f"pipeline {name} {state}")  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- cdc log ---\n{self.logs()[-4000:]}") from None

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> CdcService:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


def read_events(folder: Path) -> list[dict[str, Any]]:
    """Every complete line of the events files, in order (a torn last line, being written or
    left by a failed write, is not an event yet)."""
    events = []
    for f in sorted(folder.glob("events-*.jsonl")):
        lines = f.read_bytes().split(b"\n")
        for line in lines[:-1]:
            if line:
                events.append(orjson.loads(line))
    return events


def read_schemas(folder: Path) -> list[dict[str, Any]]:
    path = folder / "schemas.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().split(b"\n") if line]


def fold(events: list[dict[str, Any]], table: str) -> dict[bytes, dict[str, Any]]:
    """Replay a table's events (c/u/d/r/t in delivery order) into rows keyed by key JSON."""
    rows: dict[bytes, dict[str, Any]] = {}
    for e in events:
        if e["schema"]["name"] != table:
            continue
        op = e["op"]
        if op == "t":
            rows.clear()
            continue
        key = orjson.dumps(e["key"], option=orjson.OPT_SORT_KEYS)
        if op in ("c", "r", "u"):
            row = dict(e["after"])
            for col in e.get("unchanged", []):
                if key in rows and col in rows[key]:
                    row[col] = rows[key][col]
            rows[key] = row
        elif op == "d":
            rows.pop(key, None)
    return rows


def table_rows(dsn: str, table: str, key: list[str], columns: str = "*") -> dict[bytes, dict[str, Any]]:
    """The table's rows as the event values would show them (via to_jsonb for exactness)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(f"SELECT to_jsonb(t) FROM {table} t").fetchall()
    out = {}
    for (doc,) in rows:
        k = orjson.dumps({c: doc[c] for c in key}, option=orjson.OPT_SORT_KEYS)
        out[k] = doc
    return out


def dedupe(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for e in events:
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        out.append(e)
    return out


# -- helpers for the error, CLI, API and plugin integration tests --------------------------------


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``text`` (other lines are skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def find_log(records: list[dict[str, Any]], event: str, **match: Any) -> dict[str, Any] | None:
    """The first log record named ``event`` whose fields equal ``match``."""
    for r in records:
        if r.get("event") == event and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def run_until_exit(config: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]], str]:
    """``cdc run CONFIG ARGS`` expected to end by itself: (exit code, log records, stderr)."""
    proc = run_cli("run", str(config), *args, timeout=timeout, env=env)
    return proc.returncode, log_records(proc.stderr), proc.stderr


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def query(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def slot_row(dsn: str, slot: str) -> dict[str, Any] | None:
    """The slot's row of pg_replication_slots (LSNs as text), or None."""
    rows = query(
        dsn,
        "SELECT slot_name, active_pid, confirmed_flush_lsn::text AS confirmed_flush_lsn, "
        "restart_lsn::text AS restart_lsn, database FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    if not rows:
        return None
    return dict(zip(("slot_name", "active_pid", "confirmed_flush_lsn", "restart_lsn", "database"), rows[0], strict=True))


def lsn_int(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def create_database(server: Any) -> tuple[str, str]:
    """A new empty database on ``server`` (a LocalPostgres): (name, DSN)."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    execute(server.dsn(), f'CREATE DATABASE "{name}"')
    return name, server.dsn(name)


def drop_database(server: Any, name: str) -> None:
    """Drop a database made by :func:`create_database`, with its replication slots."""
    with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=10) as conn:
        deadline = time.monotonic() + 30
        while True:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()",
                (name,),
            )
            try:
                for (slot,) in conn.execute(
                    "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
                ).fetchall():
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
                return
            except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the Prometheus sample ``name{labels...}`` in ``text`` (labels may be a
    subset of the sample's), or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(
            (k, v.strip('"'))
            for k, _, v in (part.partition("=") for part in label_text.rstrip("}").split(",") if part)
        )
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def read_complete_events(folder: Path) -> list[dict[str, Any]]:
    """Like :func:`read_events`, for a folder the service is still writing: the bytes after a
    file's last newline (a line being written right now) are left out."""
    events = []
    for f in sorted(folder.glob("events-*.jsonl")):
        data = f.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].split(b"\n"):
            if line:
                events.append(orjson.loads(line))
    return events


def peak_rss_kb(pid: int) -> int:
    """Peak resident set size (VmHWM in /proc/PID/status) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


# -- snapshots --------------------------------------------------------------------------------------


def snapshot_record(svc: CdcService, pipeline: str, sid: str) -> dict[str, Any]:
    """One snapshot as the API shows it."""
    status, doc = svc.get(f"/pipelines/{pipeline}/snapshots/{sid}")
    assert status == 200, doc
    return doc  # type: ignore[no-any-return]


def wait_snapshot_done(svc: CdcService, pipeline: str, sid: str, timeout: float = 120) -> dict[str, Any]:
    """Wait until the snapshot is done; fail at once if it fails, is cancelled or cdc exits."""

    def done() -> dict[str, Any] | None:
        if svc.proc.poll() is not None:
            raise AssertionError(f"cdc exited:\n{svc.logs()[-4000:]}")
        doc = snapshot_record(svc, pipeline, sid)
        assert doc["state"] in ("pending", "running", "done"), doc
        return doc if doc["state"] == "done" else None

    return wait_for(done, timeout, what=f"snapshot {sid} done")  # type: ignore[no-any-return]


def snapshot_reads(events: list[dict[str, Any]], sid: str | None = None) -> list[dict[str, Any]]:
    """The ``r`` events (of one snapshot when ``sid`` is given)."""
    return [e for e in events if e["op"] == "r" and (sid is None or e["source"]["snapshot_id"] == sid)]
