"""What a source or a sink is, for the core.

A plugin is a class registered under the entry-point group ``cdc.sources`` or ``cdc.sinks``
(see :mod:`cdc.registry`). It names its typed config section with the class attribute
``Config``: a dataclass whose fields are declared with :func:`setting`. The loader validates a
pipeline file's ``source:`` / ``sink:`` mapping against that dataclass (unknown keys, types,
required keys, checks) and the docs are generated from it, so a plugin's settings are checked
and documented exactly like the built-in ones.

Threads: a source's :meth:`Source.read` runs on the pipeline's reader thread;
:meth:`Source.ack` is called from the dispatcher thread and must be thread-safe. A sink is
only ever called from the dispatcher thread.

Order of calls (the delivery guarantee): the dispatcher hands events to ``Sink.write``, calls
``Sink.flush`` (durable), saves the checkpoint, then calls ``Source.ack`` with the same
position. Raising :class:`cdc.errors.RetriableError` from any of these makes the pipeline
close everything and resume from the last saved checkpoint; :class:`cdc.errors.FatalError`
stops the pipeline.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from cdc.settings import setting as setting  # re-exported: plugins declare settings with it

if TYPE_CHECKING:
    import structlog

    from cdc.config import PipelineConfig
    from cdc.debezium import DebeziumEncoder
    from cdc.errors import CDCError
    from cdc.events import ChangeEvent
    from cdc.schema import SchemaRegistry, SchemaVersion
    from cdc.snapshot_api import SnapshotReader
    from cdc.state import CheckpointStore
    from cdc.verify import SinkView

class Batch:
    """What a source's reader hands to the pipeline.

    ``events`` in delivery order; ``position`` is the checkpointable position reached after the
    last of them (only at transaction boundaries), or ``None`` when the batch ends inside a
    transaction. A batch with no events and a position is a heartbeat: the source moved past
    changes of no interest.
    """

    __slots__ = ("events", "position", "commit_ts", "cost")

    def __init__(
        self,
        events: list[ChangeEvent],
        position: Any = None,
        commit_ts: float | None = None,
        cost: int = 0,
    ) -> None:
        self.events = events
        self.position = position
        #: source commit time (unix seconds) of the newest transaction in the batch, for lag
        self.commit_ts = commit_ts
        #: estimated memory held by the batch, in bytes (0: estimate from the event count)
        self.cost = cost


class PluginContext:
    """What the core gives a plugin: who it works for and where to keep its facts."""

    def __init__(
        self,
        pipeline: PipelineConfig,
        store: CheckpointStore,
        log: structlog.typing.FilteringBoundLogger,
        config_dir: str,
        registry: SchemaRegistry | None = None,
        stop: threading.Event | None = None,
        shared: dict[str, Any] | None = None,
        on_degraded: Callable[[CDCError | None], None] | None = None,
        config_file: str = "",
    ) -> None:
        self.pipeline = pipeline
        self.name = pipeline.name
        self.store = store
        self.log = log
        self.config_dir = config_dir
        self.registry = registry
        self.stop = stop or threading.Event()
        #: facts the service shares with every plugin (e.g. ``slots_in_use``)
        self.shared: dict[str, Any] = shared if shared is not None else {}
        self._on_degraded = on_degraded
        #: the pipeline file's path, for advice that names a command (``CONFIG`` if unknown)
        self.config_file = config_file or "CONFIG"

    def degraded(self, error: CDCError | None) -> None:
        """A plugin that retries internally (a sink waiting for its endpoint) reports it here:
        with an error the pipeline shows ``retrying`` with it (``/healthz`` 503); with ``None``
        it is ``running`` again. Nothing is skipped meanwhile: the plugin keeps its data."""
        if self._on_degraded is not None:
            self._on_degraded(error)

    def get_meta(self, key: str) -> str | None:
        return self.store.get_meta(self.name, key)

    def set_meta(self, key: str, value: str) -> None:
        self.store.set_meta(self.name, key, value)


class Source(ABC):
    """A stream of committed row changes with checkpointable positions."""

    Config: ClassVar[type]
    #: shown in ``source.connector`` of events
    connector: ClassVar[str] = ""
    #: False for a plugin whose settings validate but which `cdc run` refuses (not built yet)
    available: ClassVar[bool] = True

    def __init__(self, config: Any, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx

    @abstractmethod
    def open(self, checkpoint: str | None, *, adopt: bool = False) -> Any:
        """Connect, check the server and prepare to read from ``checkpoint`` (a position
        string saved earlier, or ``None`` when the pipeline has no state; ``adopt`` then says
        the user asked to continue from the server's own record of this pipeline). Returns the
        position reading starts from. Called on the supervisor thread before each (re)start.
        Raise FatalError for what a person must fix, RetriableError for what may pass."""

    @abstractmethod
    def read(self, timeout: float) -> Batch | None:
        """Return the next batch (bounded in size), or ``None`` if nothing came within
        ``timeout`` seconds. Called in a loop on the reader thread."""

    @abstractmethod
    def ack(self, position: Any) -> None:
        """Everything up to ``position`` is checkpointed; the source may confirm it to the
        server (PostgreSQL: the slot's flush position). Called from the dispatcher thread."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Must not raise; may be called after a failed ``open``."""

    def serialize_position(self, position: Any) -> str:
        return str(position)

    # -- snapshots (see cdc.snapshot_api) ---------------------------------------------------------

    def snapshot_reader(self) -> SnapshotReader:
        """A reader of keyset chunks for snapshots. Called on the snapshot worker thread,
        whether or not :meth:`open` ran. Sources without snapshots keep this default."""
        from cdc.errors import NotAvailableYet

        raise NotAvailableYet(f"the {self.connector or type(self).__name__} source cannot take snapshots")

    def position_reached(self, position: Any, high: Any) -> bool:
        """Whether the stream, having delivered up to ``position`` (a batch position), has
        delivered every transaction before ``high`` (a chunk's high watermark)."""
        return bool(position >= high)

    def request_position(self) -> None:  # noqa: B027 - optional hook
        """A chunk waits for the stream to reach its high watermark: an idle source should
        report its current position soon (PostgreSQL asks the server for a keepalive). Called
        from the dispatcher thread; must be thread-safe."""

    def status(self) -> dict[str, Any]:
        """Facts for ``/pipelines`` and ``/metrics`` (e.g. retained WAL); cheap, cached."""
        return {}

    def poll(self) -> None:  # noqa: B027 - optional hook
        """Called every few seconds from the supervisor thread to refresh :meth:`status`."""

    # -- cdc verify (see cdc.verify) -------------------------------------------------------------

    def parse_position(self, text: str) -> Any:
        """The position a checkpoint string (from :meth:`serialize_position`) stands for, in the
        form :meth:`position_reached` compares. Sources without ``cdc verify`` keep this."""
        from cdc.errors import NotAvailableYet

        raise NotAvailableYet(f"the {self.connector or type(self).__name__} source cannot be verified")

    def event_before(self, source: dict[str, Any], high: Any) -> bool:
        """Whether an event carrying this ``source`` block (as the sink stored it) stands before
        ``high`` (a chunk's high watermark) in the stream."""
        from cdc.errors import NotAvailableYet

        raise NotAvailableYet(f"the {self.connector or type(self).__name__} source cannot be verified")

    @classmethod
    def check(cls, config: Any, ctx: PluginContext) -> list[CDCError]:
        """``cdc check``: connect and return EVERY problem that would stop this source, each
        error's message naming its fix (reachability, authentication, server settings,
        privileges, tables, slots...). Must change nothing. The default checks nothing."""
        return []

    @classmethod
    def describe_drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        """What ``cdc drop`` would remove at the source, one line each."""
        return []

    @classmethod
    def drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        """Remove the pipeline's footprint at the source; return what was removed."""
        return []


class Sink(ABC):
    """A durable destination for events."""

    Config: ClassVar[type]
    #: False for a plugin whose settings validate but which `cdc run` refuses (not built yet)
    available: ClassVar[bool] = True
    #: the ``format`` values the sink takes; another one is a validation error
    formats: ClassVar[tuple[str, ...]] = ("cdc", "debezium")
    #: transforms that do not apply to the sink; listing one is a validation error
    refused_transforms: ClassVar[tuple[str, ...]] = ()
    #: True when the sink delivers each event to a named destination (topic, subject, stream,
    #: routing key) and honours ``event.dest`` (set by the ``route`` and ``outbox`` transforms)
    destinations: ClassVar[bool] = False
    def debezium_encoder(self) -> DebeziumEncoder | None:
        """The pipeline's Debezium encoder under ``format: debezium`` (one per call: a sink
        keeps it for its life), else ``None``. Called by a sink when it opens."""
        p = self.ctx.pipeline
        if getattr(p, "sink_format", "cdc") != "debezium":
            return None
        from cdc.debezium import DebeziumEncoder

        values = getattr(p, "values", None)
        return DebeziumEncoder(
            dict(p.debezium),
            p.name,
            p.source_type,
            bigint_string=getattr(values, "bigint", "number") == "string",
            facts=self.ctx.shared,
        )

    def __init__(self, config: Any, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx

    @abstractmethod
    def open(self, resume: str | None) -> None:
        """Prepare to write. ``resume`` is the token :meth:`flush` returned with the checkpoint
        the pipeline resumes from (``None`` without one): everything the sink accepted after
        it will be delivered again."""

    @abstractmethod
    def write_schema(self, schema: SchemaVersion) -> None:
        """Deliver a schema version's definition; called before the first event using it."""

    @abstractmethod
    def write(self, events: Sequence[ChangeEvent]) -> None:
        """Accept events, in order. They need not be durable before :meth:`flush`."""

    @abstractmethod
    def flush(self) -> str | None:
        """Make everything written so far durable (acknowledged). Returns a resume token kept
        with the checkpoint, or ``None``."""

    @abstractmethod
    def close(self) -> None:
        """Release resources. Must not raise."""

    def holds_events(self) -> bool:
        """Whether the sink already holds this pipeline's events (for the no-state rules)."""
        return False

    def held_schemas(self) -> list[dict[str, Any]]:
        """Schema definitions the sink holds (``cdc run --adopt`` continues after them)."""
        return []

    def follow(self, stop: threading.Event, from_end: bool = True) -> Iterator[bytes]:
        """``cdc tail``: yield each event (one encoded line) as the sink makes it durable,
        from the end (``from_end``) or the beginning, until ``stop`` is set; reads only. Sinks
        whose events are read with the destination's own tools keep this default."""
        from cdc.errors import NotAvailableYet

        raise NotAvailableYet(f"cdc tail cannot follow a {type(self).__name__}")

    def check(self) -> list[CDCError]:
        """``cdc check``: return every problem that would stop this sink (reachability,
        permissions, topic or stream settings), each message naming its fix, without writing
        anything. The default checks nothing."""
        return []

    def verify_view(self) -> SinkView:
        """What the sink holds, for ``cdc verify`` (see :mod:`cdc.verify`); called without
        :meth:`open`. Sinks that cannot be read back keep this default."""
        from cdc.errors import NotAvailableYet

        raise NotAvailableYet(f"cdc verify cannot read back the {type(self).__name__} sink")

    def describe_drop(self) -> list[str]:
        """What ``cdc drop`` would move away at the sink, one line each."""
        return []

    def drop(self) -> list[str]:
        """Move the sink's pipeline data out of the way (never delete it); return what moved."""
        return []
