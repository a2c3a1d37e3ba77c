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

*Transactions.* pgoutput sends whole committed transactions in commit order. Events get the id
``pg:<commit LSN>:<seq>`` and ``transaction`` ``(commit LSN, seq, last)``. The last event of a
transaction is only known at Commit, which then marks it ``last``. The schema version of a
description is resolved at ``(commit LSN, seq of the next event)``.

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
newest one is kept back, since only Commit tells whether it is the last.

Speed: :meth:`feed` runs once per message. It tests the message class by identity, changes go
first, the Insert path is written out inline, and rows convert through the generated functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from cdc import names
from cdc.errors import FatalError
from cdc.events import ChangeEvent
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
        self.in_tx = False
        self._tx_id = ""
        self._tx_xid = ""
        self._tx_lsn = 0
        self._tx_ts_ms = 0
        self._tx_commit_unix = 0.0
        self._tx_seq = 0
        self._tx_sources: dict[int, dict[str, Any]] = {}
        self._emit_ms = 0
        self._msg_lsn: int | None = None
        #: events gathered and not handed over yet
        self.out: list[ChangeEvent] = []
        #: events in out up to the last Commit (0: no Commit since the last hand-over)
        self._boundary = 0
        self._out_cost = 0

    # -- feeding ------------------------------------------------------------------------------

    @property
    def tx_lsn(self) -> int:
        """The commit LSN of the transaction being decoded (0 before the first)."""
        return self._tx_lsn

    def feed(self, msg: Any, nbytes: int = 0, lsn: int | None = None) -> Batch | None:
        """Take one message (``nbytes``: its frame's size, for the batch's memory estimate);
        return a batch when one is due. Raises :class:`FatalError` (``protocol``) for a change
        of a relation never described, and whatever ``facts`` and ``resolve`` raise.
        ``lsn``: the message's own WAL position (the XLogData start), kept on its event."""
        self._msg_lsn = lsn
        cls = msg.__class__
        if cls is Insert or cls is Update or cls is Delete:
            rel = self.relations.get(msg.relid)
            if rel is None:
                if msg.relid not in self.relations:
                    raise FatalError(
                        f"pgoutput sent a change for relation {msg.relid} before describing it",
                        kind="protocol",
                    )
                return None  # a relation of the publication we do not capture
            self._out_cost += nbytes + 800  # what an event's Python objects take, roughly
            if cls is Insert:
                # The hottest path: an Insert never carries UNCHANGED, and _emit is inlined.
                after = rel.fast_row(msg.new)
                seq = self._tx_seq
                self._tx_seq = seq + 1
                tx = self._tx_id
                source = self._tx_sources.get(rel.relid) or self._source_block(rel)
                self.out.append(
                    ChangeEvent(
                        f"pg:{tx}:{seq}",
                        "c",
                        self._emit_ms,
                        source,
                        (tx, seq, False),
                        rel.version,
                        rel.key(after),
                        None,
                        after,
                        None,
                        None,
                        lsn,
                    )
                )
            elif cls is Update:
                self._on_update(rel, msg)
            else:
                self._on_delete(rel, msg)
            if len(self.out) >= BATCH_EVENTS or (
                self._out_cost >= BATCH_BYTES and len(self.out) > 1
            ):
                return self.cut()
            return None
        if cls is Begin:
            self.in_tx = True
            self._tx_lsn = msg.final_lsn
            self._tx_id = str(Lsn(msg.final_lsn))
            self._tx_xid = str(msg.xid)
            self._tx_commit_unix = pg_time_to_unix(msg.commit_ts)
            self._tx_ts_ms = int(self._tx_commit_unix * 1000)
            self._tx_seq = 0
            self._tx_sources = {}
            self._emit_ms = int(self._clock() * 1000)
            return None
        if cls is Commit:
            out = self.out
            if out and out[-1].transaction is not None and out[-1].transaction[0] == self._tx_id:
                t = out[-1].transaction
                out[-1].transaction = (t[0], t[1], True)
                if lsn is not None:  # the Commit's own WAL position, beside the change's
                    out[-1].pos = (out[-1].pos, lsn)
            self.in_tx = False
            self.position = Lsn(msg.end_lsn)
            self._boundary = len(out)
            if len(out) >= BATCH_EVENTS or self._out_cost >= BATCH_BYTES:
                return self.cut()
            return None
        if cls is Relation:
            self._on_relation(msg)
            return None
        if cls is Truncate:
            for relid in msg.relids:
                rel = self.relations.get(relid)
                if rel is not None:
                    self._emit(rel, "t", None, None, None)
            return None
        if cls is Type or cls is Origin or cls is Message:
            return None
        return None

    def cut(self) -> Batch:
        """Hand over the events gathered so far, ending on a transaction boundary whenever one
        exists (see the module docstring)."""
        out = self.out
        if not self.in_tx:
            events, keep, position = out, [], self.position
        elif self._boundary:
            b = self._boundary
            events, keep, position = out[:b], out[b:], self.position
        else:
            events, keep, position = out[:-1], out[-1:], None
        self._boundary = 0
        self.out = keep
        cost = self._out_cost
        self._out_cost = 0
        return Batch(events, position, self._tx_commit_unix or None, cost + 64)

    # -- events -------------------------------------------------------------------------------

    def _source_block(self, rel: StreamRelation) -> dict[str, Any]:
        block = self._tx_sources.get(rel.relid)
        if block is None:
            block = self._tx_sources[rel.relid] = {
                "connector": "postgres",
                "pipeline": self.pipeline,
                "db": self.database,
                "schema": rel.schema_name,
                "table": rel.table_name,
                "ts_ms": self._tx_ts_ms,
                "tx": self._tx_xid,
                "lsn": self._tx_id,
                "snapshot": False,
            }
        return block

    def _emit(
        self,
        rel: StreamRelation,
        op: str,
        key: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        unchanged: list[str] | None = None,
        key_change: dict[str, Any] | None = None,
    ) -> None:
        seq = self._tx_seq
        self._tx_seq = seq + 1
        tx = self._tx_id
        self.out.append(
            ChangeEvent(
                f"pg:{tx}:{seq}",
                op,
                self._emit_ms,
                self._source_block(rel),
                (tx, seq, False),
                rel.version,
                key,
                before,
                after,
                unchanged,
                key_change,
                self._msg_lsn,
            )
        )

    def _on_update(self, rel: StreamRelation, msg: Update) -> None:
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
        new_key = rel.key(after)
        if old_key is not None and new_key is not None and old_key != new_key:
            self._emit(rel, "d", old_key, before, None, None, {"to": new_key})
            self._emit(rel, "c", new_key, None, after, unchanged, {"from": old_key})
            return
        self._emit(rel, "u", new_key, before, after, unchanged)

    def _on_delete(self, rel: StreamRelation, msg: Delete) -> None:
        if msg.old_kind == "O":
            before, _ = rel.row(msg.old)
        elif msg.old_kind == "K":
            before = rel.key_row(msg.old)
        else:
            before = None
        key = rel.key(before) if before is not None else None
        self._emit(rel, "d", key, before, None)

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
        version = self._resolve(shape.schema, (self._tx_lsn, self._tx_seq))
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
