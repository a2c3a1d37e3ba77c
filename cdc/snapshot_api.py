"""What a source provides for snapshots: a reader of keyset chunks (see :mod:`cdc.snapshot`).

A source that supports snapshots returns a :class:`SnapshotReader` from
``Source.snapshot_reader()``. The core calls it on its snapshot worker thread, one chunk at a
time and in key order, and decides itself where each chunk's rows go in the stream:

* a :class:`Chunk` holds the rows of one consistent read (``SELECT ... WHERE key > cursor
  ORDER BY key LIMIT n``), already converted to their JSON form by the same converters the
  stream uses, so a row read here and the same row streamed are equal value for value;
* ``high`` is a source position: every transaction the read saw is in the stream before it.
  The core emits the chunk's rows once the stream has delivered up to ``high``;
* :meth:`Chunk.visible` tells, for a streamed event, whether the read already saw its
  transaction. A streamed change the read did *not* see, and that the stream delivers before
  the chunk is emitted, is newer than the read: its key is dropped from the chunk. Answering
  ``False`` for a transaction the read did see is always safe (the stream then carries the
  row); answering ``True`` for one it did not see is not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdc.events import ChangeEvent
    from cdc.schema import TableSchema


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table as a snapshot sees it before reading."""

    name: str
    #: key columns in key order (the columns events carry in ``key``); empty: a keyless table,
    #: read in one piece (see docs/snapshots.md)
    key: tuple[str, ...]
    #: the server's estimate of the row count (PostgreSQL ``reltuples``, InnoDB statistics)
    rows_estimated: int


class Chunk(ABC):
    """The rows of one consistent read of a table, in key order."""

    __slots__ = ("table", "schema", "rows", "cursor", "done", "high", "read_token")

    def __init__(
        self,
        table: str,
        schema: TableSchema,
        rows: list[tuple[dict[str, Any] | None, dict[str, Any]]],
        cursor: Any,
        done: bool,
        high: Any,
        read_token: str,
    ) -> None:
        self.table = table
        #: the table as the read saw it (columns.exclude applied), resolved to a version by
        #: the core when the rows are emitted
        self.schema = schema
        #: ``(key, after)`` per row, in key order; ``key`` is None for a keyless table
        self.rows = rows
        #: JSON-serialisable; passed back to ``read_chunk`` to read the next chunk (the key of
        #: the last row, in whatever form the source's SQL needs)
        self.cursor = cursor
        #: True when no row follows this chunk (a short read)
        self.done = done
        #: the source position the stream must reach before the rows are emitted
        self.high = high
        #: names this read (the same read token means the same data); part of the events' ids
        self.read_token = read_token

    @abstractmethod
    def visible(self, event: ChangeEvent) -> bool:
        """Whether this read already saw the transaction of ``event`` (a streamed event of
        this chunk's table)."""

    @abstractmethod
    def source_block(self, position: Any, snapshot_id: str) -> dict[str, Any]:
        """The ``source`` block of the chunk's ``r`` events, emitted at stream ``position``:
        ``snapshot: true`` and ``snapshot_id`` set, ``tx`` null."""

    @abstractmethod
    def at(self, position: Any) -> tuple[int, ...]:
        """The schema registry's point (see :mod:`cdc.schema`) for rows emitted at
        ``position``."""


class SnapshotReader(ABC):
    """Reads chunks for the core. Runs on the snapshot worker thread, with its own
    connection(s); works whether or not the source was opened (``initial_only`` never opens
    the stream)."""

    @abstractmethod
    def describe(self, table: str) -> TableInfo:
        """Facts about ``table`` before it is read. Raises :class:`cdc.errors.FatalError`
        (kind ``snapshot_refused``) for a table that cannot be snapshotted, with the reason and
        what to do, and :class:`cdc.errors.RetriableError` for a connection problem."""

    @abstractmethod
    def read_chunk(self, table: str, cursor: Any, limit: int | None) -> Chunk:
        """Read up to ``limit`` rows after ``cursor`` (``None``: from the start) in key order,
        in one consistent read. ``limit`` None (keyless tables): the whole table.

        A partial snapshot calls it with one more keyword, ``where=`` (a SQL condition that
        :meth:`check_where` accepted): only rows matching it are read, with the same
        ordering. Readers that take no condition are never called with it."""

    def check_where(self, table: str, where: str) -> None:
        """Check a partial snapshot's condition before the snapshot starts, by asking the
        database (e.g. ``EXPLAIN`` of the read in a read-only transaction); changes nothing.
        Raises :class:`cdc.errors.FatalSourceError` (kind ``snapshot_refused``) with the database's
        message for a condition it rejects. The default refuses every condition."""
        from cdc.errors import FatalSourceError, Kind

        raise FatalSourceError(
            f"this source cannot take a partial snapshot (where) of {table}",
            kind=Kind.SNAPSHOT_REFUSED, table=table,
        )

    @abstractmethod
    def close(self) -> None:
        """Release connections; must not raise."""
