"""The one error tree of the service.

Every error the service raises on purpose is a :class:`CDCError`. The pipeline's retry loop
decides by type, never by message text:

* :class:`RetriableError` (``retriable = True``): a connection lost, a server restarting, a
  sink that is down. The pipeline closes everything, waits with backoff and resumes from its
  last checkpoint; nothing is lost because nothing past the checkpoint was confirmed.
* :class:`FatalError`: the pipeline cannot go on without a person (a dropped slot, a missing
  grant, a config the source refuses). It stops that pipeline only, with a message that says
  what happened and how to fix it.
* :class:`ConfigError`: the pipeline file is invalid; it carries the YAML path and line.

The second axis is the side of the pipeline an error comes from: :class:`SourceError`,
:class:`SinkError` and :class:`StateError` (each with a retriable and a fatal subclass, e.g.
:class:`RetriableSinkError`), and :class:`ProtocolError` (a source's bytes that do not decode).
The side decides how the pipeline reports a retry: after a sink error it is "degraded" (heartbeat
checkpoints wait until events are durable again). Each error also has a :class:`Kind`, the finer
class ``/healthz`` and ``/pipelines`` show. Sources and sinks classify the errors of their
drivers by SQLSTATE or error number, never by message text, wherever the driver gives one.

Errors carry the pipeline, table and position they concern so that logs and ``/pipelines``
can show them without parsing messages.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The machine-readable class of an error, as ``/healthz``, ``/pipelines`` and the log show
    it (the values are that text). Each kind belongs to one side of the pipeline, which decides
    how the pipeline reports it (a sink kind makes it "degraded": heartbeat checkpoints wait
    until events are durable again). Plugins may use their own strings: those count as the
    side their prefix names (``sink_...``, ``source_...``, ``state_...``), else the source's."""

    ERROR = "error"
    RETRYING = "retrying"
    FATAL = "fatal"
    CONFIG = "config"
    INTERNAL = "internal"
    PROTOCOL = "protocol"
    NOT_AVAILABLE_YET = "not_available_yet"
    LEASE_LOST = "lease_lost"
    PLUGIN_MISSING = "plugin_missing"
    PLUGIN_IMPORT = "plugin_import"
    PLUGIN_INVALID = "plugin_invalid"
    # the source
    SOURCE_CONFIG = "source_config"
    SOURCE_UNREACHABLE = "source_unreachable"
    SOURCE_ERROR = "source_error"
    SOURCE_AUTH = "source_auth"
    SOURCE_PERMISSION = "source_permission"
    SOURCE_GRANTS = "source_grants"
    SOURCE_SCHEMA = "source_schema"
    SOURCE_BUSY = "source_busy"
    SLOT_LOST = "slot_lost"
    SLOT_MISSING = "slot_missing"
    SLOT_IN_USE = "slot_in_use"
    STATE_BEHIND_SLOT = "state_behind_slot"
    BINLOG_PURGED = "binlog_purged"
    SERVER_ID_COLLISION = "server_id_collision"
    SNAPSHOT_REFUSED = "snapshot_refused"
    # the sink
    SINK_UNAVAILABLE = "sink_unavailable"
    SINK_CONFIG = "sink_config"
    SINK_AUTH = "sink_auth"
    SINK_REJECTED = "sink_rejected"
    SINK_DELIVERY = "sink_delivery"
    SINK_IO = "sink_io"
    SINK_EVENT_TOO_LARGE = "sink_event_too_large"
    SINK_TLS = "sink_tls"
    EVENT_TOO_LARGE = "event_too_large"  # the Kafka sink's name for it, kept as shown
    # the state store
    STATE_LOST = "state_lost"
    STATE_ERROR = "state_error"
    STATE_CORRUPT = "state_corrupt"
    STATE_MISSING = "state_missing"
    STATE_UNREACHABLE = "state_unreachable"
    STATE_VERSION = "state_version"
    STATE_INVALID = "state_invalid"

    @property
    def side(self) -> str:
        """``source``, ``sink``, ``state`` or ``service`` (see :func:`side_of`)."""
        return side_of(self.value)


_SINK_KINDS = frozenset({Kind.EVENT_TOO_LARGE.value})
_SERVICE_KINDS = frozenset(
    k.value
    for k in (Kind.ERROR, Kind.RETRYING, Kind.FATAL, Kind.CONFIG, Kind.INTERNAL,
              Kind.NOT_AVAILABLE_YET, Kind.LEASE_LOST, Kind.PLUGIN_MISSING, Kind.PLUGIN_IMPORT,
              Kind.PLUGIN_INVALID)
)


def side_of(kind: str) -> str:
    """Which side of the pipeline an error kind belongs to: ``sink``, ``state``, ``service``
    (the service itself, config, plugins) or ``source``."""
    if kind.startswith("sink_") or kind in _SINK_KINDS:
        return "sink"
    if kind.startswith("state_") and kind != Kind.STATE_BEHIND_SLOT:
        return "state"
    if kind in _SERVICE_KINDS:
        return "service"
    return "source"


class CDCError(Exception):
    """Root of every error raised by cdc on purpose."""

    retriable: bool = False
    #: short machine-readable class shown by /healthz (a :class:`Kind`, or a plugin's string)
    kind: str = Kind.ERROR

    def __init__(
        self,
        message: str,
        *,
        pipeline: str | None = None,
        table: str | None = None,
        position: Any = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.pipeline = pipeline
        self.table = table
        self.position = position
        if kind is not None:
            try:
                self.kind = Kind(kind)
            except ValueError:  # a plugin's own kind
                self.kind = kind

    def __str__(self) -> str:
        return self.message

    #: the side this class of error belongs to (None: the side its kind names)
    _side: str | None = None

    @property
    def side(self) -> str:
        """``source``, ``sink``, ``state`` or ``service``: by class, else by kind."""
        return self._side or side_of(str(self.kind))


class RetriableError(CDCError):
    """A passing fault: retry with backoff, resume from the checkpoint."""

    retriable = True
    kind = Kind.RETRYING


class FatalError(CDCError):
    """The pipeline cannot continue; a person must act. Stops only its own pipeline."""

    kind = Kind.FATAL


class NotAvailableYet(FatalError):
    """A feature the contract describes but this build does not have yet."""

    kind = Kind.NOT_AVAILABLE_YET


class ConfigProblem:
    """One problem found in a pipeline file."""

    __slots__ = ("path", "line", "message")

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line is not None else file
        return f"{where}: {self.path or '(top)'}: {self.message}"

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"ConfigProblem({self.path!r}, {self.line!r}, {self.message!r})"


class ConfigError(CDCError):
    """The pipeline file is invalid. ``problems`` lists every problem found."""

    kind = Kind.CONFIG

    def __init__(self, file: str, problems: list[ConfigProblem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


class SourceError(CDCError):
    """An error of the source side: the database, its settings, the stream."""

    _side = "source"


class SinkError(CDCError):
    """An error of the sink side: the destination, its settings, a refused event."""

    _side = "sink"


class StateError(CDCError):
    """An error of the state store (checkpoints, schema versions, leases)."""

    _side = "state"


class RetriableSourceError(SourceError, RetriableError):
    """The source is out of reach for now (a connection lost, a server restarting)."""

    kind = Kind.SOURCE_UNREACHABLE


class FatalSourceError(SourceError, FatalError):
    """The source cannot be streamed from until a person acts (grants, settings, a lost slot)."""

    kind = Kind.SOURCE_ERROR


class RetriableSinkError(SinkError, RetriableError):
    """The sink cannot take events for now (down, full, refusing for a while)."""

    kind = Kind.SINK_UNAVAILABLE


class FatalSinkError(SinkError, FatalError):
    """The sink cannot take events until a person acts (settings, auth, a refused event)."""

    kind = Kind.SINK_CONFIG


class RetriableStateError(StateError, RetriableError):
    """The state store is out of reach for now."""

    kind = Kind.STATE_UNREACHABLE


class FatalStateError(StateError, FatalError):
    """The state store cannot be used until a person acts (corrupt, newer, lost)."""

    kind = Kind.STATE_ERROR


class ProtocolError(FatalSourceError):
    """A source sent bytes that do not decode: a bug or a protocol this build does not know.
    Fatal (retrying from the checkpoint would read the same bytes again), with the position and
    table where it happened."""

    kind = Kind.PROTOCOL


class LeaseLost(RetriableError):
    """This instance no longer holds the pipeline's lease (several instances, ``state.dsn``):
    another instance took it over, or it could not be renewed before it expired. Nothing was
    written; the pipeline stops being active and goes back to ``standby``."""

    kind = Kind.LEASE_LOST


class UnknownName(CDCError):
    """A request to the running service names a pipeline or snapshot it does not have (the
    admin API answers 404)."""


class Refused(CDCError):
    """A request the running service will not carry out, with the reason (the admin API
    answers 400)."""
