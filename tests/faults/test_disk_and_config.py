"""A full disk under the file sink, and hostile pipeline files through the command line.

(1) **Disk full.** The file sink's folder is on its own 64 MB tmpfs
    (:class:`tests.sink_harness.FileHarness`), a PostgreSQL 15 pipeline streams a writer's small
    transactions into it, and mid-stream a filler file takes every free block (a real
    ``ENOSPC``). The pipeline must stop advancing its checkpoint and say so (``/healthz`` 503
    naming the pipeline, state ``retrying``, a sink/disk error kind); the disk stays full for
    :data:`HOLD_S` s while the checkpoint is watched; then the filler is removed. The pipeline
    must carry on by itself: the sink folds into the tables, every acknowledged change is there,
    and the file holds no duplicate. Time to recover: from freeing the space to the first new
    checkpoint (saved only once the sink fsynced what it covers).

(2) **Hostile pipeline files.** :data:`FILES` malformed files derived, with a seeded
    ``random.Random``, from one valid document (the shape of tests/unit/test_config_fuzz.py,
    which fuzzes the loader in-process with hypothesis; this test goes through the CLI entry
    point instead): truncations at random byte offsets, random bytes, wrong types at known keys,
    unknown keys, bad ``${VAR}`` references, duplicate pipeline names, invalid YAML, huge
    values, deep nesting and non-UTF-8 bytes. Each kind has a check of its own, independent of
    the product, that the file really is invalid (a truncation that happens to leave a complete
    document, or a YAML edit that still parses, is drawn again). Every file goes through
    ``cdc.cli.main(["validate", FILE])`` in-process; one file of each kind also through real
    ``python -m cdc validate`` and ``python -m cdc run`` processes. Each must exit 2 and print at
    least one ``FILE:LINE: path: message`` / ``FILE: message`` line on stderr, with no traceback
    and none of the loader's safety-net messages ("internal error", "this value cannot be
    checked (SomeError: ...)": a bug caught late); a line number must lie in the file, and a
    "not UTF-8" message must name the first undecodable byte and its line.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.cli import main as cdc_main
from tests.faults._support import (
    ChangeWriter,
    FileOut,
    PgTables,
    alive,
    checkpoint,
    health,
    outcome,
    stop_cleanly,
    wait_converged,
    wait_new_checkpoint,
    wait_recovered,
)
from tests.helpers import CdcService, run_cli, wait_for, write_config
from tests.sink_harness import FileHarness

# -- (1) disk full under the file sink ---------------------------------------------------------------

NAME = "diskfull"
HOLD_S = 5.0  # how long the disk stays full (the injected fault)


def _events_bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.glob("events-*.jsonl"))


class CheckpointWatch(threading.Thread):
    """Polls ``/pipelines/NAME`` and keeps every checkpoint change with the moment it was first
    seen (time.monotonic())."""

    def __init__(self, svc: CdcService, name: str, interval: float = 0.02) -> None:
        super().__init__(name="checkpoint-watch", daemon=True)
        self.svc, self.name, self.interval = svc, name, interval
        self.halt = threading.Event()
        self.changes: list[tuple[float, str | None]] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                position = checkpoint(self.svc, self.name)
            except Exception:  # noqa: BLE001 - a poll cut by the test's end
                position = None if not self.changes else self.changes[-1][1]
            with self.lock:
                if not self.changes or self.changes[-1][1] != position:
                    self.changes.append((time.monotonic(), position))
            self.halt.wait(self.interval)

    def last(self) -> tuple[float, str | None]:
        with self.lock:
            return self.changes[-1]

    def first_change_after(self, since: float, old: str | None) -> tuple[float, str | None] | None:
        with self.lock:
            return next(((t, p) for t, p in self.changes if t >= since and p != old), None)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def _more_transactions(svc: CdcService, writer: ChangeWriter, n: int) -> None:
    target = writer.transactions + n

    def written() -> bool:
        writer.check()
        alive(svc)
        return writer.transactions >= target

    wait_for(written, 60, interval=0.05, what=f"{n} more transactions")


def test_file_sink_disk_full(pg15db: str, tmp_path: Path, free_port: int, ledger: Any) -> None:  # noqa: F811
    db = PgTables(pg15db)
    db.create()
    fs = FileHarness(tmp_path / "fs")  # mounts its own 64 MB tmpfs (as root)
    writer = ChangeWriter(db, seed="disk-full", pause=0.01)
    svc: CdcService | None = None
    watch: CheckpointWatch | None = None
    try:
        sink = fs.sink_config()
        out = FileOut(Path(sink["path"]))
        pipeline = {"name": NAME, "source": db.source(), "snapshot": {"mode": "never"}, "sink": sink}
        config = write_config(tmp_path, [pipeline], api_port=free_port)
        svc = CdcService(config)
        svc.wait_state(NAME, "running", timeout=30)
        writer.start()
        _more_transactions(svc, writer, 100)
        for _ in range(2):  # mid-stream: the pipeline is checkpointing
            wait_new_checkpoint(svc, NAME, checkpoint(svc, NAME), timeout=30)
        watch = CheckpointWatch(svc, NAME)
        watch.start()
        wait_for(lambda: watch.changes, 5, what="the first checkpoint poll")

        health_samples: Counter[int] = Counter()
        states: Counter[str] = Counter()
        with fs.outage():
            full_at = time.monotonic()
            tx_at_full = writer.transactions

            def reported() -> tuple[float, dict[str, Any], dict[str, Any]] | None:
                alive(svc)
                writer.check()
                status, doc = svc.get("/healthz")
                if status != 503:
                    return None
                failing = {f["pipeline"]: f for f in doc.get("failing", [])}
                p = svc.pipeline(NAME)
                if NAME in failing and p["state"] == "retrying":
                    return time.monotonic(), failing[NAME], p
                return None

            try:
                reported_at, failing, pdoc = wait_for(reported, 30, interval=0.02, what="/healthz 503 naming the pipeline, state retrying")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; pipelines: {svc.get('/pipelines')[1]}\n--- cdc log ---\n{svc.logs()[-3000:]}") from None
            kind = pdoc["last_error"]["kind"] if pdoc.get("last_error") else None
            message = pdoc["last_error"]["message"] if pdoc.get("last_error") else ""
            assert failing["error"] == kind, (failing, pdoc["last_error"])
            assert kind is not None and ("sink" in kind or "disk" in kind), f"error kind {kind!r}: {pdoc['last_error']}"
            assert "space" in message.lower() or "ENOSPC" in message, f"the error does not say the disk is full: {message!r}"
            stuck_at, stuck = watch.last()
            size_at_report = _events_bytes(out.folder)
            # the injected fault: the disk stays full. The checkpoint may only move over what
            # still fits in the file's last, partly used page (a reopened sink cuts the file
            # back to its checkpoint, which frees that page's tail again): a few KiB, where the
            # writer produces far more while the disk is full
            hold_end = max(full_at + HOLD_S, reported_at)
            while time.monotonic() < hold_end:
                alive(svc)
                writer.check()
                health_samples[health(svc)] += 1
                states[svc.pipeline(NAME)["state"]] += 1
                time.sleep(0.05)
            tx_during = writer.transactions - tx_at_full
            grown = _events_bytes(out.folder) - size_at_report
            assert grown < 16 * 1024, f"the sink kept writing while the disk was full ({grown} bytes)"
        freed = time.monotonic()
        stuck_at, stuck = watch.last()
        rec = wait_recovered(svc, NAME, freed, timeout=90)
        first_after_at, first_after = wait_for(lambda: watch.first_change_after(freed, stuck), 5, interval=0.02, what="the watch to see the new checkpoint")
        stood_still = first_after_at - stuck_at
        watch.stop()
        _more_transactions(svc, writer, 100)
        wait_new_checkpoint(svc, NAME, checkpoint(svc, NAME), timeout=30)
        writer.stop()
        wait_converged(out, db, timeout=90)
        stop_cleanly(svc)
        result = outcome(out, db, writer)
        logs = svc.logs()
    finally:
        writer.halt.set()
        if watch is not None:
            watch.stop()
        if svc is not None:
            svc.kill()
        fs.close()
    retry_logs = logs.count('"pipeline_retrying"') + logs.count('"pipeline_degraded"')
    flaps = health_samples.get(200, 0)
    print(
        f"disk full: {kind} ({message}); reported {reported_at - full_at:.2f} s after the disk filled; "
        f"checkpoint {stuck} stood still {stood_still:.2f} s; /healthz during the hold {dict(health_samples)}, "
        f"states {dict(states)}; {retry_logs} retry log lines; recovered: first checkpoint {rec.delivered_s:.2f} s, "
        f"/healthz 200 {rec.healthy_s:.2f} s after the space was freed; {writer.transactions} transactions "
        f"({tx_during} while full), {result.changes} changes, {result.events} events, {result.duplicates} duplicates, "
        f"lost {result.lost}"
    )
    ledger.record(
        "File sink disk full (ENOSPC on a 64 MB tmpfs), PostgreSQL 15",
        injected=1,
        lost=result.lost,
        duplicates=result.duplicates,
        recover_s=rec.delivered_s,
        note=(
            f"a filler file took every free block of the sink's tmpfs mid-stream and stayed {HOLD_S:.0f} s; "
            f"/healthz 503 naming the pipeline {reported_at - full_at:.1f} s after, state retrying, error kind "
            f"{kind}; the checkpoint stood still {stood_still:.1f} s (last save before the fill to the first after "
            f"the space was freed); /healthz answered 503 in {health_samples.get(503, 0)} of "
            f"{sum(health_samples.values())} probes while the disk was full"
            + (f" ({flaps} x 200: the pipeline shows running after each reopen, until its next write fails)" if flaps else "")
            + "; time to recover: space freed to the first new checkpoint "
            f"(/healthz 200 after {rec.healthy_s:.1f} s); writer on two tables, {writer.transactions:,} transactions "
            f"({tx_during:,} while the disk was full), {result.changes:,} changes; {result.events:,} events delivered"
        ),
    )
    assert result.lost == 0, f"{result.lost} acknowledged changes missing from the sink, e.g. {result.missing}"
    assert result.duplicates == 0, f"{result.duplicates} duplicate events in the file after the disk was full"
    assert writer.errors == 0, "the database went away during the test"
    assert first_after != stuck


# -- (2) hostile pipeline files through the CLI ------------------------------------------------------

FILES = 200
SUBPROCESS_SAMPLE = 10
SEED = "hostile-config/1"
ENV = {"PGPASSWORD": "pw"}
UNSET_PREFIX = "CDC_FUZZ_UNSET_"

#: a valid file (the shape of tests/unit/test_config_fuzz.py's VALID): three pipelines, every
#: built-in source and sink, a ${VAR}, a non-ASCII value
BASE: dict[str, Any] = {
    "state": {"path": "./cdc-state.sqlite"},
    "api": {"listen": "127.0.0.1:8080", "public_metrics": False},
    "log": {"level": "info", "format": "json"},
    "pipelines": [
        {
            "name": "shop",
            "source": {
                "type": "postgres",
                "dsn": "postgresql://cdc:${PGPASSWORD}@db:5432/shop",
                "tables": ["public.orders", "public.customers"],
                "slot": "cdc_shop",
                "heartbeat_s": 3,
                "max_retained_wal_mb": 10240,
            },
            "snapshot": {"mode": "initial", "chunk_rows": 10000},
            "columns": {"exclude": {"public.customers": ["numéro_sécu"]}},
            "values": {"bigint": "number"},
            "sink": {"type": "file", "path": "./out/shop", "rotate_mb": 128},
        },
        {
            "name": "hooks",
            "source": {"type": "mysql", "dsn": "mysql://cdc@mysql", "tables": ["shop.a"]},
            "sink": {"type": "webhook", "url": "https://example.com/cdc", "headers": {"X-Token": "t"}, "batch_max": 10},
        },
        {
            "name": "stream",
            "source": {"type": "mysql", "dsn": "mysql://cdc@mysql", "tables": ["shop.b"]},
            "sink": {"type": "kafka", "bootstrap_servers": "kafka:9092", "config": {"compression.type": "lz4"}},
        },
    ],
}

#: every key the contract names (an unknown key is made from a known one and checked against this)
CONTRACT_KEYS = {
    "state", "path", "dsn", "api", "listen", "token", "public_metrics", "log", "level", "format",
    "pipelines", "name", "source", "type", "tables", "slot", "publication", "heartbeat_s",
    "max_retained_wal_mb", "server_id", "snapshot", "mode", "chunk_rows", "columns", "exclude",
    "values", "bigint", "sink", "rotate_mb", "bootstrap_servers", "topic", "schema_topic",
    "tombstones", "topic_partitions", "topic_replication_factor", "config", "url", "secret",
    "headers", "batch_max", "timeout_s", "max_backoff_s", "positions",
}  # fmt: skip

P0, P1, P2 = ("pipelines", 0), ("pipelines", 1), ("pipelines", 2)
#: known keys by the type they want, and values of a wrong type for each
WRONG_TYPES: list[tuple[list[tuple[Any, ...]], list[Any]]] = [
    (  # strings
        [("state", "path"), ("api", "listen"), (*P0, "name"), (*P0, "source", "dsn"), (*P0, "source", "type"),
         (*P0, "sink", "path"), (*P0, "sink", "type"), (*P0, "source", "slot"), (*P1, "sink", "url"),
         (*P2, "sink", "bootstrap_servers"), (*P0, "source", "tables", 1)],
        [["a", 1], {"k": "v"}, [], {}],
    ),
    (  # numbers
        [(*P0, "source", "heartbeat_s"), (*P0, "source", "max_retained_wal_mb"), (*P0, "snapshot", "chunk_rows"),
         (*P0, "sink", "rotate_mb"), (*P1, "sink", "batch_max")],
        ["lots", [1], {"n": 1}, "ten"],
    ),
    (  # booleans
        [("api", "public_metrics")],
        ["maybe", [True], {"x": True}, "sometimes"],
    ),
    (  # lists
        [("pipelines",), (*P0, "source", "tables"), (*P0, "columns", "exclude", "public.customers")],
        [{"a": 1}, 17, True, 2.5],
    ),
    (  # mappings
        [(), ("state",), ("api",), ("log",), P0, (*P0, "source"), (*P0, "sink"), (*P0, "snapshot"),
         (*P0, "columns"), (*P0, "columns", "exclude"), (*P1, "sink", "headers"), (*P2, "sink", "config")],
        [["a", 1], "text", 5, [{"type": "file"}]],
    ),
    (  # choices
        [("log", "level"), ("log", "format"), (*P0, "snapshot", "mode"), (*P0, "values", "bigint")],
        [3, ["info"], {"info": 1}, True],
    ),
]  # fmt: skip

#: mappings of the file where a typo'ed key can go
KEY_PLACES: list[tuple[Any, ...]] = [
    (), ("state",), ("api",), ("log",), P0, (*P0, "source"), (*P0, "sink"), (*P0, "snapshot"), (*P0, "values"),
    (*P0, "columns"), P1, (*P1, "source"), (*P1, "sink"), (*P2, "source"), (*P2, "sink"),
]  # fmt: skip

#: string keys where a ${VAR} may stand
ENV_PLACES: list[tuple[Any, ...]] = [
    ("state", "path"), ("api", "listen"), (*P0, "name"), (*P0, "source", "dsn"), (*P0, "sink", "path"),
    (*P1, "sink", "url"), (*P2, "sink", "bootstrap_servers"), (*P0, "source", "tables", 0),
]  # fmt: skip
NUMBER_PLACES = [(*P0, "source", "heartbeat_s"), (*P0, "snapshot", "chunk_rows"), (*P0, "sink", "rotate_mb")]

KINDS = (
    "truncation",
    "random_bytes",
    "wrong_type",
    "unknown_key",
    "bad_env",
    "duplicate_name",
    "invalid_yaml",
    "huge_value",
    "deep_nesting",
    "non_utf8",
)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1 << 30)


def _get(doc: Any, where: tuple[Any, ...]) -> Any:
    for part in where:
        doc = doc[part]
    return doc


def _set(doc: Any, where: tuple[Any, ...], value: Any) -> Any:
    if not where:
        return value
    _get(doc, where[:-1])[where[-1]] = value
    return doc


def _yaml_fails(text: str) -> bool:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        return True
    except RecursionError:
        return True
    return False


def _incomplete(data: bytes) -> bool:
    """Independent of the product: this (truncated) file cannot be a valid pipeline file: not
    UTF-8, not YAML, no pipelines, or a pipeline that lost a key the contract requires."""
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return True
    if not isinstance(doc, dict) or not isinstance(doc.get("pipelines"), list) or not doc["pipelines"]:
        return True
    if any(not isinstance(doc.get(s, {}), dict) for s in ("state", "api", "log")):
        return True
    required = {"file": "path", "webhook": "url", "kafka": "bootstrap_servers"}
    for p in doc["pipelines"]:
        if not isinstance(p, dict) or not p.get("name"):
            return True
        source, sink = p.get("source"), p.get("sink")
        if not isinstance(source, dict) or not isinstance(sink, dict):
            return True
        if not source.get("type") or not source.get("dsn") or not source.get("tables"):
            return True
        if not sink.get("type") or not sink.get(required.get(sink["type"], "type")):
            return True
        if any(v is None for section in (p, source, sink) for v in section.values()):
            return True
    return False


class Generator:
    """Makes the malformed files, each with a check (independent of the product) that it is
    malformed; an edit that fails its check is drawn again (``redrawn`` counts them)."""

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)
        self.text = _dump(BASE)
        self.data = self.text.encode("utf-8")
        self.redrawn: Counter[str] = Counter()
        self.variants: Counter[str] = Counter()
        self.unset = 0

    def make(self, kind: str) -> bytes:
        make: Callable[[], tuple[bytes, bool, str]] = getattr(self, f"_{kind}")
        for _ in range(1000):
            data, malformed, variant = make()
            if malformed:
                self.variants[f"{kind}/{variant}"] += 1
                return data
            self.redrawn[kind] += 1
        raise AssertionError(f"could not make a malformed file of kind {kind}")

    def _doc(self) -> Any:
        return copy.deepcopy(BASE)

    def _truncation(self) -> tuple[bytes, bool, str]:
        cut = self.data[: self.rng.randrange(0, len(self.data))]
        return cut, _incomplete(cut), "cut"

    def _random_bytes(self) -> tuple[bytes, bool, str]:
        data = self.rng.randbytes(self.rng.randint(1, 800))
        return data, _incomplete(data), "bytes"

    def _wrong_type(self) -> tuple[bytes, bool, str]:
        places, wrong = self.rng.choice(WRONG_TYPES)
        where = self.rng.choice(places)
        doc = _set(self._doc(), where, copy.deepcopy(self.rng.choice(wrong)))
        return _dump(doc).encode(), True, "at " + ".".join(map(str, where)) if where else "document"

    def _unknown_key(self) -> tuple[bytes, bool, str]:
        where = self.rng.choice(KEY_PLACES)
        doc = self._doc()
        target = _get(doc, where)
        base = self.rng.choice(sorted(k for k in target if isinstance(k, str)))
        i = self.rng.randrange(len(base))
        how = self.rng.choice(["double", "swap", "drop", "plural", "case"])
        if how == "double":
            key = base[: i + 1] + base[i:]
        elif how == "swap" and len(base) > 1:
            i = min(i, len(base) - 2)
            key = base[:i] + base[i + 1] + base[i] + base[i + 2 :]
        elif how == "drop" and len(base) > 1:
            key = base[:i] + base[i + 1 :]
        elif how == "plural":
            key = base + "s"
        else:
            key = base.capitalize()
        ok = key not in CONTRACT_KEYS and key not in target
        target[key] = copy.deepcopy(target[base]) if self.rng.random() < 0.5 else "x"
        return _dump(doc).encode(), ok, how

    def _bad_env(self) -> tuple[bytes, bool, str]:
        doc = self._doc()
        how = self.rng.choice(["unset", "unclosed", "empty", "bad_name", "not_a_number"])
        if how == "not_a_number":
            where = self.rng.choice(NUMBER_PLACES)
            ref = self.rng.choice(["${PGPASSWORD}", "${" + UNSET_PREFIX + "N:-abc}", "${PGPASSWORD:-1}x"])
            return _dump(_set(doc, where, ref)).encode(), True, how
        where = self.rng.choice(ENV_PLACES)
        value = str(_get(doc, where))
        at = self.rng.randrange(len(value) + 1)
        if how == "unset":
            self.unset += 1
            ref = "${" + f"{UNSET_PREFIX}{self.unset}" + "}"
        elif how == "unclosed":
            ref = "${PGPASSWORD"
            at = len(value)  # nothing after it can close it
        elif how == "empty":
            ref = "${}"
        else:
            ref = self.rng.choice(["${1ABC}", "${A B}", "${$}", "${PG.PASSWORD}", "${-x}"])
        return _dump(_set(doc, where, value[:at] + ref + value[at:])).encode(), True, how

    def _duplicate_name(self) -> tuple[bytes, bool, str]:
        doc = self._doc()
        how = self.rng.choice(["rename", "copy", "copy_other_sink"])
        if how == "rename":
            a, b = self.rng.sample(range(3), 2)
            doc["pipelines"][b]["name"] = doc["pipelines"][a]["name"]
        elif how == "copy":
            doc["pipelines"].insert(self.rng.randrange(4), copy.deepcopy(self.rng.choice(doc["pipelines"])))
        else:
            twin = copy.deepcopy(doc["pipelines"][0])
            twin["sink"] = {"type": "file", "path": "./out/other"}
            doc["pipelines"].append(twin)
        return _dump(doc).encode(), True, how

    def _invalid_yaml(self) -> tuple[bytes, bool, str]:
        lines = self.text.split("\n")
        how = self.rng.choice(["tab_indent", "double_quote", "single_quote", "unclosed_flow", "colon_in_value", "bad_indent"])
        indented = [i for i, ln in enumerate(lines) if ln.startswith(" ") and ln.strip()]
        values = [i for i, ln in enumerate(lines) if re.match(r"^\s*(- )?[\w.]+: [^'\"\[{].*$", ln)]
        if how == "tab_indent":
            i = self.rng.choice(indented)
            stripped = lines[i].lstrip(" ")
            lines[i] = "\t" * self.rng.randint(1, 2) + stripped
        elif how in ("double_quote", "single_quote", "unclosed_flow", "colon_in_value"):
            i = self.rng.choice(values)
            key, _, value = lines[i].partition(": ")
            if how == "double_quote":
                lines[i] = f'{key}: "{value}'
            elif how == "single_quote":
                lines[i] = f"{key}: '{value}"
            elif how == "unclosed_flow":
                lines[i] = f"{key}: [{value}, {value}"
            else:
                lines[i] = f"{key}: {value}: {value}"
        else:
            i = self.rng.choice(indented)
            lines[i] = " " * self.rng.choice([1, 3]) + lines[i]
        text = "\n".join(lines)
        return text.encode(), _yaml_fails(text), how

    def _huge_value(self) -> tuple[bytes, bool, str]:
        doc = self._doc()
        rng = self.rng
        how = rng.choice(["long_name", "long_slot", "port", "negative", "many_tables"])
        if how == "long_name":
            n = rng.choice([rng.randint(49, 5000), rng.randint(5000, 300_000), rng.randint(1_100_000, 3_000_000)])
            doc["pipelines"][rng.randrange(3)]["name"] = "a" * n
            how += f" ({n:,} chars)"
        elif how == "long_slot":
            n = rng.randint(64, 200_000)
            doc["pipelines"][0]["source"][rng.choice(["slot", "publication"])] = "s" * n
            how += f" ({n:,} chars)"
        elif how == "port":
            n = rng.choice([rng.randint(6, 100), rng.randint(100, 4300), rng.randint(4301, 20_000)])
            doc["api"]["listen"] = "127.0.0.1:" + "9" * n
        elif how == "negative":
            where = rng.choice([*NUMBER_PLACES, (*P0, "source", "max_retained_wal_mb")])
            _set(doc, where, -(10 ** rng.randint(3, 4000)))
        else:
            n = rng.randint(1000, 20_000)
            tables = [f"public.t{i}" for i in range(n)]
            tables.insert(rng.randrange(n), "no_schema_" + "x" * rng.randint(1, 1000))
            doc["pipelines"][0]["source"]["tables"] = tables
            how += f" ({n:,})"
        return _dump(doc).encode(), True, how.split(" ")[0]

    def _deep_nesting(self) -> tuple[bytes, bool, str]:
        rng = self.rng
        depth = rng.choice([rng.randint(2, 63), rng.randint(65, 999), rng.randint(1000, 10_000), rng.randint(10_000, 150_000)])
        how = rng.choice(["flow_list", "flow_map", "block_map", "document"])
        if how == "block_map":
            depth = min(depth, 600)  # the text grows with depth squared
            nested = "".join("  " * i + "a:\n" for i in range(1, depth)) + "  " * depth + "a: 1\n"
            doc = self._doc()
            del doc["log"]
            return ("log:\n" + nested + _dump(doc)).encode(), True, how
        deep = "[" * depth + "]" * depth if how in ("flow_list", "document") else "{a: " * depth + "1" + "}" * depth
        if how == "document":
            return deep.encode(), True, how
        marker = "DEEPVALUEMARKER"
        where = rng.choice([("state", "path"), (*P0, "name"), (*P0, "sink", "path"), (*P0, "source", "tables", 0), (*P1, "sink", "url")])
        text = _dump(_set(self._doc(), where, marker)).replace(marker, deep)
        return text.encode(), True, f"{how}"

    def _non_utf8(self) -> tuple[bytes, bool, str]:
        rng = self.rng
        how = rng.choice(["latin1", "stray_byte", "overlong", "surrogate", "cp1252_quotes", "bom_then_latin1"])
        if how == "latin1":
            data = self.text.encode("latin-1")
        elif how == "bom_then_latin1":
            data = b"\xef\xbb\xbf" + self.text.encode("latin-1")
        elif how == "cp1252_quotes":
            data = self.data.replace(b"./out/shop", b"\x93./out/shop\x94")
        else:
            bad = {
                "stray_byte": bytes([rng.choice([*range(0x80, 0xC0), 0xC0, 0xC1, *range(0xF5, 0x100)])]),
                "overlong": b"\xc0\xaf",
                "surrogate": b"\xed\xa0\x80",
            }[how]
            at = rng.randrange(len(self.data) + 1)
            data = self.data[:at] + bad + self.data[at:]
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return data, True, how
        return data, False, how


#: a problem line: FILE:LINE: path: message, or FILE: message
def _problem_lines(text: str, file: str) -> list[re.Match[str]]:
    pattern = re.compile(rf"^{re.escape(file)}(?::(\d+))?: (\S.*)$")
    return [m for m in (pattern.match(line) for line in text.splitlines()) if m]


def _line_count(data: bytes) -> int:
    return sum(data.count(b) for b in (b"\n", b"\r", b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")) + 2


def _judge(code: int | None, out: str, err: str, file: str, data: bytes) -> str | None:
    """Why this run is not a clean refusal, or None."""
    if code != 2:
        return f"exit {code}"
    if "Traceback" in out or "Traceback" in err:
        return "a traceback"
    lines = _problem_lines(err, file)
    if not lines:
        return f"no FILE:LINE: path: message line on stderr (stderr: {err[:300]!r})"
    for m in lines:
        if "internal error" in m.group(2) or "cannot be checked (" in m.group(2):
            return f"the loader's safety net: {m.group(0)[:300]}"
        if m.group(1) is not None and not 1 <= int(m.group(1)) <= _line_count(data):
            return f"line {m.group(1)} is outside the file: {m.group(0)[:300]}"
        named = re.search(r"not UTF-8 text \(byte 0x([0-9a-f]{2})", m.group(2))
        if named:
            line, byte = _first_bad_byte(data)
            if (m.group(1), named.group(1)) != (str(line), f"{byte:02x}"):
                return f"names byte 0x{named.group(1)} on line {m.group(1)}; the first byte that is not UTF-8 is 0x{byte:02x} on line {line}: {m.group(0)[:300]}"
    return None


def _first_bad_byte(data: bytes) -> tuple[int, int]:
    """(line, byte) of the first byte of ``data`` that is not UTF-8 (a leading BOM skipped)."""
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        return data[:at].count(b"\n") + 1, data[at]
    raise AssertionError("the file is UTF-8")


def test_hostile_config_files_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: Any) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    base = tmp_path / "valid.yaml"
    base.write_text(_dump(BASE), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cdc_main(["validate", str(base)]) == 0, err.getvalue()

    gen = Generator(SEED)
    order = [k for k in KINDS for _ in range(FILES // len(KINDS))]
    gen.rng.shuffle(order)
    files: list[tuple[str, Path, bytes]] = []
    for i, kind in enumerate(order):
        data = gen.make(kind)
        path = tmp_path / f"hostile-{i:03d}-{kind}.yaml"
        path.write_bytes(data)
        files.append((kind, path, data))

    failures: list[str] = []
    bad_files: set[str] = set()
    slowest = (0.0, "")
    longest_line = 0
    t0 = time.monotonic()
    for _kind, path, data in files:
        out, err = io.StringIO(), io.StringIO()
        started = time.monotonic()
        code: int | None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cdc_main(["validate", str(path)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else None
        except BaseException as exc:  # noqa: BLE001 - escaped from main: a traceback for a user
            code = None
            err.write(f"Traceback (escaped from main): {type(exc).__name__}: {exc}\n")
        took = time.monotonic() - started
        slowest = max(slowest, (took, path.name))
        longest_line = max([longest_line, *(len(x) for x in err.getvalue().splitlines())])
        why = _judge(code, out.getvalue(), err.getvalue(), str(path), data)
        if why:
            failures.append(f"in-process validate {path.name}: {why}")
            bad_files.add(path.name)
    in_process_s = time.monotonic() - t0

    # one file of each kind through real processes: `python -m cdc validate` and `python -m cdc run`
    sample = [gen.rng.choice([f for f in files if f[0] == kind]) for kind in KINDS][:SUBPROCESS_SAMPLE]
    t1 = time.monotonic()
    for _kind, path, data in sample:
        for command in ("validate", "run"):
            try:
                proc = run_cli(command, str(path), timeout=60)
            except subprocess.TimeoutExpired:
                failures.append(f"python -m cdc {command} {path.name}: still running after 60 s")
                bad_files.add(path.name)
                continue
            why = _judge(proc.returncode, proc.stdout, proc.stderr, str(path), data)
            if why:
                failures.append(f"python -m cdc {command} {path.name}: {why}")
                bad_files.add(path.name)
    subprocess_s = time.monotonic() - t1

    kinds = Counter(order)
    redrawn = ", ".join(f"{k} {n}" for k, n in sorted(gen.redrawn.items())) or "none"
    print(
        f"hostile config: {len(files)} files {dict(kinds)}; variants {dict(sorted(gen.variants.items()))}; "
        f"redrawn {redrawn}; in-process {in_process_s:.1f} s (slowest {slowest[0]:.2f} s {slowest[1]}), "
        f"{len(sample)} files x 2 processes {subprocess_s:.1f} s; longest stderr line {longest_line} chars; "
        f"{len(failures)} failures"
    )
    for f in failures:
        print("  ", f)
    ledger.record(
        "Hostile pipeline files through the CLI (cdc validate / cdc run)",
        injected=len(files),
        lost=len(bad_files),
        note=(
            f"{len(files)} malformed files from a seeded random.Random ({SEED!r}): "
            + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in kinds.items())
            + f"; each checked malformed independently of the product (redrawn: {redrawn}); all through "
            f"cdc.cli.main(['validate', FILE]) in-process ({in_process_s:.1f} s, slowest {slowest[0]:.2f} s), one of "
            f"each kind also through python -m cdc validate and python -m cdc run; lost = files without exit 2 and a "
            f"FILE:LINE: path: message line, or with a traceback, the loader's safety net ('internal error', 'this value cannot be checked (Exception: ...)'), a line outside the file, or a "
            f"'not UTF-8' message naming another byte or line than the first undecodable one"
        ),
    )
    assert not failures, "\n".join(failures)
