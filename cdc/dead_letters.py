"""The dead-letter sink: where events go that cannot be delivered for a reason of their own.

Theory of operation. With ``dead_letter:`` set, the pipeline opens a second sink (any sink
type, configured like ``sink:``) next to its own. An event that a transform fails on, or that
the sink refuses on its own account (:class:`cdc.errors.EventUndeliverable`: too large for the
broker, a 4xx of a webhook receiver for that event), is written there as a record
``{"event": ..., "error": ..., "sink": <sink type or "transform:NAME">, "at": ISO 8601 UTC}``
and counted, and the pipeline goes on. The record travels as a
:class:`cdc.events.TransformedEvent` whose value is the record, so every sink writes it with its
own rules (its topic from the event's table, its key, its schema definitions first).

The dead-letter sink is flushed in the pipeline's commit sequence before the checkpoint is
saved, so a checkpoint never covers an event that is neither delivered nor durably set aside.
Any error of the dead-letter sink stops the pipeline (a :class:`FatalSinkError`): a second failure
path would otherwise lose events silently.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import orjson

from cdc.errors import CDCError, FatalSinkError, Kind

if TYPE_CHECKING:
    import structlog

    from cdc.events import ChangeEvent
    from cdc.plugin import Sink
    from cdc.schema import SchemaVersion


class DeadLetters:
    """One pipeline's dead-letter sink, as the pipeline's dispatcher uses it."""

    def __init__(
        self, sink: Sink, sink_type: str, pipeline: str, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self.sink = sink
        self.sink_type = sink_type
        self.pipeline = pipeline
        self.log = log
        self._schemas: set[SchemaVersion] = set()
        self._unflushed = 0
        #: events set aside since the service started (``/pipelines``, ``/metrics``)
        self.count = 0

    def open(self) -> None:
        self._schemas.clear()
        self._unflushed = 0
        self._guard("open", lambda: self.sink.open(None))

    def put(self, event: ChangeEvent, error: str, where: str) -> None:
        """Write one dead-letter record (durable at the next :meth:`flush`)."""
        from cdc.transforms import derive

        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        record: dict[str, Any] = {
            "event": orjson.Fragment(event.json),
            "error": error,
            "sink": where,
            "at": at.replace("+00:00", "Z"),
        }
        letter = derive(event, value=record, dest=None, raw_key=None, headers=None)
        sv = event.schema
        if sv not in self._schemas:
            self._guard("write a schema", lambda: self.sink.write_schema(sv))
            self._schemas.add(sv)
        self._guard("write", lambda: self.sink.write([letter]))
        self._unflushed += 1
        self.count += 1
        self.log.warning("dead_lettered", event_id=event.id, error=error, sink=where)

    def flush(self) -> None:
        if self._unflushed:
            self._guard("flush", self.sink.flush)
            self._unflushed = 0

    def close(self) -> None:
        self.sink.close()

    def _guard(self, what: str, fn: Any) -> None:
        try:
            fn()
        except CDCError as exc:
            raise FatalSinkError(
                f"the dead-letter sink ({self.sink_type}) failed to {what}: {exc.message}; "
                "the pipeline stops so that no event is lost",
                pipeline=self.pipeline,
                kind=Kind.SINK_DELIVERY,
            ) from exc
