"""Binlog messages -> change events and batches (pure: no socket, no catalog connection).

Theory of operation. :class:`MySQLDecoder` is fed the messages of :mod:`.protocol` in stream
order (:meth:`MySQLDecoder.feed`) and returns a :class:`~cdc.plugin.Batch` whenever one is due;
:meth:`MySQLDecoder.idle_batch` hands over what is left when the I/O layer finds nothing
waiting. What it needs from outside comes through :class:`DecoderHooks`: the schema registry's
``resolve`` / ``latest``, and *catalog facts* the binlog does not carry (MariaDB JSON and
UUID/INET4/INET6 columns, a table's current columns, a table description for a TRUNCATE before
any row change). The source answers them with catalog queries, once per new table description,
never per event; a test answers them from a dict.

Transactions: a GTID event (MariaDB, MySQL with GTIDs) or a ``BEGIN`` query starts one; an XID
event, a ``COMMIT`` query, or the statement itself for DDL ends it. Ids, the last-event mark,
key changes (``d`` + ``c``) and batch cutting are the shared :class:`cdc.assembly.TxAssembler`'s
(``self.tx``); a transaction's id is ``<binlog file>:<position of its first event>``, stable
because the binlog is immutable, so events get ``mysql:<file>:<pos>:<seq>``. Positions are handed
over only at transaction ends: :class:`.position.BinlogPosition` (the end of the transaction's
last event) or :class:`.position.GtidPosition` (the GTID state including it).

Tables: a TABLE_MAP binds a table id to a description until the next ROTATE or
FORMAT_DESCRIPTION (ids may start again after a server restart); a listed table's description
is compiled once per distinct description into a :class:`.rows.RowCodec` and a schema version
(``at = (binlog file index, position of the transaction's start, seq)``). Unlisted tables'
TABLE_MAPs are not read beyond their name, and their row events not at all.

Renames (:mod:`.ddl`): a listed table is followed under its new name (``columns.exclude`` goes
along) and the rename is reported to the hooks, which record it. Old names of listed tables
renamed after the start position (``aliases``) deliver the replayed events from before the
rename under the old name. TRUNCATE of a listed table is a ``t`` event.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

from cdc import names
from cdc.assembly import TxAssembler
from cdc.errors import FatalError, FatalSourceError, Kind, ProtocolError
from cdc.plugin import Batch
from cdc.schema import Column, SchemaVersion, TableSchema

from . import protocol as P
from .ddl import parse_renames
from .position import (
    BinlogPosition,
    GtidPosition,
    MariaDBGtidState,
    MySQLGtidSet,
    Position,
    file_index,
)
from .rows import (
    BLOB,
    PLUGIN_SIZES,
    STRING,
    RowCodec,
    UnsupportedColumn,
    columns_from_description,
    type_name,
)

#: events per batch handed to the pipeline
BATCH_EVENTS = 2000
#: a batch is also handed over once its rows hold about this many bytes (big values)
BATCH_BYTES = 4 * 1024 * 1024
#: what an event's Python objects take, roughly (added to the batch's byte estimate)
EVENT_COST = 800
#: most seconds events wait in the reader while other tables' transactions keep it busy
MAX_HOLD_S = 0.2
#: most seconds between heartbeat positions while other tables' transactions keep it busy
HANDOVER_S = 1.0

_TRUNCATE_RE = re.compile(
    r"^\s*(?:/\*.*?\*/\s*)*TRUNCATE\s+(?:TABLE\s+)?"
    r"((?:`(?:[^`]|``)+`|[^\s.`;]+)(?:\s*\.\s*(?:`(?:[^`]|``)+`|[^\s.`;]+))?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_IDENT_RE = re.compile(r"`((?:[^`]|``)+)`|([^\s.`;]+)")
_ROLLBACK_TO_RE = re.compile(r"\s*ROLLBACK\s+TO\b", re.IGNORECASE)


def parse_truncate(query: str, default_schema: str) -> str | None:
    """``db.table`` named by a ``TRUNCATE [TABLE] [db.]table`` statement, else None."""
    m = _TRUNCATE_RE.match(query)
    if m is None:
        return None
    parts = [(a.replace("``", "`") if a else b) for a, b in _IDENT_RE.findall(m.group(1))]
    if len(parts) == 1:
        return names.join(default_schema, parts[0]) if default_schema else None
    return names.join(parts[0], parts[1])


class DecoderHooks(Protocol):
    """What the decoder asks of its surroundings (the source, or a test)."""

    def resolve(self, schema: TableSchema, at: tuple[int, int, int]) -> SchemaVersion:
        """The schema version of ``schema`` at stream point ``at`` (the schema registry)."""
        ...

    def latest(self, name: str) -> SchemaVersion | None:
        """The newest recorded version of a table, if any."""
        ...

    def json_columns(self, name: str) -> frozenset[str]:
        """MariaDB: the table's JSON columns (LONGTEXT with a json_valid CHECK)."""
        ...

    def plugin_columns(self, name: str) -> dict[str, str]:
        """MariaDB: the table's UUID / INET4 / INET6 columns (name -> type)."""
        ...

    def current_columns(self, name: str) -> frozenset[str]:
        """The table's column names now."""
        ...

    def catalog_table(self, name: str) -> tuple[list[tuple[str, str, bool]], list[str]]:
        """The table now: ``([(column, type, nullable)], key)`` (a TRUNCATE before any row)."""
        ...

    def check_excluded(self, name: str, columns: list[str], also: frozenset[str] = frozenset()) -> None:
        """A ``columns.exclude`` entry naming a column the table lacks is fatal (a typo)."""
        ...

    def renamed(self, old: str, new: str, file: str, end_pos: int, exclude_moved: bool) -> None:
        """A listed table was renamed (and is followed): record it (``exclude_moved``: its
        ``columns.exclude`` entry now applies to the new name too)."""
        ...

    def warning(self, event: str, **fields: Any) -> None:
        """Log a warning."""
        ...


class _Table:
    """A listed table as one TABLE_MAP describes it, compiled for fast row decoding."""

    __slots__ = ("name", "schema_name", "table_name", "codec", "schema", "version")

    def __init__(
        self, schema_name: str, table_name: str, codec: RowCodec, schema: TableSchema, version: SchemaVersion
    ) -> None:
        self.schema_name = schema_name
        self.table_name = table_name
        self.name = names.join(schema_name, table_name)
        self.codec = codec
        self.schema = schema
        self.version = version


class MySQLDecoder:
    """The stream state of one binlog dump (see the module docstring). One thread."""

    def __init__(
        self,
        pipeline: str,
        tables: set[str],
        exclude: dict[str, frozenset[str]],
        hooks: DecoderHooks,
        *,
        mariadb: bool = True,
        bigint_as_string: bool = False,
        flavor: str = "mariadb",
    ) -> None:
        self.pipeline = pipeline
        #: the listed tables (shared with the source: a followed rename changes it)
        self.tables = tables
        self.exclude = exclude
        self.hooks = hooks
        self.mariadb = mariadb
        self.flavor = flavor
        self.bigint_as_string = bigint_as_string
        #: old name -> (listed name it became, binlog order of the rename)
        self.aliases: dict[str, tuple[str, tuple[int, int]]] = {}
        self.gtid_mode = False
        self.file = ""
        self.file_idx = 0
        self.end_file = ""
        self.end_pos = 0
        self.gtids: MariaDBGtidState | MySQLGtidSet | None = None
        self.dirty = False  # the end position moved since it was last handed over
        self.handed_at = 0.0
        #: ids, transactions and batches (written once for every source)
        self.tx = TxAssembler("mysql", batch_events=BATCH_EVENTS, batch_bytes=BATCH_BYTES)
        self._tx_explicit = False
        self._tx_file = ""
        self._tx_file_idx = 0
        self._tx_pos = 0
        self._tx_gtid: str | None = None
        self._tx_gtid_parts: tuple[Any, ...] | None = None
        self._tx_ts_ms = 0
        self._tx_unix = 0.0
        self._tx_server = 0
        #: where the rows event being decoded begins in its binlog file (with the row's index
        #: in it, each event's ``pos``: the Debezium format's ``pos`` and ``row``)
        self._ev_pos = 0
        self._commit_unix = 0.0
        self._by_id: dict[int, _Table | None] = {}
        #: set by the source when a reload added tables (see ``_on_table_map``)
        self.tables_changed = False
        self._compiled: dict[bytes, _Table] = {}
        self._current: dict[str, _Table] = {}
        self._out_since = 0.0  # when the oldest event gathered was made (monotonic)
        self._handlers: dict[type, Any] = {
            P.WriteRows: self._on_write_or_delete,
            P.UpdateRows: self._on_update,
            P.DeleteRows: self._on_write_or_delete,
            P.TableMap: self._on_table_map,
            P.Xid: self._on_xid,
            P.XaPrepare: self._on_xid,
            P.MariaDBGtid: self._on_mariadb_gtid,
            P.MySQLGtid: self._on_mysql_gtid,
            P.Query: self._on_query,
            P.Rotate: self._on_rotate,
            P.FormatDescription: self._on_format_description,
            P.PartialUpdateRows: self._on_partial_update,
            P.Unsupported: self._on_unsupported,
        }

    # -- start ----------------------------------------------------------------------------------

    def start(self, position: Position) -> None:
        """Reading starts at ``position`` (a GTID position: by GTID)."""
        if isinstance(position, GtidPosition):
            self.gtid_mode = True
            self.gtids = (
                MariaDBGtidState.parse(position.gtids) if self.mariadb else MySQLGtidSet.parse(position.gtids)
            )
        else:
            self.gtid_mode = False
            self.gtids = None
        self.file = self.end_file = position.file
        self.file_idx = file_index(position.file)
        self.end_pos = position.pos
        self.tx.reset()
        self._by_id.clear()
        self.handed_at = time.monotonic()

    # -- feeding --------------------------------------------------------------------------------

    def feed(self, ev: P.Event) -> Batch | None:
        """One message in stream order; a batch when one is due."""
        handler = self._handlers.get(ev.__class__)
        if handler is None:
            return None
        result: Batch | None = handler(ev)
        return result

    @property
    def in_tx(self) -> bool:
        """A transaction is open (its end not read yet)."""
        return self.tx.in_tx

    @property
    def pending(self) -> int:
        """Events gathered and not handed over yet."""
        return len(self.tx.out)

    # -- positions --------------------------------------------------------------------------------

    def position(self) -> Position:
        """The position reached (the end of the last whole transaction)."""
        if self.gtid_mode and self.gtids is not None:
            return GtidPosition(str(self.gtids), self.end_file, self.end_pos, self.flavor)
        return BinlogPosition(self.end_file, self.end_pos)

    def _flush_out(self) -> Batch:
        """Hand over the events gathered so far (:meth:`cdc.assembly.TxAssembler.take`); when
        they end at a transaction end, with the position reached."""
        events, whole, cost = self.tx.take()
        position: Position | None = None
        if whole:
            position = self.position()
            if not self.tx.in_tx:
                self.dirty = False
                self.handed_at = time.monotonic()
        self._out_since = time.monotonic() if self.tx.out else 0.0
        return Batch(events, position, self._commit_unix or None, cost + 64)

    def idle_batch(self) -> Batch | None:
        """Nothing is waiting: the events gathered, or the position as a heartbeat batch."""
        if self.tx.out:
            return self._flush_out()
        if self.dirty:
            self.dirty = False
            self.handed_at = time.monotonic()
            return Batch([], self.position(), None, 64)
        return None

    # -- transactions -----------------------------------------------------------------------------

    def _begin(self, h: P.EventHeader) -> None:
        self._tx_explicit = False
        self._tx_file = self.file
        self._tx_file_idx = self.file_idx
        self._tx_pos = h.log_pos - h.event_size
        self.tx.begin(f"{self.file}:{self._tx_pos}")
        self._tx_gtid = None
        self._tx_gtid_parts = None
        self._tx_unix = float(h.timestamp)
        self._tx_ts_ms = h.timestamp * 1000
        self._tx_server = h.server_id

    def _end_tx(self, end_pos: int) -> Batch | None:
        tx = self.tx
        tx.commit()
        self.end_file = self.file
        self.end_pos = end_pos
        parts = self._tx_gtid_parts
        if parts is not None and self.gtids is not None:
            self.gtids.add(*parts)
        self._commit_unix = self._tx_unix
        self.dirty = True
        if tx.out:
            if tx.full() or time.monotonic() - self._out_since >= MAX_HOLD_S:
                return self._flush_out()
        elif time.monotonic() - self.handed_at >= HANDOVER_S:
            return self.idle_batch()
        return None

    def _on_mariadb_gtid(self, ev: P.MariaDBGtid) -> Batch | None:
        batch = self._implicit_end(ev.header)
        self._begin(ev.header)
        self._tx_gtid = ev.gtid
        self._tx_gtid_parts = (ev.domain_id, ev.header.server_id, ev.seq_no)
        self._tx_explicit = not (ev.flags2 & P.FL_STANDALONE)
        return batch

    def _on_mysql_gtid(self, ev: P.MySQLGtid) -> Batch | None:
        batch = self._implicit_end(ev.header)
        self._begin(ev.header)
        self._tx_gtid = ev.gtid
        self._tx_gtid_parts = (ev.sid, ev.gno)
        original = ev.original_commit_us
        if original:
            self._tx_unix = original / 1e6
            self._tx_ts_ms = original // 1000
        return batch

    def _implicit_end(self, h: P.EventHeader) -> Batch | None:
        """A new transaction starts while one is open (an XA PREPARE's group, a binlog written
        by a crashed server): the open one ends where the new one starts."""
        if not self.tx.in_tx:
            return None
        self.hooks.warning("transaction_without_end", transaction=self.tx.tx_id)
        return self._end_tx(h.log_pos - h.event_size)

    def _on_xid(self, ev: P.Xid | P.XaPrepare) -> Batch | None:
        if not self.tx.in_tx:
            self.end_file = self.file
            self.end_pos = ev.header.log_pos
            self.dirty = True
            return None
        return self._end_tx(ev.header.log_pos)

    def _on_query(self, ev: P.Query) -> Batch | None:
        query = ev.query
        head = query[:12].lstrip().upper()
        h = ev.header
        if head.startswith("BEGIN") or head.startswith("XA START") or head.startswith("XA BEGIN"):
            if not self.tx.in_tx:
                self._begin(h)
            self._tx_explicit = True
            return None
        if head.startswith("COMMIT") or (head.startswith("ROLLBACK") and not _ROLLBACK_TO_RE.match(query)):
            if not self.tx.in_tx:
                return None
            return self._end_tx(h.log_pos)
        if not self.tx.in_tx:
            self._begin(h)
        if head.startswith("TRUNCATE"):
            name = parse_truncate(query, ev.schema)
            if name is not None and (name in self.tables or self._alias_active(name)):
                self._ev_pos = h.start
                self._emit_truncate(name)
        elif head.startswith(("RENAME", "ALTER", "/*", "#", "-")):
            renames = parse_renames(query, ev.schema)
            if renames:
                self._on_renames(renames, h.log_pos)
        if self._tx_explicit:
            return None  # a statement inside a transaction (SAVEPOINT, ...)
        return self._end_tx(h.log_pos)

    def _forget_table_ids(self) -> None:
        """A new binlog file: after a server restart the same table ids name other tables."""
        self._by_id.clear()

    def _on_format_description(self, ev: P.FormatDescription) -> Batch | None:
        self._forget_table_ids()
        return None

    def _on_rotate(self, ev: P.Rotate) -> Batch | None:
        self.file = ev.next_file
        self.file_idx = file_index(ev.next_file)
        self._forget_table_ids()
        if ev.header.timestamp:
            if not self.tx.in_tx:
                self.end_file = ev.next_file
                self.end_pos = ev.position
                self.dirty = True
        elif ev.next_file != self.end_file and not self.tx.in_tx:
            # the dump starts in another file than the checkpoint's (GTID mode)
            self.end_file = ev.next_file
            self.end_pos = ev.position
        return None

    def _on_unsupported(self, ev: P.Unsupported) -> Batch | None:
        where = f"{self.file}:{ev.header.start}"
        raise ProtocolError(
            f"the binlog at {where} holds {ev.reason}; cdc cannot stream past it",
            position=where,
        )

    # -- renames ----------------------------------------------------------------------------------

    def _alias_active(self, name: str) -> bool:
        alias = self.aliases.get(name)
        if alias is None:
            return False
        return self._at()[:2] < alias[1]

    def listed_name(self, name: str) -> str:
        alias = self.aliases.get(name)
        return alias[0] if alias is not None else name

    def excluded_for(self, name: str) -> frozenset[str]:
        excluded = self.exclude.get(name)
        if excluded is None:
            excluded = self.exclude.get(self.listed_name(name), frozenset())
        return excluded

    def _on_renames(self, renames: list[tuple[str, str]], end_pos: int) -> None:
        """A QUERY event renamed tables (applied in order, as the server does). A listed table
        is followed: its new name replaces the old one in the filter."""
        for old, new in renames:
            if old in self.aliases:
                # a rename replayed after a restart: the listed name already is the new one
                del self.aliases[old]
                continue
            if old in self.tables:
                self.tables.discard(old)
                self.tables.add(new)
                moved = old in self.exclude and new not in self.exclude
                if moved:
                    self.exclude[new] = self.exclude[old]  # what was hidden stays hidden
                self._current.pop(old, None)
                self.hooks.renamed(old, new, self.file, end_pos, moved)
            elif new in self.tables:
                self.hooks.warning(
                    "listed_table_replaced",
                    table=new,
                    renamed_from=old,
                    position=f"{self.file}:{end_pos}",
                    note=f"the unlisted table {old} now has the listed name {new}; its changes "
                    f"are streamed as {new}'s",
                )

    # -- tables -----------------------------------------------------------------------------------

    def _on_table_map(self, ev: P.TableMap) -> Batch | None:
        table_id = ev.table_id
        if self.tables_changed:
            # a reload added tables: forget the ids bound to "not captured" (reader thread)
            self.tables_changed = False
            self._by_id = {k: v for k, v in self._by_id.items() if v is not None}
        if table_id in self._by_id:
            return None  # bound in this file already: one id, one definition
        name = names.join(ev.schema, ev.table)
        if name not in self.tables and not self._alias_active(name):
            self._by_id[table_id] = None
            return None
        body = ev.body
        table = self._compiled.get(body)
        if table is None:
            table = self._compile(ev, name)
            if len(self._compiled) > 4096:
                self._compiled.clear()
            self._compiled[body] = table
        elif self._current.get(name) is not table:
            # back to a description seen before in this session: the version in effect here
            table.version = self.hooks.resolve(table.schema, self._at())
        self._current[name] = table
        self._by_id[table_id] = table
        return None

    def _at(self) -> tuple[int, int, int]:
        if self.tx.in_tx:
            return (self._tx_file_idx, self._tx_pos, self.tx.seq)
        return (self.file_idx, self.end_pos, 0)

    def _compile(self, ev: P.TableMap, name: str) -> _Table:
        try:
            desc = P.table_map_columns(ev.body, mariadb=self.mariadb)
        except (IndexError, ValueError, UnicodeDecodeError) as exc:
            where = f"{self.file}:{ev.header.start}"
            raise ProtocolError(
                f"malformed TABLE_MAP of {name} at {where}: {exc!r}", position=where, table=name
            ) from exc
        json_columns: frozenset[str] = frozenset()
        plugins: dict[str, str] = {}
        if self.mariadb:
            # one catalog look-up per new table description (never per event); an alias (an
            # old name replayed after a rename) is looked up under the name the table has now
            catalog_name = self.listed_name(name)
            charsets = [(c, _charset(c)) for c in desc.columns]
            if any(c.type == BLOB and c.length_size == 4 and cs != "binary" for c, cs in charsets):
                json_columns = self.hooks.json_columns(catalog_name)
            if any(
                c.type == STRING and cs == "binary" and c.max_length in PLUGIN_SIZES.values()
                for c, cs in charsets
            ):
                plugins = self.hooks.plugin_columns(catalog_name)
        try:
            columns = columns_from_description(desc, json_columns, plugins)
        except UnsupportedColumn as exc:
            raise FatalSourceError(str(exc), kind=Kind.SOURCE_CONFIG, table=name) from exc
        key = list(desc.primary_key)
        excluded = self.excluded_for(name)
        col_names = [c.name for c in columns]
        if excluded - set(col_names):
            # an event older than an ADD COLUMN of an excluded column lacks it: not a typo
            now = self.hooks.current_columns(self.listed_name(name))
            self.hooks.check_excluded(name, col_names, now)
        else:
            self.hooks.check_excluded(name, col_names)
        for k in key:
            if columns[k].name in excluded:
                raise FatalError(
                    f"columns.exclude for {name} names the key column {columns[k].name!r}; key "
                    "columns cannot be excluded",
                    kind=Kind.CONFIG,
                    table=name,
                )
        try:
            codec = RowCodec(columns, key, excluded, bigint_as_string=self.bigint_as_string)
        except UnsupportedColumn as exc:
            raise FatalSourceError(f"{name}: {exc}", kind=Kind.SOURCE_CONFIG, table=name) from exc
        schema = TableSchema(
            name,
            tuple(Column(c.name, type_name(c), c.nullable) for c in columns if c.name not in excluded),
            tuple(columns[k].name for k in key),
        )
        version = self.hooks.resolve(schema, self._at())
        return _Table(ev.schema, ev.table, codec, schema, version)

    # -- events -----------------------------------------------------------------------------------

    def _source_block(self, table: _Table) -> dict[str, Any]:
        block = self.tx.sources.get(table.name)
        if block is None:
            block = {
                "connector": "mysql",
                "pipeline": self.pipeline,
                "db": table.schema_name,
                "schema": table.schema_name,
                "table": table.table_name,
                "ts_ms": self._tx_ts_ms,
                "tx": self._tx_gtid or self.tx.tx_id,
                "file": self._tx_file,
                "pos": self._tx_pos,
                "server_id": self._tx_server,
            }
            if self._tx_gtid is not None:
                block["gtid"] = self._tx_gtid
            block["snapshot"] = False
            self.tx.sources[table.name] = block
        return block

    def _rows_table(self, ev: P.WriteRows | P.DeleteRows | P.UpdateRows) -> _Table | None:
        table = self._by_id.get(ev.table_id)
        if table is None:
            return None
        if not self.tx.in_tx:
            self._begin(ev.header)
        if not self.tx.out:
            self._out_since = time.monotonic()
        self.tx.cost += ev.end - ev.start
        self._ev_pos = ev.header.start
        return table

    def _on_write_or_delete(self, ev: P.WriteRows | P.DeleteRows) -> Batch | None:
        """Inserts and deletes: one whole row image per row (the new row, or the old one)."""
        table = self._rows_table(ev)
        if table is None:
            return None
        try:
            rows = table.codec.rows(ev.data, ev.start, ev.end, ev.present)
        except (IndexError, ValueError, UnicodeDecodeError) as exc:
            raise self._decode_error(table, exc) from exc
        tx = self.tx
        emit = tx.emit
        source = self._source_block(table)
        version = table.version
        tx.cost += EVENT_COST * len(rows)
        at = self._ev_pos
        if isinstance(ev, P.WriteRows):
            for i, (row, key) in enumerate(rows):
                emit("c", source, version, key, None, row, None, None, (at, i))
        else:
            for i, (row, key) in enumerate(rows):
                emit("d", source, version, key, row, None, None, None, (at, i))
        return self._after_rows()

    def _on_update(self, ev: P.UpdateRows) -> Batch | None:
        table = self._rows_table(ev)
        if table is None:
            return None
        try:
            rows = table.codec.updates(ev.data, ev.start, ev.end, ev.present, ev.present_after)
        except (IndexError, ValueError, UnicodeDecodeError) as exc:
            raise self._decode_error(table, exc) from exc
        tx = self.tx
        update = tx.update
        source = self._source_block(table)
        version = table.version
        tx.cost += EVENT_COST * len(rows)
        at = self._ev_pos
        for i, (before, old_key, after, new_key) in enumerate(rows):
            update(source, version, before, old_key, after, new_key, None, (at, i))
        return self._after_rows()

    def _on_partial_update(self, ev: P.PartialUpdateRows) -> Batch | None:
        table = self._by_id.get(ev.table_id)
        if table is None:
            return None
        raise FatalSourceError(
            f"{table.name}: the binlog holds a partial JSON update (binlog_row_value_options="
            "PARTIAL_JSON); cdc needs whole rows: SET GLOBAL binlog_row_value_options = ''",
            kind=Kind.SOURCE_CONFIG,
            table=table.name,
        )

    def _after_rows(self) -> Batch | None:
        if self.tx.full():
            return self._flush_out()
        return None

    def _decode_error(self, table: _Table, exc: Exception) -> FatalError:
        return FatalSourceError(
            f"cannot decode a row event of {table.name} at {self.file}:{self._tx_pos}: {exc!r}",
            kind=Kind.PROTOCOL,
            table=table.name,
        )

    def _emit_truncate(self, name: str) -> None:
        table = self._current.get(name)
        if table is None:
            table = self._catalog_table(name)
            self._current[name] = table
        tx = self.tx
        if not tx.out:
            self._out_since = time.monotonic()
        tx.cost += EVENT_COST
        tx.emit("t", self._source_block(table), table.version, None, None, None, None, None, (self._ev_pos, 0))

    def _catalog_table(self, name: str) -> _Table:
        """The current version of a table the stream has not described in this session (a
        TRUNCATE before any row change): the newest recorded, else one from the catalog."""
        schema_name, table_name = names.split(name)
        latest = self.hooks.latest(name)
        if latest is None:
            columns, key = self.hooks.catalog_table(name)
            excluded = self.excluded_for(name)
            if columns:
                self.hooks.check_excluded(name, [n for n, _, _ in columns])
            schema = TableSchema(
                name,
                tuple(Column(n, t, nullable) for n, t, nullable in columns if n not in excluded),
                tuple(key),
            )
            latest = self.hooks.resolve(schema, self._at())
        schema = TableSchema(latest.name, latest.columns, latest.key)
        codec = RowCodec([], [])
        return _Table(schema_name, table_name, codec, schema, latest)


def _charset(c: P.ColumnDef) -> str | None:
    from .collations import CHARSET_OF

    return CHARSET_OF.get(c.collation) if c.collation is not None else None
