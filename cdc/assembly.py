"""Transactions into events and batches: the part both sources' decoders share (pure).

Theory of operation. A source's decoder knows its protocol (pgoutput messages, binlog events)
and its rows; what it does with them is the same for every source, and lives here once:

*Ids.* Each event of a transaction gets the id ``<prefix>:<transaction id>:<seq>`` and the
``transaction`` triple ``(transaction id, seq, last)``, where ``seq`` counts from 0 in the
transaction and the transaction id is stable in the source's log (a commit LSN, a binlog file
and offset), so a re-read gives the same ids. :meth:`TxAssembler.begin` starts a transaction,
:meth:`TxAssembler.emit` adds one event.

*Key changes.* An update whose key changed is a delete of the old key and a create of the new
one, linked by ``key_change`` (:meth:`TxAssembler.update`), so a consumer folding by key never
keeps a row under a key that no longer exists.

*The last event.* Only the transaction's end tells which event was the last;
:meth:`TxAssembler.commit` marks it. So a batch cut inside a transaction keeps its newest event
back (:meth:`TxAssembler.take`), and a batch only carries a position when it ends at a
transaction end: the events up to the last commit go together, the rest wait.

*Batch size.* A batch is due (:meth:`TxAssembler.full`; :meth:`TxAssembler.emit` says it too) after ``batch_events`` events or about
``batch_bytes`` of them (the decoder adds each event's cost to :attr:`TxAssembler.cost`: the
bytes it came from plus a rough size of its Python objects).

The decoder builds the :class:`~cdc.plugin.Batch` itself: positions are the source's own type.
Speed: :meth:`emit` runs once per event; it is a plain method on slotted attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cdc.events import ChangeEvent
from cdc.schema import SchemaVersion

__all__ = ["TxAssembler"]


class TxAssembler:
    """The events of one source's stream, gathered by transaction into batches."""

    __slots__ = (
        "prefix",
        "batch_events",
        "batch_bytes",
        "out",
        "cost",
        "in_tx",
        "tx_id",
        "seq",
        "emit_ms",
        "sources",
        "_boundary",
        "_clock",
    )

    def __init__(
        self,
        prefix: str,
        *,
        batch_events: int,
        batch_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: the id prefix (``pg``, ``mysql``)
        self.prefix = prefix
        self.batch_events = batch_events
        self.batch_bytes = batch_bytes
        #: events gathered and not handed over yet
        self.out: list[ChangeEvent] = []
        #: the estimated memory of ``out`` (the decoder adds to it)
        self.cost = 0
        self.in_tx = False
        self.tx_id = ""
        self.seq = 0
        #: when the transaction's events were made (ms): their ``ts_ms``
        self.emit_ms = 0
        #: the transaction's ``source`` blocks, one per table, built by the decoder
        self.sources: dict[Any, dict[str, Any]] = {}
        self._boundary = 0  # events in out up to the last commit (0: none since take)
        self._clock = clock

    def reset(self) -> None:
        """Forget everything gathered (a new stream starts)."""
        self.out = []
        self.cost = 0
        self.in_tx = False
        self._boundary = 0

    # -- transactions ---------------------------------------------------------------------------

    def begin(self, tx_id: str) -> None:
        """A transaction starts; its events get ids ``<prefix>:<tx_id>:<seq>``."""
        self.in_tx = True
        self.tx_id = tx_id
        self.seq = 0
        self.sources = {}
        self.emit_ms = int(self._clock() * 1000)

    def commit(self) -> None:
        """The transaction ended: its last event (if it had any here) is marked ``last``."""
        out = self.out
        if out:
            last = out[-1]
            t = last.transaction
            if t is not None and t[0] == self.tx_id:
                last.transaction = (t[0], t[1], True)
        self.in_tx = False
        self._boundary = len(out)

    # -- events ---------------------------------------------------------------------------------

    def emit(
        self,
        op: str,
        source: dict[str, Any],
        version: SchemaVersion,
        key: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        unchanged: list[str] | None = None,
        key_change: dict[str, Any] | None = None,
    ) -> bool:
        """One event of the open transaction; True when a batch is due (:meth:`full`)."""
        seq = self.seq
        self.seq = seq + 1
        tx = self.tx_id
        out = self.out
        out.append(
            ChangeEvent(
                f"{self.prefix}:{tx}:{seq}",
                op,
                self.emit_ms,
                source,
                (tx, seq, False),
                version,
                key,
                before,
                after,
                unchanged,
                key_change,
            )
        )
        # full(), written out: this runs once per event
        return len(out) >= self.batch_events or (self.cost >= self.batch_bytes and len(out) > 1)

    def update(
        self,
        source: dict[str, Any],
        version: SchemaVersion,
        before: dict[str, Any] | None,
        old_key: dict[str, Any] | None,
        after: dict[str, Any],
        new_key: dict[str, Any] | None,
        unchanged: list[str] | None = None,
    ) -> bool:
        """An updated row: a ``u`` event, or ``d`` + ``c`` linked by ``key_change`` when the
        key changed (``old_key`` None: the old key is not known, so it did not change). True
        when a batch is due."""
        if old_key is not None and new_key is not None and old_key != new_key:
            self.emit("d", source, version, old_key, before, None, None, {"to": new_key})
            return self.emit("c", source, version, new_key, None, after, unchanged, {"from": old_key})
        return self.emit("u", source, version, new_key, before, after, unchanged)

    # -- batches --------------------------------------------------------------------------------

    def full(self) -> bool:
        """A batch is due: enough events, or enough bytes (inside a transaction: and more
        than the one event a cut keeps back)."""
        out = self.out
        return len(out) >= self.batch_events or (
            self.cost >= self.batch_bytes and (len(out) > 1 or not self.in_tx)
        )

    def take(self) -> tuple[list[ChangeEvent], bool, int]:
        """Hand over ``(events, whole, cost)``: ``whole`` when the events end at a transaction
        end (the batch may carry the position reached there). Outside a transaction that is
        everything; inside one, the events up to the last commit when there are any, else all
        but the newest (kept back: only the transaction's end tells whether it is the last)."""
        out = self.out
        if not self.in_tx:
            events, keep, whole = out, [], True
        elif self._boundary:
            b = self._boundary
            events, keep, whole = out[:b], out[b:], True
        else:
            events, keep, whole = out[:-1], out[-1:], False
        self._boundary = 0
        self.out = keep
        cost = self.cost
        self.cost = 0
        return events, whole, cost
