"""``cdc replay``: deliver the events archived in a file-sink folder to another pipeline's sink.

Theory of operation
-------------------
The archive is a file sink's folder (``events-NNNNNN.jsonl`` in delivery order and
``schemas.jsonl``, see :mod:`sinks.file.sink`). Before anything is delivered the whole archive
is checked once: every line complete and a cdc-format event of one pipeline, every schema
version it names present in ``schemas.jsonl``, and the selection resolved (``--after-id``
found). A torn last line, a missing ``schemas.jsonl`` or events of two pipelines stop the
command before the sink is even opened: never a partial, silent replay.

Delivery reads the selected lines in archive order, in batches. Each line is rebuilt into a
:class:`~cdc.events.ChangeEvent` (the sinks take events, not bytes), carried through the target
pipeline's transforms, and handed to the target's sink exactly like the pipeline does: schema
versions first (``write_schema``), then ``write``, ``flush``, and only then the replay's own
progress is saved. The progress is a separate record in the state store (``meta`` under the
empty pipeline name, keyed by a hash of the archive's real path, the target and the
selection), never a pipeline's checkpoint or slot: the same command again continues from the
last saved batch, opening the sink with the resume token its last ``flush`` returned (so the
file sink cuts what followed it and the postgres sink skips what it already holds), and a
finished replay run again does nothing and says so.

Byte-identical events: an event that no transform changed keeps its archived line as its
encoding (``value`` set to the line as an :class:`orjson.Fragment`), so sinks that write the
event JSON (file, kafka, webhook, nats, redis, rabbitmq) deliver the very bytes archived. An
event a transform changed is encoded from its rebuilt fields; values keep their JSON form
(numbers, strings), except that a JSON column's text is re-serialised compactly.

Ids: each id is delivered once per run of the command (a repeated id in the archive, which a
file sink can hold after a crash without its resume token, is delivered at its first place).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from cdc.config import PipelineConfig, ServiceConfig
from cdc.errors import CDCError, RetriableError
from cdc.events import TransformedEvent
from cdc.schema import SchemaVersion, schema_of_definition

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
#: events per write/flush/progress save
BATCH = 500
#: attempts after a retriable sink error before the command gives up (exit 1; run it again)
RETRIES = 8
#: tests only: seconds to sleep after each saved batch, so a test can kill a replay mid-way
BATCH_DELAY_ENV = "CDC_TEST_REPLAY_BATCH_DELAY_S"
#: tests only: events per batch
BATCH_ENV = "CDC_TEST_REPLAY_BATCH"


class ReplayError(CDCError):
    """The archive or the arguments cannot be replayed (exit 2), with the reason."""


def parse_time(text: str, what: str) -> int:
    """Unix milliseconds of an ISO 8601 time (``2026-11-28T13:45:01Z``; no zone means UTC)."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ReplayError(f"{what} {text!r} is not an ISO 8601 time (like 2026-11-28T13:45:01Z)") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


class Selection:
    """Which archived events to deliver: ``since <= source.ts_ms <= until``, or after an id."""

    def __init__(self, since: int | None, until: int | None, after_id: str | None) -> None:
        self.since, self.until, self.after_id = since, until, after_id

    def key(self) -> str:
        return orjson.dumps({"since": self.since, "until": self.until, "after_id": self.after_id}).decode()

    def wants(self, doc: dict[str, Any]) -> bool:
        ts = (doc.get("source") or {}).get("ts_ms")
        if self.since is not None and (not isinstance(ts, int) or ts < self.since):
            return False
        return not (self.until is not None and (not isinstance(ts, int) or ts > self.until))


def _events_files(folder: str) -> list[str]:
    from sinks.file.sink import _events_files as files

    return [name for _, name in files(folder)]


def _lines(
    folder: str, start: tuple[int, int], extent: list[int] | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """``(file number, offset after the line, line)`` from ``start`` = (file number, offset),
    complete lines only, up to ``extent`` (each file's size when the archive was checked: a
    folder still being written is replayed as it was then)."""
    names = _events_files(folder)
    if extent is not None:
        names = names[: len(extent)]
    for number, name in enumerate(names):
        if number < start[0]:
            continue
        offset = start[1] if number == start[0] else 0
        end = extent[number] if extent is not None else None
        with open(os.path.join(folder, name), "rb") as fh:
            fh.seek(offset)
            for line in fh:
                if not line.endswith(b"\n") or (end is not None and offset + len(line) > end):
                    break
                offset += len(line)
                if line.strip():
                    yield number, offset, line.rstrip(b"\n")


def _torn(path: str) -> bool:
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if not size:
            return False
        fh.seek(size - 1)
        return fh.read(1) != b"\n"


class Archive:
    """A checked archive: its schemas, its pipeline, and where the selection starts."""

    def __init__(self, folder: str, selection: Selection) -> None:
        self.folder = folder
        if not os.path.isdir(folder):
            raise ReplayError(f"--archive {folder}: no such folder (give a file sink's folder)")
        self.files = _events_files(folder)
        if not self.files:
            raise ReplayError(f"--archive {folder}: no events-NNNNNN.jsonl files in it (not a file sink's folder?)")
        schemas_path = os.path.join(folder, "schemas.jsonl")
        if not os.path.isfile(schemas_path):
            raise ReplayError(f"--archive {folder}: schemas.jsonl is missing; events cannot be replayed "
                              "without their schema versions (copy it back from where the folder came from)")
        self.schemas: dict[tuple[str, int], dict[str, Any]] = {}
        with open(schemas_path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    raise ReplayError(f"{schemas_path}:{n}: the last line is torn (no newline)")
                if line.strip():
                    d = orjson.loads(line)
                    self.schemas[(d["name"], int(d["version"]))] = d
        last = os.path.join(folder, self.files[-1])
        # a line being written by a running pipeline ends within moments; a torn one stays
        deadline = time.monotonic() + 2.0
        while _torn(last):
            if time.monotonic() > deadline:
                raise ReplayError(
                    f"{last}: the last line is torn (a writer was cut off mid-line); a file "
                    "sink cuts it when it opens the folder again, or cut it yourself: nothing "
                    "was replayed")
            time.sleep(0.05)
        #: each events file's size now: what this run replays
        self.extent = [os.path.getsize(os.path.join(folder, name)) for name in self.files]
        self.pipeline: str | None = None
        self.selected = 0
        #: where delivery starts (file number, offset): after --after-id's line, else the start
        self.start = (0, 0)
        found = selection.after_id is None
        for number, offset, line in _lines(folder, (0, 0), self.extent):
            where = f"{self.files[number]} (byte {offset - len(line) - 1})"
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ReplayError(f"{where}: not a JSON line ({exc})") from exc
            if not isinstance(doc, dict) or not {"id", "op", "source", "schema"} <= doc.keys():
                raise ReplayError(f"{where}: not a cdc event (was the archive written with format: "
                                  "debezium? replay takes the cdc format)")
            pipeline = doc["source"].get("pipeline")
            if self.pipeline is None:
                self.pipeline = pipeline
            elif pipeline != self.pipeline:
                raise ReplayError(f"{where}: an event of pipeline {pipeline!r} in an archive of "
                                  f"{self.pipeline!r}; replay one pipeline's folder at a time")
            ref = doc["schema"]
            if (ref["name"], int(ref["version"])) not in self.schemas:
                raise ReplayError(f"{where}: schema {ref['name']}@{ref['version']} is not in schemas.jsonl")
            if not found:
                if doc["id"] == selection.after_id:
                    found = True
                    self.start = (number, offset)
                continue
            if selection.wants(doc):
                self.selected += 1
        if not found:
            raise ReplayError(f"--after-id {selection.after_id}: no event with that id in {folder}")


def _progress_key(folder: str, target: str, selection: Selection) -> str:
    text = "\0".join((os.path.realpath(folder), target, selection.key()))
    return "replay:" + hashlib.sha256(text.encode()).hexdigest()[:24]


class Progress:
    """The progress line: a bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, total: int, done: int, err: Callable[[str], None]) -> None:
        self.total, self.done, self.err = total, done, err
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not final and now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        pct = 100 * done // self.total if self.total else 100
        if self.tty:
            width = 30
            filled = width * pct // 100
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\rreplay [{bar}] {done:,}/{self.total:,} events ({pct}%)")
            if final:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            self.err(f"replay: {done:,} of {self.total:,} events delivered ({pct}%)")


class ArchivedEvent(TransformedEvent):
    """An event rebuilt from an archived line, which it keeps (``raw``) for its encoding."""

    __slots__ = ("raw",)

    raw: Any


def _event(doc: dict[str, Any], raw: bytes, schemas: dict[tuple[str, int], SchemaVersion]) -> ArchivedEvent:
    tx = doc.get("transaction")
    sv = schemas[(doc["schema"]["name"], int(doc["schema"]["version"]))]
    json_columns = frozenset(c.name for c in sv.columns if c.type in JSON_TYPES)
    if json_columns:
        _exact_json_columns(doc, raw, json_columns)
    e = ArchivedEvent(
        doc["id"], doc["op"], doc["ts_ms"], doc["source"],
        None if tx is None else (tx["id"], tx["seq"], tx["last"]),
        sv, doc.get("key"), doc.get("before"), doc.get("after"),
        doc.get("unchanged"), doc.get("key_change"),
    )  # fmt: skip
    e.raw = orjson.Fragment(raw)
    return e


#: column types whose values the sources hand over as their exact JSON text
JSON_TYPES = frozenset({"json", "jsonb", "json[]", "jsonb[]", "_json", "_jsonb"})


def _skip(raw: bytes, i: int) -> int:
    """The index just after the JSON value that starts at ``raw[i]`` (compact JSON)."""
    c = raw[i]
    if c == 0x22:  # a string
        i += 1
        while True:
            c = raw[i]
            if c == 0x5C:
                i += 2
            elif c == 0x22:
                return i + 1
            else:
                i += 1
    if c in (0x7B, 0x5B):
        depth = 0
        while True:
            c = raw[i]
            if c == 0x22:
                i = _skip(raw, i)
                continue
            if c in (0x7B, 0x5B):
                depth += 1
            elif c in (0x7D, 0x5D):
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
    while i < len(raw) and raw[i] not in b",}]":  # a number, true, false, null
        i += 1
    return i


def _members(raw: bytes, i: int) -> dict[str, tuple[int, int]]:
    """The members of the object starting at ``raw[i]``: name -> (start, end) of its value."""
    out: dict[str, tuple[int, int]] = {}
    i += 1
    while raw[i] != 0x7D:
        end = _skip(raw, i)
        name = orjson.loads(raw[i:end])
        start = end + 1  # after the colon
        end = _skip(raw, start)
        out[name] = (start, end)
        i = end + 1 if raw[end] == 0x2C else end
    return out


def _exact_json_columns(doc: dict[str, Any], raw: bytes, columns: frozenset[str]) -> None:
    """Put back the exact archived text of JSON columns in ``before`` / ``after`` (parsing
    turned ``1.10`` into ``1.1``): as :class:`orjson.Fragment`, the form the sources use."""
    top = _members(raw, 0)
    for part in ("before", "after"):
        row = doc.get(part)
        if not isinstance(row, dict) or part not in top:
            continue
        spans = _members(raw, top[part][0])
        for column in columns & row.keys():
            if row[column] is not None:
                a, b = spans[column]
                row[column] = orjson.Fragment(raw[a:b])


def _same_fields(a: Any, b: Any) -> bool:
    return all(getattr(a, f) is getattr(b, f) for f in (
        "id", "op", "source", "transaction", "schema", "key", "before", "after", "unchanged", "key_change"))


def run(
    cfg: ServiceConfig,
    folder: str,
    target: str,
    *,
    since: str | None,
    after_id: str | None,
    until: str | None,
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> int:
    p = cfg.pipeline(target)
    if p is None:
        err(f"--to {target}: no pipeline of that name in {cfg.file} "
            f"(its pipelines: {', '.join(q.name for q in cfg.pipelines)})")
        return EXIT_INVALID
    try:
        now = int(time.time() * 1000)
        since_ms = parse_time(since, "--since") if since is not None else None
        until_ms = parse_time(until, "--until") if until is not None else None
        if since_ms is not None and since_ms > now:
            raise ReplayError(f"--since {since} is in the future: nothing could be selected")
        if since_ms is not None and until_ms is not None and since_ms > until_ms:
            raise ReplayError(f"--since {since} is after --until {until}")
        selection = Selection(since_ms, until_ms, after_id)
        archive = Archive(folder, selection)
        return _deliver(cfg, p, archive, selection, out, err)
    except ReplayError as exc:
        err(str(exc))
        return EXIT_INVALID


def _deliver(
    cfg: ServiceConfig, p: PipelineConfig, archive: Archive, selection: Selection,
    out: Callable[[str], None], err: Callable[[str], None],
) -> int:
    from cdc import registry, transforms
    from cdc.log import get_logger
    from cdc.plugin import PluginContext
    from cdc.service import open_store

    store = open_store(cfg)
    if p.sink_type == "file":
        # A file sink's folder has one writer: a pipeline's crash recovery cuts its folder back
        # to its checkpoint, which would cut replayed events (and a replay resumed the same way
        # would cut the pipeline's)
        target = os.path.realpath(str(getattr(p.sink, "path", "")))
        if target == os.path.realpath(archive.folder) or store.get_checkpoint(p.name) is not None:
            store.close()
            raise ReplayError(
                f"--to {p.name}: its file sink writes to {target}, "
                + ("the archive itself" if target == os.path.realpath(archive.folder)
                   else "a folder the pipeline itself writes to (it has a checkpoint)")
                + "; replay into a folder of its own: a pipeline defined for the replay, with "
                "another sink.path")
    key = _progress_key(archive.folder, p.name, selection)
    saved_text = store.get_meta("", key)
    state: dict[str, Any] = orjson.loads(saved_text) if saved_text else {
        "archive": os.path.realpath(archive.folder), "to": p.name, "selection": orjson.loads(selection.key()),
        "file": archive.start[0], "offset": archive.start[1], "delivered": 0, "token": None,
        "last_id": None, "done": False, "started_at": time.time(),
    }
    if state["done"]:
        out(f"replay of {archive.folder} to {p.name} already finished ({state['delivered']:,} events, "
            f"last {state['last_id']}): nothing to do")
        store.close()
        return EXIT_OK
    if saved_text:
        err(f"continuing the replay of {archive.folder} to {p.name} after {state['delivered']:,} "
            f"events (last {state['last_id']})")
    chain = transforms.build(p.transforms, p.name)
    masks = chain.masks if chain is not None else {}
    schemas: dict[tuple[str, int], SchemaVersion] = {}
    for (name, version), d in archive.schemas.items():
        m = masks.get(name)
        schemas[(name, version)] = (
            SchemaVersion.build(schema_of_definition(d), version, m) if m else SchemaVersion.from_definition(d)
        )
    log = get_logger(pipeline=p.name, command="replay")
    # sinks that keep their own position at the target (postgres) keep the replay's apart
    shared = {"position_row": f"{p.name}:{key}"}
    ctx = PluginContext(p, store, log, cfg.config_dir, shared=shared, config_file=cfg.file)
    sink = registry.load("sink", p.sink_type)(p.sink, ctx)
    progress = Progress(archive.selected, int(state["delivered"]), err)
    delay = float(os.environ.get(BATCH_DELAY_ENV) or 0)
    batch_size = int(os.environ.get(BATCH_ENV) or BATCH)
    attempt = 0
    try:
        while True:
            try:
                sink.open(state["token"])
                _pump(sink, chain, archive, selection, schemas, state, progress,
                      lambda: store.set_meta("", key, orjson.dumps(state).decode()), delay, batch_size)
                break
            except RetriableError as exc:
                attempt += 1
                sink.close()
                if attempt > RETRIES:
                    raise
                err(f"replay: {exc}; retrying from the last saved batch")
                time.sleep(min(0.2 * 2 ** attempt, 10))
        state["done"] = True
        store.set_meta("", key, orjson.dumps(state).decode())
        progress.update(int(state["delivered"]), final=True)
        out(f"replayed {state['delivered']:,} events from {archive.folder} to {p.name}"
            + (f" (last {state['last_id']})" if state["last_id"] else ""))
        return EXIT_OK
    except (CDCError, transforms.TransformFailed) as exc:
        progress.update(int(state["delivered"]), final=True)
        where = archive.files[state["file"]] if state["file"] < len(archive.files) else "the end"
        err(f"replay failed: {exc}")
        err(f"stopped after {state['delivered']:,} events (last {state['last_id'] or 'none'}, "
            f"{where} byte {state['offset']}); run the same command again to continue")
        return EXIT_FAILED
    finally:
        sink.close()
        store.close()


def _pump(
    sink: Any, chain: Any, archive: Archive, selection: Selection,
    schemas: dict[tuple[str, int], SchemaVersion], state: dict[str, Any], progress: Progress,
    save: Callable[[], None], delay: float, batch_size: int,
) -> None:
    seen: set[str] = set()
    written: set[tuple[str, int]] = set()
    batch: list[ArchivedEvent] = []
    pending_ids: int = 0
    last: tuple[int, int] = (state["file"], state["offset"])
    last_id: str | None = state["last_id"]

    def send() -> None:
        nonlocal batch, pending_ids
        events: list[Any] = list(batch)
        if chain is not None:
            events = chain.apply(events)
        originals = {id(e): e for e in batch}
        for e in events:
            orig = originals.get(id(e))
            if orig is not None:
                e.value = orig.raw
            elif isinstance(e, TransformedEvent) and e.value is None:
                base = next((b for b in batch if b.id == e.id), None)
                if base is not None and _same_fields(e, base):
                    e.value = base.raw
        for e in events:
            if (e.schema.name, e.schema.version) not in written:
                sink.write_schema(e.schema)
                written.add((e.schema.name, e.schema.version))
        if events:
            sink.write(events)
        token = sink.flush()
        state["file"], state["offset"] = last
        state["token"] = token
        state["delivered"] = int(state["delivered"]) + pending_ids
        state["last_id"] = last_id
        save()
        progress.update(int(state["delivered"]))
        batch, pending_ids = [], 0
        if delay:
            time.sleep(delay)

    for number, offset, line in _lines(archive.folder, (state["file"], state["offset"]), archive.extent):
        last = (number, offset)
        doc = orjson.loads(line)
        if doc["id"] in seen or not selection.wants(doc):
            continue
        seen.add(doc["id"])
        e = _event(doc, line, schemas)
        batch.append(e)
        pending_ids += 1
        last_id = doc["id"]
        if len(batch) >= batch_size:
            send()
    if batch or (state["file"], state["offset"]) != last:
        send()
