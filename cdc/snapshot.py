"""Snapshots: the current rows of tables, interleaved with the stream (docs/snapshots.md).

Theory of operation (after Netflix's DBLog). One mechanism serves the initial snapshot
(``snapshot.mode: initial``), on-demand ones (``cdc snapshot``, the API) and ``initial_only``.

A snapshot reads each of its tables in chunks of ``chunk_rows`` rows in key order (keyset
pagination: ``WHERE key > last key ORDER BY key LIMIT n``), each chunk in one short consistent
read on its own connection, on a worker thread, while the stream keeps flowing; no lock is
taken. Where a chunk's rows go in the stream is decided by the dispatcher, which sees the
stream in delivery order:

* the source's reader gives each chunk a *high watermark* (a stream position: every
  transaction the read saw is in the stream before it) and a visibility test for streamed
  events (did the read see this event's transaction?);
* every streamed event of the table that the read did not see, and that the stream delivers
  before the chunk's rows, is newer than the read: its key is dropped from the chunk (a
  truncate drops the whole chunk). Events delivered before the chunk arrived (since the table's
  snapshot began) are kept until a read sees them, and applied when a chunk arrives: a
  transaction can be in the stream yet still running for a read taken just after it;
* once the stream has delivered up to the high watermark, the remaining rows are emitted as
  ``op: r`` events, at that point of the stream, followed by a commit that saves the checkpoint
  and the snapshot's progress (the chunk's last key) in one transaction.

So an ``r`` event never overwrites a change the stream delivered before it, and every change
after it is one the read did not see: folding a table's events in delivery order gives its
rows. After a crash the pipeline resumes from its checkpoint and the snapshot from the chunk
after the last one saved with it.

A table without a key (no primary key or replica-identity index) is read in one piece (one
consistent read held in memory) under the same watermark; any unseen change to it delivered
before the rows makes the driver read it again.

Event ids: ``<snapshot id>:<table number>:<chunk number>:<read token>:<row in chunk>``. The
table number is the table's place (from 0) in the snapshot record's ``tables``, which is saved
with the record and never changes, so every table of a snapshot has its own ids (chunk numbers
restart per table, and chunks read in the same database state share a read token). The read
token names the data the read saw (PostgreSQL: its WAL position and snapshot; MariaDB: its
binlog position), so a chunk delivered twice keeps its ids and a re-read of changed data gets
new ones. No part is a column value.

Records: each snapshot is a JSON record in the state store (``id``, ``tables``, ``state``
pending → running → done / failed / cancelled, per-table ``progress``). Any instance may add
one (the API); the pipeline's driver picks pending ones up, updates them only together with
checkpoints, and never overwrites an ended (cancelled) one.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from cdc.errors import CDCError, FatalError, RetriableError
from cdc.events import ChangeEvent
from cdc.snapshot_api import Chunk, SnapshotReader, TableInfo

if TYPE_CHECKING:
    import structlog

    from cdc.config import PipelineConfig
    from cdc.plugin import Source
    from cdc.schema import SchemaRegistry
    from cdc.state import CheckpointStore

#: chunks read ahead of the stream (each waits for its high watermark), besides one in flight
READ_AHEAD = 2
#: seconds between asking an idle source for its position while a chunk waits
POSITION_REQUEST_S = 0.1
#: tests only: a pause before each chunk read, so a test can stop the service mid-snapshot
CHUNK_DELAY_ENV = "CDC_TEST_SNAPSHOT_CHUNK_DELAY_S"

OPEN = ("pending", "running")


def condition_problem(condition: str, hash_comments: bool = True) -> str | None:
    """Why a partial snapshot's SQL condition (``--where``) is refused before the database sees
    it, or ``None``. The condition is spliced into the reader's ``SELECT ... WHERE (cond) AND
    key > cursor``: it may hold any expression the pipeline's role may evaluate, but no ``;``
    and no comment (``--``, ``/*``, MySQL's ``#``) outside quoted text, which could end the
    statement or hide the rest of it. Quoted text is read both ways (with and without MySQL's
    backslash escapes), so a quote that one dialect ends and the other does not cannot hide
    anything. ``hash_comments``: ``#`` starts a comment (MySQL/MariaDB; PostgreSQL uses it in
    operators such as ``#>>``). The database checks the rest (see
    ``SnapshotReader.check_where``)."""
    if not condition.strip():
        return "the condition is empty"
    for backslash in (False, True):
        problem = _outside_quotes_problem(condition, backslash, hash_comments)
        if problem:
            return problem
    return None


def _outside_quotes_problem(condition: str, backslash: bool, hash_comments: bool) -> str | None:
    outside: list[str] = []
    quote = ""
    i = 0
    while i < len(condition):
        ch = condition[i]
        if quote:
            if backslash and ch == "\\" and quote == "'":
                i += 2
                continue
            if ch == quote:
                if condition[i + 1 : i + 2] == quote:  # a doubled quote stays inside
                    i += 2
                    continue
                quote = ""
            i += 1
            continue
        if ch in "'\"`":
            quote = ch
        outside.append(ch)
        i += 1
    if quote:
        return f"the condition has an unclosed {quote} quote"
    text = "".join(outside)
    for token, name in ((";", "a ';'"), ("--", "a '--' comment"), ("/*", "a '/*' comment"),
                        ("#", "a '#' comment")):
        if token == "#" and not hash_comments:
            continue
        if token in text:
            return f"the condition may not contain {name} outside quotes"
    return None


def new_record(
    pipeline: str, tables: Sequence[str], reason: str, where: dict[str, str] | None = None
) -> dict[str, Any]:
    """A new snapshot record (state ``pending``); ``where``: a partial snapshot's SQL condition
    per table, kept with the record so a resumed snapshot reads the same rows."""
    now = time.time()
    extra: dict[str, Any] = {"where": dict(where)} if where else {}
    return {
        **extra,
        "id": f"{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}",
        "pipeline": pipeline,
        "tables": list(tables),
        "reason": reason,
        "state": "pending",
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "error": None,
        "rows_done": 0,
        "rows_estimated": 0,
        "progress": {
            t: {"state": "pending", "cursor": None, "chunks": 0, "rows_done": 0, "rows_estimated": None}
            for t in tables
        },
    }


#: the record's times, kept in unix seconds in the store and shown in milliseconds
TIMES = ("created_at", "started_at", "finished_at")


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the API and ``cdc status`` show it: no cursors, times in unix milliseconds
    (like every other time the service shows)."""
    progress = {
        t: {k: v for k, v in p.items() if k != "cursor"} for t, p in record.get("progress", {}).items()
    }
    out = {k: v for k, v in record.items() if k != "progress"}
    for key in TIMES:
        if isinstance(out.get(key), (int, float)):
            out[key] = int(out[key] * 1000)
    out["progress"] = progress
    return out


def completed_tables(records: Sequence[dict[str, Any]]) -> set[str]:
    """Tables that some snapshot read completely."""
    done: set[str] = set()
    for r in records:
        for table, p in r.get("progress", {}).items():
            if p.get("state") == "done":
                done.add(table)
    return done


def running_tables(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """table -> id of the open snapshot that will (still) read it."""
    out: dict[str, str] = {}
    for r in records:
        if r["state"] not in OPEN:
            continue
        for table, p in r.get("progress", {}).items():
            if p.get("state") in OPEN and table not in out:
                out[table] = r["id"]
    return out


def _key_id(key: dict[str, Any] | None) -> bytes:
    return orjson.dumps(key)


class _Pending:
    """A chunk that arrived and waits for the stream to reach its high watermark."""

    __slots__ = ("chunk", "number", "dropped", "truncated", "invalid", "delta", "images")

    def __init__(self, chunk: Chunk, number: int) -> None:
        self.chunk = chunk
        self.number = number
        self.dropped: set[bytes] = set()  # keys changed by transactions the read did not see
        self.truncated = False
        # keyless tables: the unseen changes, as a multiset of whole rows (+ added, - removed)
        self.delta: Counter[bytes] = Counter()
        self.images: dict[bytes, dict[str, Any]] = {}
        self.invalid = False  # keyless: a change that cannot be applied to the read; read again

    def apply(self, event: ChangeEvent) -> None:
        """A streamed event of the chunk's table, delivered before the chunk's rows."""
        if self.chunk.visible(event):
            return
        if event.op == "t":
            self.truncated = True
            self.delta.clear()
        elif event.key is not None:
            self.dropped.add(_key_id(event.key))
        else:
            self._apply_keyless(event)

    def _apply_keyless(self, event: ChangeEvent) -> None:
        """A keyless table's rows are whole-row images: an unseen change is applied to the
        read, so the rows emitted are the table as of the point where they are emitted."""
        if event.op in ("u", "d"):
            if event.before is None or event.unchanged:
                self.invalid = True  # no full old image (REPLICA IDENTITY is not FULL)
                return
            self.delta[_row_id(event.before)] -= 1
        if event.op in ("c", "u"):
            if event.after is None or event.unchanged:
                self.invalid = True
                return
            sig = _row_id(event.after)
            self.delta[sig] += 1
            self.images[sig] = event.after

    def rows(self) -> list[tuple[int, dict[str, Any] | None, dict[str, Any]]]:
        """``(number in the read, key, after)`` of the rows to emit."""
        rows = self.chunk.rows
        if self.truncated:
            rows = []
        if self.dropped:
            dropped = self.dropped
            return [(i, k, a) for i, (k, a) in enumerate(rows) if _key_id(k) not in dropped]
        if not self.delta:
            return [(i, k, a) for i, (k, a) in enumerate(rows)]
        delta = Counter(self.delta)
        out: list[tuple[int, dict[str, Any] | None, dict[str, Any]]] = []
        for i, (k, a) in enumerate(rows):
            sig = _row_id(a)
            if delta[sig] < 0:
                delta[sig] += 1
                continue
            out.append((i, k, a))
        n = len(rows)
        for sig, count in delta.items():
            if count < 0:
                self.invalid = True  # removed a row the read did not hold
                return []
            for _ in range(count):
                out.append((n, None, self.images[sig]))
                n += 1
        return out


def _mark_ends(events: list[ChangeEvent], record: dict[str, Any], table: str, table_done: bool) -> None:
    """Mark the first and last reads of the snapshot and of each table in ``ChangeEvent.pos``
    (``first``, ``last``, ``first_in_data_collection``, ``last_in_data_collection``), as
    Debezium's ``source.snapshot`` says; called before the chunk's rows are counted. A table
    whose last chunk comes back empty leaves its last row unmarked (it was already delivered)."""
    progress = record["progress"]
    first_of_table = not int(progress[table].get("rows_done") or 0)
    first_of_all = not int(record.get("rows_done") or 0)
    last_of_all = table_done and not any(
        t != table and progress[t]["state"] in OPEN for t in record["tables"]
    )
    n = len(events) - 1
    for i in {0, n}:
        if i == 0 and first_of_all:
            mark = "first"
        elif i == n and table_done and last_of_all:
            mark = "last"
        elif i == 0 and first_of_table:
            mark = "first_in_data_collection"
        elif i == n and table_done:
            mark = "last_in_data_collection"
        else:
            continue
        events[i].pos = mark


def _row_id(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


class _Worker:
    """Runs reader calls one at a time on its own thread; results come back in order."""

    def __init__(self, make_reader: Callable[[], SnapshotReader], wake: Callable[[], None], name: str) -> None:
        self._make_reader = make_reader
        self._wake = wake
        self._jobs: queue.Queue[tuple[int, Callable[[SnapshotReader], Any]] | None] = queue.Queue()
        self.results: queue.Queue[tuple[int, Any, BaseException | None]] = queue.Queue()
        self._reader: SnapshotReader | None = None
        self._thread = threading.Thread(target=self._run, name=f"snapshot-{name}", daemon=True)
        self._thread.start()

    def submit(self, tag: int, fn: Callable[[SnapshotReader], Any]) -> None:
        self._jobs.put((tag, fn))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            tag, fn = job
            try:
                if self._reader is None:
                    self._reader = self._make_reader()
                result, error = fn(self._reader), None
            except BaseException as exc:  # handed to the dispatcher
                result, error = None, exc
                if isinstance(exc, RetriableError) and self._reader is not None:
                    self._reader.close()
                    self._reader = None
            self.results.put((tag, result, error))
            self._wake()
        if self._reader is not None:
            self._reader.close()

    def close(self) -> None:
        """Stop after the job in flight (not waited for long: a stop must end in seconds; the
        thread closes its reader when that job returns)."""
        self._jobs.put(None)
        self._thread.join(1)


class SnapshotDriver:
    """Runs a pipeline's snapshots inside its dispatcher (one table at a time).

    The dispatcher calls :meth:`observe` with every batch of streamed events it delivers and
    :meth:`poll` whenever it stands at a transaction boundary (with the position reached) or is
    idle; ``poll`` returns the ``r`` events to deliver there and the records to save with the
    commit that follows.
    """

    def __init__(
        self,
        config: PipelineConfig,
        store: CheckpointStore,
        source: Source,
        registry: SchemaRegistry,
        log: structlog.typing.FilteringBoundLogger,
        wake: Callable[[], None],
        *,
        streaming: bool = True,
    ) -> None:
        self.config = config
        self.name = config.name
        self.store = store
        self.source = source
        self.registry = registry
        self.log = log
        self.chunk_rows = config.snapshot.chunk_rows
        self.streaming = streaming
        self._wake = wake
        self._worker: _Worker | None = None
        self._tag = 0  # generation of reader jobs; results of older ones are ignored
        self.record: dict[str, Any] | None = None  # the snapshot being run
        self.table: str | None = None
        self._info: TableInfo | None = None
        self._cursor: Any = None  # where the next read starts
        self._next_chunk = 0  # number of the next chunk read
        self._read_done = False  # the table's last chunk has been read
        self._reading = False  # a reader job is in flight
        #: streamed events of the table that the newest read did not see (all of them until a
        #: read arrives): applied to every chunk that arrives, see _collect
        self._unseen: list[ChangeEvent] = []
        self._arrived: deque[_Pending] = deque()
        self._last_request = 0.0
        self._queue: list[dict[str, Any]] = []  # open records from the store, oldest first
        self._refresh = threading.Event()
        self._refresh.set()
        #: what /pipelines shows (updated here, read by API threads)
        self.status: dict[str, Any] | None = None

    # -- control ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.table is not None

    def notify(self) -> None:
        """Snapshot records changed in the store (a request, a cancel): look again soon."""
        self._refresh.set()
        self._wake()

    def ensure_initial(self) -> dict[str, Any] | None:
        """``snapshot.mode: initial``: a snapshot of every listed table that none completed and
        none is about to read (tables added to the file later included)."""
        records = self.store.snapshots(self.name)
        done = completed_tables(records)
        running = running_tables(records)
        listed = list(getattr(self.config.source, "tables", None) or [])
        todo = [t for t in listed if t not in done and t not in running]
        if not todo:
            return None
        record = new_record(self.name, todo, "initial")
        self.store.add_snapshot(self.name, record)
        self.log.info("snapshot_requested", snapshot=record["id"], tables=todo, reason="initial")
        return record

    @property
    def idle(self) -> bool:
        """No snapshot is running or waiting (after a :meth:`poll`)."""
        return self.record is None and not self._queue and not self._refresh.is_set()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # -- the dispatcher's hooks ------------------------------------------------------------------

    def observe(self, events: Sequence[ChangeEvent]) -> None:
        """Streamed events the dispatcher is delivering (in delivery order)."""
        table = self.table
        if table is None:
            return
        arrived = self._arrived
        for ev in events:
            if ev.schema.name != table:
                continue
            self._unseen.append(ev)
            for p in arrived:
                p.apply(ev)

    def poll(self, position: Any, at_boundary: bool) -> tuple[list[ChangeEvent], list[dict[str, Any]]]:
        """Take read results, start reads, and emit what the stream position allows. Returns
        (``r`` events to deliver now, records to save with the next commit)."""
        if self._refresh.is_set():
            self._refresh.clear()
            self._reload()
        self._collect()
        if self.table is None:
            self._start_next()
        self._read_more()
        events: list[ChangeEvent] = []
        dirty: list[dict[str, Any]] = []
        while self._arrived and at_boundary:
            head = self._arrived[0]
            reached = not self.streaming or (
                position is not None and self.source.position_reached(position, head.chunk.high)
            )
            if not reached:
                now = time.monotonic()
                if now - self._last_request >= POSITION_REQUEST_S:
                    self._last_request = now
                    self.source.request_position()
                break
            self._arrived.popleft()
            if head.invalid:
                self._reread_keyless()
                break
            events.extend(self._emit(head, position if self.streaming else head.chunk.high))
            assert self.record is not None
            dirty = [self.record]
            self._read_more()
        if self.record is not None and self.table is None and self.record["state"] not in OPEN:
            dirty = [self.record]
            self.record = None
        return events, dirty

    # -- records ------------------------------------------------------------------------------------

    def _reload(self) -> None:
        records = self.store.snapshots(self.name)
        if self.record is not None:
            mine = next((r for r in records if r["id"] == self.record["id"]), None)
            if mine is None or mine["state"] not in OPEN:
                self.log.info("snapshot_cancelled", snapshot=self.record["id"])
                self.record = mine or {**self.record, "state": "cancelled"}
                self._stop_table()
                self.table = None
                self._publish()
        self._queue = [r for r in records if r["state"] in OPEN]
        if self.record is not None and self.record["state"] not in OPEN:
            self._publish()
        elif self.status is None and records:
            # after a restart: show the newest snapshot until another one starts
            newest = records[-1]
            self.record = newest
            self._publish()
            self.record = None

    def _start_next(self) -> None:
        """Continue the current snapshot's next table, else start the oldest open snapshot."""
        candidates = [self.record] if self.record is not None and self.record["state"] in OPEN else []
        current = self.record["id"] if self.record is not None else None
        candidates += [r for r in self._queue if r["id"] != current]
        for record in candidates:
            todo = [t for t in record["tables"] if record["progress"][t]["state"] in OPEN]
            self.record = record
            if not todo:
                self._finish(record)
                continue
            if record["state"] == "pending":
                record["state"] = "running"
                record["started_at"] = time.time()
                self.log.info("snapshot_started", snapshot=record["id"], tables=record["tables"])
                self.store.update_snapshots(self.name, [record])
            self._begin_table(todo[0])
            return
        self.record = None  # the status keeps showing the last snapshot

    def _finish(self, record: dict[str, Any]) -> None:
        """End a snapshot whose tables are all read (or failed) and save it at once."""
        failed = [t for t, p in record["progress"].items() if p["state"] == "failed"]
        record["state"] = "failed" if failed else "done"
        record["finished_at"] = time.time()
        if failed and not record.get("error"):
            record["error"] = "; ".join(f"{t}: {record['progress'][t].get('error')}" for t in failed)
        self.log.info(
            "snapshot_finished", snapshot=record["id"], state=record["state"], rows=record["rows_done"]
        )
        self.store.update_snapshots(self.name, [record])
        self._queue = [r for r in self._queue if r["id"] != record["id"]]

    def _begin_table(self, table: str) -> None:
        assert self.record is not None
        p = self.record["progress"][table]
        p["state"] = "running"
        self.table = table
        self._info = None
        self._cursor = p.get("cursor")
        self._next_chunk = int(p.get("chunks") or 0)
        self._read_done = False
        self._arrived.clear()
        self._unseen = []
        self._tag += 1
        self._reading = True
        self._submit(lambda reader: reader.describe(table))
        self._publish()

    def _stop_table(self) -> None:
        self._arrived.clear()
        self._unseen = []
        self._reading = False
        self._tag += 1  # results still in flight are ignored

    def _submit(self, fn: Callable[[SnapshotReader], Any]) -> None:
        if self._worker is None:
            self._worker = _Worker(self.source.snapshot_reader, self._wake, self.name)
        self._worker.submit(self._tag, fn)

    def _read_more(self) -> None:
        if self.table is None or self._reading or self._read_done or self._info is None:
            return
        if len(self._arrived) >= READ_AHEAD:
            return
        limit = self.chunk_rows if self._info.key else None
        self._reading = True
        table, cursor = self.table, self._cursor
        delay = float(os.environ.get(CHUNK_DELAY_ENV) or 0)

        where = self.record.get("where", {}).get(table) if self.record is not None else None

        def read(reader: SnapshotReader) -> Chunk:
            if delay:
                time.sleep(delay)
            if where:  # a partial snapshot (only then the keyword: readers without it still work)
                return reader.read_chunk(table, cursor, limit, where=where)  # type: ignore[call-arg]
            return reader.read_chunk(table, cursor, limit)

        self._submit(read)

    def _reread_keyless(self) -> None:
        self.log.info("snapshot_reread", snapshot=self.record["id"] if self.record else None, table=self.table,
                      reason="the table has no key and changed during the read")
        self._arrived.clear()
        self._read_done = False
        self._cursor = None
        self._read_more()

    def _collect(self) -> None:
        worker = self._worker
        if worker is None:
            return
        while True:
            try:
                tag, result, error = worker.results.get_nowait()
            except queue.Empty:
                return
            if tag != self._tag or self.table is None:
                continue
            self._reading = False
            if error is not None:
                self._read_failed(error)
                continue
            if isinstance(result, TableInfo):
                self._info = result
                assert self.record is not None
                p = self.record["progress"][self.table]
                if p.get("rows_estimated") is None:
                    p["rows_estimated"] = result.rows_estimated
                    self.record["rows_estimated"] = sum(
                        int(q.get("rows_estimated") or 0) for q in self.record["progress"].values()
                    )
                self._publish()
                continue
            chunk: Chunk = result
            pending = _Pending(chunk, self._next_chunk)
            self._next_chunk += 1
            # Every streamed change of the table that a read did not see is applied, including
            # those delivered BEFORE this read started: on PostgreSQL a transaction can be in the
            # stream (its commit record is flushed) while a new snapshot still counts it as
            # running (the backend has not updated the commit log and the process array yet).
            # What a read sees is monotone (a later read sees all an earlier one saw), so events
            # this read saw are never needed again and are forgotten; what stays is bounded by
            # the changes made since the newest read began.
            visible = chunk.visible
            unseen = [ev for ev in self._unseen if not visible(ev)]
            for ev in unseen:
                pending.apply(ev)
            self._unseen = unseen
            self._arrived.append(pending)
            self._cursor = chunk.cursor if chunk.rows else self._cursor
            if chunk.done:
                self._read_done = True

    def _read_failed(self, error: BaseException) -> None:
        if isinstance(error, RetriableError):
            raise error  # the pipeline restarts from its checkpoint; the snapshot resumes
        assert self.record is not None and self.table is not None
        message = str(error) if isinstance(error, CDCError) else f"{type(error).__name__}: {error}"
        self.log.error("snapshot_table_failed", snapshot=self.record["id"], table=self.table, error=message)
        p = self.record["progress"][self.table]
        p["state"] = "failed"
        p["error"] = message
        self._stop_table()
        self.table = None
        if not isinstance(error, FatalError):
            self.record["error"] = message
        self.store.update_snapshots(self.name, [self.record])
        self._publish()

    # -- emitting ------------------------------------------------------------------------------------

    def _emit(self, pending: _Pending, position: Any) -> list[ChangeEvent]:
        chunk = pending.chunk
        record = self.record
        assert record is not None and self.table is not None
        sid = record["id"]
        events: list[ChangeEvent] = []
        plain = not (pending.dropped or pending.delta or pending.truncated)
        rows = None if plain else pending.rows()
        if pending.invalid:
            self._reread_keyless()
            return []
        if (plain and chunk.rows) or rows:
            version = self.registry.resolve(chunk.schema, chunk.at(position))
            block = chunk.source_block(position, sid)
            ts = int(time.time() * 1000)
            prefix = f"{sid}:{record['tables'].index(self.table)}:{pending.number}:{chunk.read_token}:"
            if rows is None:  # nothing changed under the read: every row, as read
                events = [
                    ChangeEvent(f"{prefix}{i}", "r", ts, block, None, version, key, None, after)
                    for i, (key, after) in enumerate(chunk.rows)
                ]
            else:
                events = [
                    ChangeEvent(f"{prefix}{i}", "r", ts, block, None, version, key, None, after)
                    for i, key, after in rows
                ]
        p = record["progress"][self.table]
        if events:
            _mark_ends(events, record, self.table, chunk.done)
        p["chunks"] = pending.number + 1
        p["rows_done"] = int(p.get("rows_done") or 0) + len(events)
        record["rows_done"] = int(record.get("rows_done") or 0) + len(events)
        self.log.debug(
            "snapshot_chunk", snapshot=sid, table=self.table, chunk=pending.number,
            rows=len(events), table_rows_done=p["rows_done"],
            table_rows_estimated=p.get("rows_estimated"), last=chunk.done,
        )
        if chunk.rows:
            p["cursor"] = chunk.cursor
        if chunk.done:
            p["state"] = "done"
            self.log.info("snapshot_table_done", snapshot=sid, table=self.table, rows=p["rows_done"])
            self._stop_table()
            self.table = None
            todo = [t for t in record["tables"] if record["progress"][t]["state"] in OPEN]
            if todo:
                self._begin_table(todo[0])
            else:
                failed = [t for t, q in record["progress"].items() if q["state"] == "failed"]
                record["state"] = "failed" if failed else "done"
                record["finished_at"] = time.time()
                self.log.info("snapshot_finished", snapshot=sid, state=record["state"], rows=record["rows_done"])
                self._queue = [r for r in self._queue if r["id"] != sid]
        self._publish()
        return events

    def _publish(self) -> None:
        record = self.record
        if record is None:
            self.status = None
            return
        self.status = {
            "id": record["id"],
            "state": record["state"],
            "table": self.table,
            "rows_done": record.get("rows_done", 0),
            "rows_estimated": record.get("rows_estimated", 0),
            "tables": {
                t: {"state": p["state"], "rows_done": p.get("rows_done", 0), "rows_estimated": p.get("rows_estimated")}
                for t, p in record["progress"].items()
            },
        }
