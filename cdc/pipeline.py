"""One pipeline: a source, a sink, and the loop that keeps the delivery guarantee.

Theory of operation. Two threads per pipeline:

* the **reader** calls ``source.read()`` in a loop and puts each batch into a bounded buffer
  (bounded in bytes, so neither a huge transaction nor a backlog grows memory: when the
  buffer is full the reader waits, and the source keeps its server connection alive);
* the **dispatcher** (the pipeline's supervisor thread) takes batches, hands their events to
  the sink (schema definitions first), and whenever a batch ended on a transaction boundary it
  runs the commit sequence: ``sink.flush()`` (durable) → save the checkpoint (with the sink's
  resume token) → ``source.ack(position)`` (PostgreSQL: the slot's flush LSN). Nothing is
  acknowledged to the source before it is durable in the sink.

Any :class:`RetriableError` closes both ends, discards what was in flight, waits with
exponential backoff and jitter, and starts again from the last checkpoint, so nothing is lost
and nothing is skipped. A :class:`FatalError` stops this pipeline only (state ``failed``).

On stop the reader stops reading; the dispatcher delivers what was already read, flushes and
checkpoints within the stop deadline, then both ends are closed.
"""

from __future__ import annotations

import operator
import random
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import orjson

from cdc import registry, transforms
from cdc.config import PipelineConfig, ServiceConfig
from cdc.dead_letters import DeadLetters
from cdc.errors import (
    CDCError,
    EventUndeliverable,
    FatalError,
    FatalStateError,
    Kind,
    LeaseLost,
    NotAvailableYet,
    RetriableError,
)
from cdc.events import ChangeEvent
from cdc.feed import EventFeed
from cdc.lease import PipelineLease
from cdc.log import get_logger, redact
from cdc.plugin import PluginContext, Sink, Source
from cdc.schema import SchemaRegistry, SchemaVersion
from cdc.snapshot import SnapshotDriver
from cdc.state import CheckpointStore

#: bytes of batches waiting between reader and dispatcher. Small on purpose: a working set
#: that stays in the CPU caches beat larger buffers by ~20% of CPU per event in bench/pg_file.py
BUFFER_BYTES = 8 * 1024 * 1024
#: most events handed to the sink per commit sequence
MAX_DISPATCH_EVENTS = 2000
#: how often housekeeping (source.poll, rates) runs
POLL_INTERVAL_S = 5.0
#: consecutive unexpected (non-CDCError) failures before the pipeline gives up
MAX_UNEXPECTED = 5
#: state-store meta key of a pipeline's last fatal error (JSON; "" once it runs again)
LAST_ERROR_META = "last_error"
#: state-store meta key of a pause request ("1" paused, "" or missing: running); every instance
#: sharing ``state.dsn`` reads it, so a pause asked of any instance reaches the lease holder
PAUSED_META = "paused"


_schema_of = operator.attrgetter("schema")
_op_of = operator.attrgetter("op")


class BoundedBuffer:
    """A FIFO of batches bounded by an estimate of their size in bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: deque[tuple[Any, int]] = deque()
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any, cost: int, timeout: float) -> bool:
        """Add an item; False if there was no room within ``timeout`` (or closed)."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while self._items and self._size + cost > self._limit and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            if self._closed:
                return False
            self._items.append((item, cost))
            self._size += cost
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Any:
        """The oldest item, or None after ``timeout`` (0: do not wait)."""
        with self._cond:
            if not self._items and timeout > 0:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item, cost = self._items.popleft()
            self._size -= cost
            self._cond.notify_all()
            return item

    def get_nowait(self) -> Any:
        return self.get(0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._size = 0
            self._cond.notify_all()


class _Wake:
    """Put into the buffer by the snapshot worker: a chunk arrived, the dispatcher looks."""


_WAKE = _Wake()


class _TablesRequest:
    """A reload grew the pipeline's ``tables``: carried out by the dispatcher thread (which
    owns the source between batches), answered through ``done``."""

    def __init__(self, config: PipelineConfig, added: list[str]) -> None:
        self.config = config
        self.added = added
        self.done = threading.Event()
        self.ok = False
        self.reason = ""
        self.snapshot: str | None = None

    def finish(self, ok: bool, reason: str = "", snapshot: str | None = None) -> None:
        self.ok, self.reason, self.snapshot = ok, reason, snapshot
        self.done.set()


class _ReaderFailed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Housekeeping:
    """Every ``POLL_INTERVAL_S`` while streaming: the source's own housekeeping and status, the
    event rate, and a look at the snapshot records (requests made through another instance)."""

    def __init__(self, pipeline: Pipeline, source: Source, driver: SnapshotDriver) -> None:
        self.pipeline, self.source, self.driver = pipeline, source, driver
        self.last = 0.0
        self.rate_t, self.rate_n = time.monotonic(), pipeline.status.events_total

    def maybe_run(self) -> None:
        now = time.monotonic()
        if now - self.last < POLL_INTERVAL_S:
            return
        self.last = now
        status = self.pipeline.status
        self.source.poll()
        status.source_info = self.source.status()
        dt = now - self.rate_t
        if dt > 0:
            status.events_per_s = (status.events_total - self.rate_n) / dt
        self.rate_t, self.rate_n = now, status.events_total
        self.driver.notify()
        self.pipeline.feed.expire()
        self.pipeline.sync_paused()


class State(StrEnum):
    """A pipeline's state, as /pipelines, /healthz, /metrics and ``cdc status`` show it.

    The transitions (all made by :meth:`Pipeline._enter`):

    * ``starting`` → ``running`` once the source and sink are open (or ``standby`` while another
      instance holds the lease; ``running`` again when it is granted);
    * any → ``retrying`` on a :class:`RetriableError` (or a sink reporting itself degraded);
      back to ``running`` at the next successful commit (after a sink failure only a commit of
      events counts: a reopened sink proves little), or when a degraded sink recovers;
    * any → ``failed`` on a :class:`FatalError` (final); ``finished`` when an ``initial_only``
      pipeline has read everything (final); ``stopped`` after a stop request;
    * ``running`` (or ``retrying``, ``starting``) → ``paused`` on a pause request (``cdc pause``,
      kept in the state store, so also at the next start): what was read is delivered and
      checkpointed, then source and sink are closed (the slot stays); ``paused`` → ``running``
      on resume, from the checkpoint.
    """

    STARTING = "starting"
    RUNNING = "running"
    RETRYING = "retrying"
    FAILED = "failed"
    STANDBY = "standby"
    FINISHED = "finished"
    STOPPED = "stopped"
    PAUSED = "paused"


#: states a pipeline never leaves
FINAL = (State.FAILED, State.FINISHED)


class PipelineStatus:
    """What ``/pipelines``, ``/metrics`` and ``cdc status`` show. Written by the pipeline's
    threads, read by the API threads (plain attribute reads and writes)."""

    def __init__(self, name: str, source_type: str, sink_type: str) -> None:
        self.name = name
        self.source_type = source_type
        self.sink_type = sink_type
        self.state: State = State.STARTING
        self.last_error: dict[str, Any] | None = None
        self.source_position: str | None = None
        self.checkpoint: str | None = None
        self.checkpoint_at: float | None = None
        self.commit_ts: float | None = None
        #: True while everything the source reported is delivered (heartbeat seen since)
        self.caught_up = False
        self.events_total = 0
        self.events_per_s = 0.0
        self.source_info: dict[str, Any] = {}
        self.retries = 0
        self.sink_errors = 0
        #: events set aside in the dead-letter sink since the service started
        self.dead_letters = 0
        #: the running (or last) snapshot's progress, from the snapshot driver
        self.snapshot: dict[str, Any] | None = None

    @property
    def lag_s(self) -> float | None:
        """Seconds between now and the source commit of the newest delivered event; 0 when
        caught up. It keeps growing while the pipeline is stalled."""
        if self.caught_up:
            return 0.0
        if self.commit_ts is None:
            return None
        return max(0.0, time.time() - self.commit_ts)

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        return {
            "name": self.name,
            "state": self.state,
            "source": {"type": self.source_type, "position": self.source_position, **self.source_info},
            "sink": {"type": self.sink_type},
            "checkpoint": {
                "position": self.checkpoint,
                "age_s": None if self.checkpoint_at is None else round(now - self.checkpoint_at, 3),
            },
            "lag_s": None if self.lag_s is None else round(self.lag_s, 3),
            "events_total": self.events_total,
            "events_per_s": round(self.events_per_s, 1),
            "retries": self.retries,
            "dead_letters": self.dead_letters,
            "last_error": self.last_error,
            "snapshot": self.snapshot,
        }


class Checkpointer:
    """What the dispatcher delivered and the one commit sequence that makes it durable.

    It owns the three facts the delivery guarantee rests on: ``reached`` (the newest
    transaction boundary delivered to the sink), ``pending`` (that boundary, while no checkpoint
    covers it) and ``unflushed`` (events handed to the sink since the last commit). The
    dispatcher only feeds it batches (:meth:`delivered`) and asks it to commit; the commit is
    always ``sink.flush()`` (durable) → save the checkpoint with the sink's resume token and the
    snapshots' progress → ``source.ack(position)``, and nothing else writes a checkpoint while
    streaming.
    """

    __slots__ = ("pipeline", "source", "sink", "reached", "pending", "unflushed", "at_boundary")

    def __init__(self, pipeline: Pipeline, source: Source, sink: Sink, start: Any) -> None:
        self.pipeline = pipeline
        self.source = source
        self.sink = sink
        self.reached: Any = start
        self.pending: Any = None
        self.unflushed = 0
        #: False while the last batch ended inside a transaction
        self.at_boundary = True

    def delivered(self, batch: Any) -> None:
        """``batch`` was handed to the sink (its events, if any, already written)."""
        self.unflushed += len(batch.events)
        if batch.position is not None:
            self.pending = self.reached = batch.position
        self.at_boundary = batch.position is not None

    @property
    def dirty(self) -> bool:
        """Something was delivered that no checkpoint covers yet."""
        return self.pending is not None or self.unflushed > 0

    def commit(self, position: Any = None, snapshots: list[dict[str, Any]] | None = None) -> None:
        """Make everything delivered durable and checkpoint ``position`` (default: the pending
        boundary; None: flush only, e.g. a stop in the middle of a transaction)."""
        if position is None:
            position = self.pending
        pipeline = self.pipeline
        pipeline._check_lease()
        token = pipeline._flush(self.sink)  # durable first (and the dead letters)
        if position is not None:
            serialized = self.source.serialize_position(position)
            pipeline.store.save_checkpoint(pipeline.name, serialized, token, snapshots or ())
            pipeline.status.checkpoint = serialized
            pipeline.status.checkpoint_at = time.time()
            self.source.ack(position)  # only what the checkpoint covers
            if pipeline.status.state is State.RETRYING:
                pipeline._enter(State.RUNNING, reason="recovered")
        self.pending = None
        self.unflushed = 0

    def heartbeat_due(self, heartbeat_s: float) -> bool:
        """Only positions (no events) since the last checkpoint: save one at most every
        ``heartbeat_s``, and not while a failed sink has not yet taken events again."""
        status = self.pipeline.status
        if self.pipeline._sink_degraded():
            return False
        return status.checkpoint_at is None or time.time() - status.checkpoint_at >= heartbeat_s


class Pipeline:
    """Runs one pipeline of the file until stopped or failed."""

    def __init__(
        self,
        config: PipelineConfig,
        service: ServiceConfig,
        store: CheckpointStore,
        *,
        adopt: bool = False,
        on_events: Callable[[str, Counter[tuple[str, str]]], None] | None = None,
        shared: dict[str, Any] | None = None,
        lease: PipelineLease | None = None,
    ) -> None:
        self.config = config
        self.service = service
        self.store = store
        self._error_cleared = False
        #: the pipeline file, named in advice (``CONFIG`` when unknown)
        self._file = service.file or "CONFIG"
        self.adopt = adopt
        self.name = config.name
        self.status = PipelineStatus(config.name, config.source_type, config.sink_type)
        #: the side of the error the pipeline retries after (a sink's: "degraded")
        self._retrying_side = ""
        self.log = get_logger(pipeline=config.name)
        self._on_events = on_events
        self._shared = shared or {}
        self._stop = threading.Event()
        self._stop_deadline: float | None = None
        #: set while the pipeline is paused (mirrors PAUSED_META in the state store)
        self._paused = threading.Event()
        #: set to wake a paused pipeline's supervisor (a resume)
        self._pause_wake = threading.Event()
        #: orders the store's flag and ``_paused`` between the API and the pipeline's threads
        self._pause_lock = threading.Lock()
        #: a reload's request to take more tables while streaming (see :meth:`add_tables`)
        self._tables_request: _TablesRequest | None = None
        self._thread: threading.Thread | None = None
        self._registry: SchemaRegistry | None = None
        #: the pipeline's transforms (None: none; built with the registry, which knows masks)
        self._chain: transforms.Chain | None = None
        #: the dead-letter sink of the current run (None without ``dead_letter``)
        self._dead: DeadLetters | None = None
        #: events set aside by earlier runs of this process
        self._dead_before = 0
        #: the snapshot driver of the current run (None before the first)
        self.snapshots: SnapshotDriver | None = None
        self._wake_buffer: BoundedBuffer | None = None
        self._wake_event = threading.Event()
        #: where the stream starts (the position ``_open`` reached)
        self._start: Any = None
        #: with several instances: the pipeline runs only while this instance holds the lease
        self.lease = lease
        if lease is not None:
            self.status.state = State.STANDBY
        #: the acknowledged events, for `cdc tail` through the API (idle unless followed)
        self.feed = EventFeed()

    # -- control ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=f"pipeline-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 8.0) -> None:
        """Ask the pipeline to stop; in-flight events get ``grace_s`` to be acknowledged."""
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + grace_s
        self._stop.set()

    def pause(self) -> None:
        """Ask the pipeline to pause (kept in the state store: it survives restarts and reaches
        the instance holding the lease). Raises what the store raises."""
        with self._pause_lock:
            self.store.set_meta(self.name, PAUSED_META, "1")
            self._paused.set()
        self._pause_wake.set()

    def resume(self) -> None:
        """Undo :meth:`pause`: the pipeline reads again from its checkpoint."""
        with self._pause_lock:
            self.store.set_meta(self.name, PAUSED_META, "")
            self._paused.clear()
        self._pause_wake.set()

    def sync_paused(self) -> bool:
        """Read the pause flag from the state store (another instance may have set it); on a
        store error keep what is known. Returns whether the pipeline is to be paused."""
        with self._pause_lock:
            try:
                paused = self.store.get_meta(self.name, PAUSED_META) == "1"
            except Exception as exc:  # noqa: BLE001 - the state may be down; keep what we know
                self.log.debug("pause_flag_unreadable", error=redact(str(exc)))
                return self._paused.is_set()
            if paused:
                self._paused.set()
            else:
                self._paused.clear()
            return paused

    def add_tables(self, config: PipelineConfig, added: list[str], timeout: float = 30.0) -> _TablesRequest:
        """A reload: ``config`` is this pipeline's with ``added`` tables more. While streaming,
        the dispatcher asks the source to take them (publication or binlog filter) between two
        batches and, under ``snapshot.mode: initial``, asks for their snapshot; the stream goes
        on. The answer's ``ok`` is False (with a reason) when that could not be done in place:
        the caller then restarts the pipeline."""
        request = _TablesRequest(config, added)
        if self.status.state not in (State.RUNNING,) or self._wake_buffer is None:
            request.finish(False, f"the pipeline is {self.status.state}, not streaming")
            return request
        self._tables_request = request
        self._wake()
        if not request.done.wait(timeout):
            if self._tables_request is request:
                self._tables_request = None
                request.finish(False, "the pipeline did not take the tables in time")
            else:
                request.done.wait(timeout)  # it is being carried out now
        return request

    def _take_tables(self, request: _TablesRequest, source: Source, driver: SnapshotDriver) -> None:
        """On the dispatcher thread, between batches: carry out :meth:`add_tables`."""
        take = getattr(source, "add_tables", None)
        if take is None:
            request.finish(False, f"the {self.config.source_type} source cannot add tables while it runs")
            return
        try:
            take(request.added)
        except CDCError as exc:
            request.finish(False, redact(str(exc)))
            return
        # the one config object that source, sink, driver and context share gets the new list
        tables = list(getattr(request.config.source, "tables", []))
        self.config.source.tables = tables
        record = None
        if self.config.snapshot.mode == "initial":
            record = driver.ensure_initial()
            driver.notify()
        self.log.info("tables_added", tables=request.added,
                      snapshot=record["id"] if record else None)
        request.finish(True, snapshot=record["id"] if record else None)

    def _halting(self) -> bool:
        """Stop reading: a stop or a pause was asked."""
        return self._stop.is_set() or self._paused.is_set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.status.state in FINAL or (
            self._thread is not None and not self._thread.is_alive()
        )

    # -- supervisor ---------------------------------------------------------------------------

    def _supervise(self) -> None:
        backoff = 1.0
        unexpected = 0
        paused_poll = 0.0
        while not self._stop.is_set():
            if self.lease is not None and not self.lease.held():
                if self.status.state != State.STANDBY:
                    self._enter(State.STANDBY, reason="this instance does not hold the lease")
                self.lease.wait(0.5)
                continue
            # read from the store before every (re)start: the pause may have been asked of
            # another instance, or before this one took the lease over
            if self.sync_paused():
                if self.status.state is not State.PAUSED:
                    self._enter(State.PAUSED)
                if time.monotonic() - paused_poll >= POLL_INTERVAL_S:
                    paused_poll = time.monotonic()
                    self._poll_while_paused()
                self._pause_wake.wait(1.0)
                self._pause_wake.clear()
                continue
            progress_before = self.status.checkpoint_at
            retry: RetriableError | None = None
            try:
                if self._run_once() == State.FINISHED:
                    self._enter(State.FINISHED)
                    return
                if self._stop.is_set():
                    break
            except FatalError as exc:
                self._enter(State.FAILED, exc)
                return
            except LeaseLost as exc:
                self._enter(State.STANDBY, exc, reason="lease lost")
                backoff = 1.0
                continue
            except RetriableError as exc:
                retry = exc
            except Exception as exc:  # a bug or an unwrapped library error
                unexpected += 1
                self.log.error("unexpected_error", error=redact(repr(exc)), traceback=redact(traceback.format_exc()))
                if unexpected >= MAX_UNEXPECTED:
                    self._enter(State.FAILED, FatalError(
                        f"internal error, gave up after {unexpected} attempts: {exc!r}", kind=Kind.INTERNAL
                    ))
                    return
                retry = RetriableError(f"unexpected error: {exc!r}", kind=Kind.INTERNAL)
            else:
                backoff = 1.0
                if self._paused.is_set():
                    continue
            if self.status.checkpoint_at != progress_before:
                backoff = 1.0
                unexpected = 0
            wait = min(backoff, 30.0) * (0.5 + random.random() / 2)
            backoff = min(backoff * 2, 30.0)
            if retry is not None:
                self._enter(State.RETRYING, retry, delay=wait)
            # a lease lost meanwhile (e.g. expired while the state database is down) ends the
            # wait: the pipeline shows standby at once, and resumes as soon as it is granted again
            until = time.monotonic() + wait
            while not self._stop.wait(min(0.25, max(0.0, until - time.monotonic()))):
                if time.monotonic() >= until or (self.lease is not None and not self.lease.held()):
                    break
                if self._paused.is_set():
                    break
        if self.status.state not in FINAL:
            self._enter(State.STOPPED)

    def _remember_error(self, error: dict[str, Any] | None) -> None:
        """Keep a failure in the state store (``cdc status`` shows it when no service runs);
        the first ``running`` of a process clears it. Best effort: the state may be down."""
        try:
            self.store.set_meta(self.name, LAST_ERROR_META, orjson.dumps(error).decode() if error else "")
            self._error_cleared = error is None
        except Exception as exc:  # noqa: BLE001 - the status in memory is what matters
            self.log.debug("last_error_not_saved", error=redact(str(exc)))

    def _enter(
        self,
        state: State,
        error: CDCError | None = None,
        *,
        reason: str | None = None,
        delay: float | None = None,
    ) -> None:
        """The one place a pipeline changes state (see :class:`State` for the transitions):
        sets the state and the last error, counts retries, and logs the change."""
        status, previous = self.status, self.status.state
        status.state = state
        if state is State.RETRYING:
            assert error is not None
            if previous is not State.RETRYING or reason != "degraded":
                status.retries += 1
                if error.side == "sink":
                    status.sink_errors += 1
                event = "pipeline_degraded" if reason == "degraded" else "pipeline_retrying"
                more: dict[str, Any] = {} if delay is None else {
                    "attempt": status.retries, "next_attempt_in_s": round(delay, 1)}
                self.log.warning(event, error_kind=error.kind, error=redact(str(error)), **more)
            self._retrying_side = error.side
            status.last_error = {"kind": error.kind, "message": redact(str(error)), "at": time.time()}
        elif state is State.FAILED:
            assert error is not None
            status.last_error = {"kind": error.kind, "message": redact(str(error)), "at": time.time()}
            self.log.error("pipeline_failed", error_kind=error.kind, error=redact(str(error)))
            self._remember_error(status.last_error)
        elif state is State.RUNNING:
            status.last_error = None
            if not self._error_cleared:
                self._remember_error(None)
            if previous is State.RETRYING and reason == "recovered":
                self.log.info("pipeline_recovered")
        elif state is State.STANDBY:
            if error is not None:
                self.log.warning("pipeline_standby", reason=reason, error=redact(str(error)))
            else:
                self.log.info("pipeline_standby", reason=reason)
        elif state is State.FINISHED:
            self.log.info("pipeline_finished")
        elif state is State.PAUSED:
            self.log.info("pipeline_paused", checkpoint=status.checkpoint)
        if state is State.RUNNING and previous is State.PAUSED:
            self.log.info("pipeline_resumed", checkpoint=status.checkpoint)

    def _degraded(self, exc: CDCError | None) -> None:
        """A sink (or source) reports, from inside a call, that it cannot deliver now (``exc``)
        or that it can again (None)."""
        if exc is None:
            if self.status.state is State.RETRYING:
                self._enter(State.RUNNING, reason="recovered")
            return
        self._enter(State.RETRYING, exc, reason="degraded")

    def _plugin(self, kind: str) -> tuple[type, Any]:
        cls = registry.load(kind, self.config.source_type if kind == "source" else self.config.sink_type)
        return cls, (self.config.source if kind == "source" else self.config.sink)

    def _context(self) -> PluginContext:
        if self._registry is None:
            self._chain = transforms.build(self.config.transforms, self.name)
            masks = self._chain.masks if self._chain is not None else None
            self._registry = SchemaRegistry(self.store, self.name, masks)
        return PluginContext(
            self.config,
            self.store,
            self.log,
            self.service.config_dir,
            self._registry,
            self._stop,
            self._shared,
            self._degraded,
            config_file=self.service.file,
        )

    def _poll_while_paused(self) -> None:
        """While paused: the source's monitoring only (PostgreSQL: the slot's retained WAL, so
        ``max_retained_wal_mb`` still turns /healthz 503), without reading anything."""
        try:
            source_cls, source_cfg = self._plugin("source")
            source: Source = source_cls(source_cfg, self._context())
            try:
                source.poll()
                info = source.status()
            finally:
                source.close()
        except Exception as exc:  # noqa: BLE001 - monitoring only; the pipeline stays paused
            self.log.debug("paused_poll_failed", error=redact(str(exc)))
            return
        if info:
            self.status.source_info = info

    def _run_once(self) -> str | None:
        self.feed.discard()  # what an earlier attempt held was never acknowledged
        ctx = self._context()
        assert self._registry is not None
        source_cls, source_cfg = self._plugin("source")
        sink_cls, sink_cfg = self._plugin("sink")
        for kind, cls, type_name in (
            ("source", source_cls, self.config.source_type),
            ("sink", sink_cls, self.config.sink_type),
        ):
            if not getattr(cls, "available", True):
                raise NotAvailableYet(
                    f"the {type_name} {kind} is not available yet in this build of cdc",
                    pipeline=self.name,
                )
        source: Source = source_cls(source_cfg, ctx)
        sink: Sink = sink_cls(sink_cfg, ctx)
        self._dead = self._dead_letter_sink(ctx)
        self._source = source
        self._wake_buffer = None
        driver = SnapshotDriver(
            self.config,
            self.store,
            source,
            self._registry,
            self.log,
            self._wake,
            streaming=self.config.snapshot.mode != "initial_only",
        )
        self.snapshots = driver
        try:
            if self.config.snapshot.mode == "initial_only":
                return self._snapshot_only(driver, sink)
            self._open(source, sink)
            if self.config.snapshot.mode == "initial":
                driver.ensure_initial()
            if not self._sink_degraded():
                self._enter(State.RUNNING)
            # after a sink failure the pipeline shows `retrying` until a commit of events
            # succeeds: reopening a sink proves little (a full disk fails only at the next flush)
            self._stream(source, sink, driver)
            return None
        finally:
            driver.close()
            sink.close()
            if self._dead is not None:
                self._dead.close()
            source.close()

    def _wake(self) -> None:
        buffer = self._wake_buffer
        if buffer is not None:
            buffer.put(_WAKE, 0, 0.1)
        else:
            self._wake_event.set()

    def notify_snapshots(self) -> None:
        """Snapshot records changed (a request or a cancel through the API)."""
        driver = self.snapshots
        if driver is not None:
            driver.notify()

    def _snapshot_only(self, driver: SnapshotDriver, sink: Sink) -> str | None:
        """``snapshot.mode: initial_only``: no stream, no slot; each chunk is emitted as soon
        as it is read. The sink's resume token is kept in the snapshot records."""
        records = self.store.snapshots(self.name)
        tokens = [r for r in records if r.get("sink_at")]
        resume = max(tokens, key=lambda r: r["sink_at"]).get("sink") if tokens else None
        sink.open(resume)
        if self._dead is not None:
            self._dead.open()
        driver.ensure_initial()
        self._enter(State.RUNNING)
        delivered: set[SchemaVersion] = set()
        while not self._halting():
            self._check_lease()
            events, dirty = driver.poll(None, True)
            self.status.snapshot = driver.status
            if events:
                self._deliver(sink, events, delivered)
            if dirty:
                token = self._flush(sink)
                now = time.time()
                for r in dirty:
                    r["sink"], r["sink_at"] = token, now
                self.store.update_snapshots(self.name, dirty)
                self.status.checkpoint_at = now
            if driver.idle:
                return State.FINISHED
            if not events:
                self._wake_event.wait(0.25)
                self._wake_event.clear()
        return None

    def _open(self, source: Source, sink: Sink) -> None:
        checkpoint = self.store.get_checkpoint(self.name)
        adopting = False
        if checkpoint is None:
            if sink.holds_events():
                if not self.adopt and self.store.snapshots(self.name):
                    raise FatalStateError(
                        f"pipeline {self.name!r} has snapshots but has never streamed (it ran "
                        "with snapshot.mode: initial_only), and its sink holds their rows: "
                        "starting the stream now would miss every change made since. Give the "
                        "pipeline a new sink location with snapshot.mode: initial (a fresh "
                        f"snapshot, then the stream), or run `cdc drop {self._file} {self.name} --yes` "
                        "first",
                        pipeline=self.name,
                        kind=Kind.STATE_LOST,
                    )
                if not self.adopt:
                    raise FatalStateError(
                        f"pipeline {self.name!r} has no saved state, but its sink already holds "
                        "its events (was the state file lost or replaced?). Starting from 'now' "
                        f"would silently skip changes. Either run `cdc drop {self._file} "
                        f"{self.name} --yes` and start fresh (with snapshot.mode: initial to "
                        f"re-read the tables), or run `cdc run {self._file} --adopt {self.name}` to "
                        "continue from the replication slot's confirmed position",
                        pipeline=self.name,
                        kind=Kind.STATE_LOST,
                    )
                assert self._registry is not None
                seeded = self._registry.seed(sink.held_schemas())
                self.log.warning("adopting", schema_versions_from_sink=seeded)
                adopting = True
            elif self.adopt:
                adopting = True
        elif self.adopt:
            self.log.info("adopt_ignored", reason="the pipeline has saved state")
        start = source.open(checkpoint.position if checkpoint else None, adopt=adopting)
        self._start = start
        sink.open(checkpoint.sink if checkpoint else None)
        if self._dead is not None:
            self._dead.open()
        if checkpoint is None:
            if start is None:
                raise FatalError("the source did not report a start position", pipeline=self.name)
            # Save where we start at once: a crash before the first batch must not look like
            # a lost state on restart.
            token = sink.flush()
            position = source.serialize_position(start)
            self.store.save_checkpoint(self.name, position, token)
            self.status.checkpoint = position
            self.status.checkpoint_at = time.time()
            self.log.info("started_fresh", position=position, adopted=adopting)
        else:
            self.status.checkpoint = checkpoint.position
            self.status.checkpoint_at = checkpoint.saved_at
            self.log.info("resuming", position=checkpoint.position)
        self.status.source_position = self.status.checkpoint

    # -- streaming ----------------------------------------------------------------------------

    def _stream(self, source: Source, sink: Sink, driver: SnapshotDriver) -> None:
        buffer = BoundedBuffer(BUFFER_BYTES)
        self._wake_buffer = buffer
        reader_stop = threading.Event()

        def read_loop() -> None:
            try:
                while not reader_stop.is_set() and not self._halting():
                    batch = source.read(0.2)
                    if batch is None:
                        continue
                    cost = batch.cost or 64 + 512 * len(batch.events)
                    while not buffer.put(batch, cost, 1.0):
                        if reader_stop.is_set() or self._halting():
                            return
                        keepalive = getattr(source, "keepalive", None)
                        if keepalive is not None:
                            keepalive()
            except BaseException as exc:  # handed to the dispatcher, which raises it
                buffer.put(_ReaderFailed(exc), 0, 3600)

        reader = threading.Thread(target=read_loop, name=f"reader-{self.name}", daemon=True)
        reader.start()
        try:
            self._dispatch(source, sink, buffer, driver)
        finally:
            self._wake_buffer = None
            reader_stop.set()
            buffer.close()
            reader.join(5)

    def _dispatch(self, source: Source, sink: Sink, buffer: BoundedBuffer, driver: SnapshotDriver) -> None:
        """Feed what the reader buffered to the sink and the checkpointer, until stopped."""
        delivered: set[SchemaVersion] = set()
        cp = Checkpointer(self, source, sink, self._start)
        housekeeping = _Housekeeping(self, source, driver)
        heartbeat_s = float(getattr(source.config, "heartbeat_s", 10.0))
        while True:
            self._check_lease()
            housekeeping.maybe_run()
            request = self._tables_request
            if request is not None:
                self._tables_request = None
                self._take_tables(request, source, driver)
            if self._halting():
                # stopping (or pausing): deliver what was read, within the deadline, then commit and return
                item = buffer.get_nowait()
                while item is _WAKE:
                    item = buffer.get_nowait()
                if item is None or (self._stop_deadline is not None and time.monotonic() > self._stop_deadline):
                    if cp.dirty:
                        cp.commit()
                    return
            else:
                item = buffer.get(0.25)
                if item is None or item is _WAKE:
                    # Idle: snapshot chunks may be emitted here; a heartbeat position held back
                    # earlier is checkpointed once the interval has passed, so the slot keeps up.
                    # Nothing came for a moment and every transaction read is delivered and
                    # committed: the lag is 0 now, not at the next heartbeat (seconds later).
                    if item is None and cp.at_boundary and cp.unflushed == 0 and not cp.dirty:
                        self.status.caught_up = True
                    if cp.at_boundary and self._snapshot_step(cp, driver, delivered):
                        pass
                    elif cp.pending is not None and cp.heartbeat_due(heartbeat_s):
                        cp.commit()
                    continue
            for batch in self._gather(item, buffer):
                if batch.position is None and cp.pending is not None:
                    # the middle of a transaction larger than a batch: what precedes it is
                    # committed at its own position before any of its events reach the sink,
                    # so a checkpoint and the sink's resume token describe the same point
                    cp.commit()
                if batch.events:
                    if driver.active:
                        driver.observe(batch.events)
                    self._deliver(sink, batch.events, delivered)
                    self.status.caught_up = False
                if batch.commit_ts is not None:
                    self.status.commit_ts = batch.commit_ts
                cp.delivered(batch)
                if batch.position is not None:
                    self.status.source_position = source.serialize_position(batch.position)
            if cp.at_boundary and not self._halting() and self._snapshot_step(cp, driver, delivered):
                continue
            if cp.pending is None:
                continue
            if cp.unflushed == 0:
                self.status.caught_up = True
                if not cp.heartbeat_due(heartbeat_s):
                    continue  # (while the sink failed, only a commit of events moves it on)
            cp.commit()

    @staticmethod
    def _gather(item: Any, buffer: BoundedBuffer) -> list[Any]:
        """``item`` and what else is ready, up to a bound. A batch without a position (inside a
        transaction larger than a batch) ends the gathering. A reader failure is raised here."""
        if isinstance(item, _ReaderFailed):
            raise item.error
        items = [item]
        count = len(item.events)
        while count < MAX_DISPATCH_EVENTS and items[-1].position is not None:
            more = buffer.get_nowait()
            if more is None:
                break
            if more is _WAKE:
                continue
            if isinstance(more, _ReaderFailed):
                raise more.error
            items.append(more)
            count += len(more.events)
        return items

    def _snapshot_step(self, cp: Checkpointer, driver: SnapshotDriver, delivered: set[SchemaVersion]) -> bool:
        """At a transaction boundary: emit the snapshot rows the stream position allows, then
        commit there with the snapshots' progress. True when it committed."""
        events, dirty = driver.poll(cp.reached, True)
        self.status.snapshot = driver.status
        if not events and not dirty:
            return False
        if events:
            self._deliver(cp.sink, events, delivered)
        cp.commit(cp.reached, dirty)
        return True

    def _check_lease(self) -> None:
        """Raise :class:`LeaseLost` when this instance no longer holds the pipeline's lease
        (checked before each batch reaches the sink; the store checks again, in the database,
        before it writes a checkpoint)."""
        if self.lease is not None and not self.lease.held():
            raise LeaseLost(
                f"pipeline {self.name!r}: the lease is no longer held by this instance",
                pipeline=self.name,
            )

    def _deliver(self, sink: Sink, events: list[ChangeEvent], delivered: set[SchemaVersion]) -> None:
        self._check_lease()
        if self._chain is not None:
            events = self._transform(events)
            if not events:
                return
        # one C-level pass: events by (schema version, op), for new schemas and for metrics
        by_version = Counter(zip(map(_schema_of, events), map(_op_of, events), strict=True))
        new = {sv for sv, _ in by_version} - delivered
        if new:
            for sv in sorted(new, key=lambda s: (s.name, s.version)):
                sink.write_schema(sv)
            delivered |= new
        if self._dead is None:
            sink.write(events)
        else:
            self._write_or_set_aside(sink, events)
        if self.feed.attached:
            self.feed.hold(events)
        self.status.events_total += len(events)
        if self._on_events is not None:
            counts: Counter[tuple[str, str]] = Counter()
            for (sv, op), n in by_version.items():
                counts[(sv.name, op)] += n
            self._on_events(self.name, counts)

    def _transform(self, events: list[ChangeEvent]) -> list[ChangeEvent]:
        """The events through the transform chain. A transform's error on one event stops the
        pipeline naming the event's id (never its values)."""
        chain = self._chain
        assert chain is not None
        try:
            return chain.apply(events)
        except transforms.TransformFailed as exc:
            if self._dead is not None:
                return self._transform_one_by_one(chain, events)
            raise FatalError(
                f"transform {exc.transform} failed on event {exc.event.id} (table "
                f"{exc.event.schema.name}): {exc.message}; set `dead_letter` to set such events "
                "aside and go on",
                pipeline=self.name,
                table=exc.event.schema.name,
                kind=Kind.TRANSFORM_FAILED,
            ) from None

    def _transform_one_by_one(
        self, chain: transforms.Chain, events: list[ChangeEvent]
    ) -> list[ChangeEvent]:
        """A transform failed in this list: each event on its own, the failing ones (with every
        mask applied) to the dead-letter sink."""
        dead = self._dead
        assert dead is not None
        out: list[ChangeEvent] = []
        for e in events:
            try:
                out.extend(chain.apply([e]))
            except transforms.TransformFailed as exc:
                dead.put(chain.masked(e), exc.message, f"transform:{exc.transform}")
                self.status.dead_letters = self._dead_before + dead.count
        return out

    def _write_or_set_aside(self, sink: Sink, events: list[ChangeEvent]) -> None:
        """``sink.write`` with a dead-letter sink: an event the sink cannot deliver on its own
        account goes there, and the sink gets the events after it."""
        dead = self._dead
        assert dead is not None
        rest: list[ChangeEvent] = events
        while rest:
            try:
                sink.write(rest)
                return
            except EventUndeliverable as exc:
                self._set_aside(exc)
                if exc.kept_rest:
                    return
                at = next((i for i, e in enumerate(rest) if e is exc.event), None)
                if at is None:
                    raise
                rest = rest[at + 1 :]

    def _set_aside(self, exc: EventUndeliverable) -> None:
        dead = self._dead
        assert dead is not None
        dead.put(exc.event, exc.message, self.config.sink_type)
        self.status.dead_letters = self._dead_before + dead.count
        if self.feed.attached:
            self.feed.set_aside(exc.event)

    def _flush(self, sink: Sink) -> str | None:
        """``sink.flush()``, then the dead-letter sink's: both durable before a checkpoint."""
        while True:
            try:
                token = sink.flush()
                break
            except EventUndeliverable as exc:
                if self._dead is None or not exc.kept_rest:
                    raise
                self._set_aside(exc)
        if self._dead is not None:
            self._dead.flush()
        if self.feed.held:
            self.feed.publish()  # durable: `cdc tail` may show them
        return token

    def _dead_letter_sink(self, ctx: PluginContext) -> DeadLetters | None:
        if self._dead is not None:
            self._dead_before += self._dead.count
        if self.config.dead_letter is None:
            return None
        cls = registry.load("sink", self.config.dead_letter_type)
        dead_ctx = PluginContext(
            self.config,
            self.store,
            self.log.bind(dead_letter=self.config.dead_letter_type),
            self.service.config_dir,
            self._registry,
            self._stop,
            self._shared,
        )
        return DeadLetters(
            cls(self.config.dead_letter, dead_ctx),
            self.config.dead_letter_type,
            self.name,
            self.log,
        )

    def _sink_degraded(self) -> bool:
        """Retrying after a sink failure: heartbeat checkpoints wait, and the pipeline shows
        `running` again only once events were made durable."""
        return self.status.state is State.RETRYING and self._retrying_side == "sink"
