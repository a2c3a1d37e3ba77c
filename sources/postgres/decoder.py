"""pgoutput messages in, change events and batches out (pure: no socket, no catalog, no store).

Theory of operation. :class:`PgDecoder` is fed the messages :func:`.pgoutput.decode` returns, in
stream order (:meth:`PgDecoder.feed`), and gathers :class:`~cdc.events.ChangeEvent` objects
until a batch is due; :meth:`PgDecoder.cut` hands them over as a :class:`~cdc.plugin.Batch`.
What it needs from the outside comes in as callables, so a test drives it with captured or
hand-built messages and dicts: ``facts(msg)`` gives the catalog facts of a Relation
(:class:`.relations.RelationFacts`; the source reads them on its catalog connection),
``resolve(schema, at)`` gives the schema version (the source's schema registry), and
``record_rename(listed, name)`` keeps a rename for the next start.

*Relations.* A Relation message of a listed table (followed by its OID, so through renames; by
name for a table created after the start) is described by :mod:`.relations` and compiled once;
other tables map to ``None`` and their changes are skipped. A listed table described under
another name logs ``table_renamed`` (once per name) and its events use the streamed name. A
change for a relation never described is a protocol error.

*Transactions.* pgoutput sends whole committed transactions in commit order. Ids, the
``transaction`` triple, the last-event mark, key changes and batch cutting are the shared
:class:`cdc.assembly.TxAssembler`'s (``self.tx``); here a transaction's id is its commit LSN, so
events get ``pg:<commit LSN>:<seq>``. The schema version of a description is resolved at
``(commit LSN, seq of the next event)``.

*Rows.* An Insert converts with the table's generated ``fast_row``. An Update or Delete may carry
unchanged TOASTed values (listed in ``unchanged`` unless the old tuple has them) and an old
tuple: the whole row under FULL (``'O'``), the key columns otherwise (``'K'``, only when the key
changed or on delete). An update that changes the key becomes a delete of the old key and a
create of the new one, linked by ``key_change``. A Truncate gives one ``t`` event per captured
relation it names.

*Batches.* A batch is due after :data:`BATCH_EVENTS` events or about :data:`BATCH_BYTES` of
them. :meth:`cut` ends it at the last Commit when there is one, with that Commit's end LSN as
the position (confirming it makes PostgreSQL skip the transaction after a restart). Only inside
one transaction larger than a batch are events handed over without a position, and then the
newest one is kept back (see :meth:`cdc.assembly.TxAssembler.take`).

Speed: :meth:`feed` runs once per message. It tests the message class by identity, changes go
first, and rows convert through the generated functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from cdc import names
from cdc.assembly import TxAssembler
from cdc.errors import ProtocolError
from cdc.plugin import Batch
from cdc.schema import SchemaVersion, TableSchema

from .lsn import Lsn
from .pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
)
from .protocol import pg_time_to_unix
from .relations import RelationFacts, TableShape, describe_relation

#: events per batch handed to the pipeline
BATCH_EVENTS = 500
#: a batch is also handed over once its events hold about this many bytes (big values)
BATCH_BYTES = 4 * 1024 * 1024


class StreamRelation:
    """A captured relation as the stream describes it: names, schema version, row functions."""

    __slots__ = (
        "relid",
        "name",
        "schema_name",
        "table_name",
        "version",
        "key_names",
        "fast_row",
        "key",
        "row",
        "key_row",
        "shape",
    )

    def __init__(
        self,
        relid: int,
        schema_name: str,
        table_name: str,
        version: SchemaVersion,
        shape: TableShape,
    ) -> None:
        self.relid = relid
        self.schema_name = schema_name
        self.table_name = table_name
        self.name = names.join(schema_name, table_name)
        self.version = version
        self.shape = shape
        self.key_names = shape.key_names
        # bound once: the hot paths call these per row
        self.fast_row = shape.fast_row
        self.key = shape.key
        self.row = shape.row
        self.key_row = shape.key_row


class PgDecoder:
    """Turns pgoutput messages into events and batches; see the module docstring."""

    def __init__(
        self,
        *,
        pipeline: str,
        database: str,
        tables: Collection[str],
        listed: Mapping[int, str],
        facts: Callable[[Relation], RelationFacts],
        resolve: Callable[[TableSchema, Sequence[int]], SchemaVersion],
        log: Any,
        record_rename: Callable[[str, str], None] | None = None,
        exclude: Mapping[str, Collection[str]] | None = None,
        bigint_as_string: bool = False,
        position: Lsn | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pipeline = pipeline
        self.database = database
        #: the listed table names (a relation of another name is not captured)
        self.tables = set(tables)
        #: relation OID -> listed name: a table is followed by its OID, through renames
        self.listed = dict(listed)
        self.exclude = exclude or {}
        self.bigint_as_string = bigint_as_string
        self._facts = facts
        self._resolve = resolve
        self._record_rename = record_rename
        self._log = log
        self._clock = clock
        #: relid -> compiled relation, or None for a relation of the publication not captured
        self.relations: dict[int, StreamRelation | None] = {}
        #: end LSN of the last Commit (the position a batch ending there carries)
        self.position = position if position is not None else Lsn(0)
        #: ids, transactions and batches (written once for every source)
        self.tx = TxAssembler("pg", batch_events=BATCH_EVENTS, batch_bytes=BATCH_BYTES, clock=clock)
        self._tx_xid = ""
        self._tx_lsn = 0
        self._tx_ts_ms = 0
        self._tx_commit_unix = 0.0

    # -- feeding ------------------------------------------------------------------------------

    @property
    def tx_lsn(self) -> int:
        """The commit LSN of the transaction being decoded (0 before the first)."""
        return self._tx_lsn

    @property
    def in_tx(self) -> bool:
        """A transaction is open (its Commit not decoded yet)."""
        return self.tx.in_tx

    @property
    def pending(self) -> int:
        """Events gathered and not handed over yet."""
        return len(self.tx.out)

    def feed(self, msg: Any, nbytes: int = 0) -> Batch | None:
        """Take one message (``nbytes``: its frame's size, for the batch's memory estimate);
        return a batch when one is due. Raises :class:`ProtocolError` for a change of a
        relation never described, and whatever ``facts`` and ``resolve`` raise."""
        cls = msg.__class__
        tx = self.tx
        if cls is Insert or cls is Update or cls is Delete:
            rel = self.relations.get(msg.relid)
            if rel is None:
                if msg.relid not in self.relations:
                    raise ProtocolError(
                        f"pgoutput sent a change for relation {msg.relid} before describing it",
                        position=str(Lsn(self._tx_lsn)),
                    )
                return None  # a relation of the publication we do not capture
            tx.cost += nbytes + 800  # what an event's Python objects take, roughly
            source = tx.sources.get(rel.relid) or self._source_block(rel)
            if cls is Insert:
                # the hottest path: an Insert never carries UNCHANGED
                after = rel.fast_row(msg.new)
                due = tx.emit("c", source, rel.version, rel.key(after), None, after)
            elif cls is Update:
                due = self._on_update(rel, source, msg)
            else:
                due = self._on_delete(rel, source, msg)
            return self.cut() if due else None
        if cls is Begin:
            self._tx_lsn = msg.final_lsn
            self._tx_xid = str(msg.xid)
            self._tx_commit_unix = pg_time_to_unix(msg.commit_ts)
            self._tx_ts_ms = int(self._tx_commit_unix * 1000)
            tx.begin(str(Lsn(msg.final_lsn)))
            return None
        if cls is Commit:
            tx.commit()
            self.position = Lsn(msg.end_lsn)
            if tx.full():
                return self.cut()
            return None
        if cls is Relation:
            self._on_relation(msg)
            return None
        if cls is Truncate:
            for relid in msg.relids:
                rel = self.relations.get(relid)
                if rel is not None:
                    source = tx.sources.get(rel.relid) or self._source_block(rel)
                    tx.emit("t", source, rel.version, None, None, None)
            return None
        if cls is Type or cls is Origin or cls is Message:
            return None
        return None

    def cut(self) -> Batch:
        """Hand over the events gathered so far, ending on a transaction boundary whenever one
        exists (see the module docstring)."""
        events, whole, cost = self.tx.take()
        return Batch(events, self.position if whole else None, self._tx_commit_unix or None, cost + 64)

    # -- events -------------------------------------------------------------------------------

    def _source_block(self, rel: StreamRelation) -> dict[str, Any]:
        block = self.tx.sources[rel.relid] = {
            "connector": "postgres",
            "pipeline": self.pipeline,
            "db": self.database,
            "schema": rel.schema_name,
            "table": rel.table_name,
            "ts_ms": self._tx_ts_ms,
            "tx": self._tx_xid,
            "lsn": self.tx.tx_id,
            "snapshot": False,
        }
        return block

    def _on_update(self, rel: StreamRelation, source: dict[str, Any], msg: Update) -> bool:
        after, unchanged = rel.row(msg.new)
        before: dict[str, Any] | None = None
        old_key: dict[str, Any] | None = None
        old = msg.old
        if msg.old_kind == "O":
            assert old is not None  # pgoutput sends a tuple with its kind
            before, _ = rel.row(old)
            old_key = rel.key(before)
        elif msg.old_kind == "K":
            assert old is not None
            before = rel.key_row(old)
            old_key = before if rel.key_names else None
        if unchanged and before is not None:
            still = []
            for name in unchanged:
                if name in before:
                    after[name] = before[name]
                else:
                    still.append(name)
            unchanged = still or None
        return self.tx.update(source, rel.version, before, old_key, after, rel.key(after), unchanged)

    def _on_delete(self, rel: StreamRelation, source: dict[str, Any], msg: Delete) -> bool:
        if msg.old_kind == "O":
            before, _ = rel.row(msg.old)
        elif msg.old_kind == "K":
            before = rel.key_row(msg.old)
        else:
            before = None
        key = rel.key(before) if before is not None else None
        return self.tx.emit("d", source, rel.version, key, before, None)

    # -- relations ------------------------------------------------------------------------------

    def _on_relation(self, msg: Relation) -> None:
        name = names.join(msg.namespace, msg.name)
        listed = self.listed.get(msg.relid, name if name in self.tables else None)
        if listed is None:
            self.relations[msg.relid] = None
            return
        if listed != name:
            self._on_renamed(msg, listed, name)
        shape = describe_relation(
            msg,
            self._facts(msg),
            self.exclude,
            listed=listed,
            bigint_as_string=self.bigint_as_string,
        )
        if shape.key_unknown is not None:
            now, absent = shape.key_unknown
            self._log.warning(
                "key_unknown",
                table=name,
                lsn=str(Lsn(self._tx_lsn)),
                message=f"the primary key of {name} is ({', '.join(now)}) now, but "
                f"{', '.join(absent)} did not exist when these rows were written "
                "(REPLICA IDENTITY FULL carries no key): its events until the next schema "
                "version have key null",
            )
        version = self._resolve(shape.schema, (self._tx_lsn, self.tx.seq))
        self.relations[msg.relid] = StreamRelation(
            msg.relid, msg.namespace, msg.name, version, shape
        )

    def _on_renamed(self, msg: Relation, listed: str, name: str) -> None:
        """A listed table (known by its OID) is described under another name: it was renamed
        after the pipeline started (the stream is past the rename), or before this start while
        the stream is still behind it (the file names the new name, the stream the old one).
        Either way its changes are delivered, under the name the stream gives them."""
        previous = self.relations.get(msg.relid)
        if previous is not None and previous.name == name:
            return  # already said for this name
        self._log.warning(
            "table_renamed",
            listed=listed,
            streamed=name,
            lsn=str(Lsn(self._tx_lsn)),
            message=f"the listed table {listed} is called {name} at this point of the stream; "
            f"its events, schema versions and topics use {name} from here on. If it was renamed, "
            f"list {name} in `tables` before the next restart",
        )
        if name not in self.tables and self._record_rename is not None:
            self._record_rename(listed, name)
