"""The MySQL / MariaDB source: the binlog, read as a replica with python-mysql-replication.

Theory of operation.

*Start* (:meth:`MySQLSource.open`, supervisor thread): a regular PyMySQL connection checks the
server (version, ``log_bin``, ``binlog_format=ROW``, ``binlog_row_image=FULL``,
``binlog_row_metadata=FULL``, on MySQL ``binlog_row_value_options=''``), the grants
(REPLICATION SLAVE, REPLICATION CLIENT, SELECT on each table) and the replica server id (the
server's own, or one a replica of another name already uses, is fatal), then works out where to
start: the checkpoint (its binlog file must still exist, else fatal: the changes after it are
gone) or, without state, the server's current position. A :class:`BinLogStreamReader` then
dumps the binlog from there, by binlog coordinates or by GTID (``positions``), registered as a
replica under the name ``cdc:<install>:<pipeline>``, and the first event is read at once so a
refused dump (a purged binlog, a missing grant) fails the start.

*Streaming* (:meth:`read`, reader thread): the reader asks the library only for the events it
needs (row events and TABLE_MAPs of the listed tables, which it filters by name before parsing
them; rotate, GTID, XID and query events for transaction boundaries; heartbeats). It never lets
the library decode rows or query INFORMATION_SCHEMA: each TABLE_MAP's column names, types and
primary key come from the event itself (``binlog_row_metadata=FULL``), so an event keeps the
schema it was written with even when it is read after an ALTER TABLE. A TABLE_MAP is compiled
once per distinct description into a :class:`.rows.RowCodec` (generated decoders) and a schema
version (``ctx.registry.resolve(schema, at)``, ``at = (binlog file index, position of the
transaction's start, seq)``); the row bytes of each row event are then decoded by that codec.
MariaDB JSON columns (LONGTEXT with a ``json_valid`` check) and UUID / INET4 / INET6 columns
(``binary(16)`` / ``binary(4)`` in the binlog) are looked up with one catalog query each per
compiled description; ENUM/SET member names are read from the TABLE_MAP's own bytes and decoded
with the column's charset. A ``columns.exclude`` entry naming a column that the description
lacks, the table lacks now, and this pipeline never saw in it is fatal (a typo).

*Renames*: a QUERY event that renames tables (:mod:`.ddl`) is applied in order: a listed table
is followed (the new name replaces the old in the filter, also in the library's name filter,
whose lists cdc owns and extends; its ``columns.exclude`` goes along), a warning says to update
the pipeline file, and the rename is recorded in the state store's meta. At the next start a
listed old name that no longer exists is fatal, and when the new name is listed, the old name
is an alias for the events before the rename (a replay from an earlier checkpoint), which keep
their old name.

Transactions: a GTID event (MariaDB, MySQL with GTIDs) or a ``BEGIN`` query starts one; an XID
event, a ``COMMIT`` query, or the statement itself for DDL ends it. Events get the id
``mysql:<binlog file>:<position of the transaction's first event>:<seq>``, stable because the
binlog is immutable; the last event of a transaction is only known at its end, so a batch that
must end inside a transaction keeps its last event back. Positions (checkpoints) are handed to
the pipeline only at transaction ends: :class:`.position.BinlogPosition` (the end of the
transaction's last event) or :class:`.position.GtidPosition` (the GTID state including it).

Speed: ``freeze_schema`` makes the library parse a table id's TABLE_MAP once per binlog file
(its map is cleared at every rotation and format description, where ids may start again after
a server restart; ALTER TABLE and the like always get a new id), and the binlog connection's
socket is read in 256 KiB chunks by a reader that knows what it holds, so telling whether
another event is waiting costs no system call while a backlog is being read.

*Idle*: transactions of other tables still end with XID events, so the position keeps moving;
whenever no listed-table event is waiting, the reader hands that position over as a heartbeat
batch (the pipeline checkpoints it every ``heartbeat_s``), so purging old binlogs never breaks
a healthy pipeline. The server sends a heartbeat every second while it has nothing to send; a
connection silent for 30 s is treated as lost (retriable).

*Acknowledgement*: a MySQL server keeps no state for a replica, so :meth:`ack` only records
what was checkpointed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import select
import threading
import time
import uuid
from typing import Any

from cdc import names
from cdc.errors import FatalError, RetriableError
from cdc.events import ChangeEvent
from cdc.log import mask_dsn
from cdc.plugin import Batch, PluginContext, Source
from cdc.schema import Column, SchemaVersion, TableSchema
from cdc.snapshot_api import SnapshotReader

from . import catalog
from .config import MySQLConfig
from .ddl import parse_renames
from .position import (
    BinlogPosition,
    GtidPosition,
    MariaDBGtidState,
    MySQLGtidSet,
    Position,
    file_index,
    parse_position,
)
from .rows import (
    BLOB,
    PLUGIN_SIZES,
    STRING,
    RowCodec,
    UnsupportedColumn,
    columns_from_table_map,
    primary_key_of,
    type_name,
)

#: events per batch handed to the pipeline
BATCH_EVENTS = 2000
#: a batch is also handed over once its rows hold about this many bytes (big values)
BATCH_BYTES = 4 * 1024 * 1024
#: seconds the server waits before sending a heartbeat while it has nothing to send
SERVER_HEARTBEAT_S = 1.0
#: seconds without any packet from the server before the connection counts as lost
DEAD_AFTER_S = 30.0
#: most seconds events wait in the reader while other tables' transactions keep it busy
MAX_HOLD_S = 0.2
#: most seconds between heartbeat positions while other tables' transactions keep it busy
HANDOVER_S = 1.0
#: MariaDB GTID event flag: a standalone statement (DDL), not a transaction with a commit
FL_STANDALONE = 1
#: state-store meta keys (per pipeline): the renames followed, excluded columns seen
META_RENAMES = "mysql.renames"
META_EXCLUDED_SEEN = "mysql.excluded_seen"

_TRUNCATE_RE = re.compile(
    r"^\s*(?:/\*.*?\*/\s*)*TRUNCATE\s+(?:TABLE\s+)?"
    r"((?:`(?:[^`]|``)+`|[^\s.`;]+)(?:\s*\.\s*(?:`(?:[^`]|``)+`|[^\s.`;]+))?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_IDENT_RE = re.compile(r"`((?:[^`]|``)+)`|([^\s.`;]+)")


def parse_truncate(query: str, default_schema: str) -> str | None:
    """``db.table`` named by a ``TRUNCATE [TABLE] [db.]table`` statement, else None."""
    m = _TRUNCATE_RE.match(query)
    if m is None:
        return None
    parts = [(a.replace("``", "`") if a else b) for a, b in _IDENT_RE.findall(m.group(1))]
    if len(parts) == 1:
        return names.join(default_schema, parts[0]) if default_schema else None
    return names.join(parts[0], parts[1])


class _Reconnect(Exception):
    """The library tried to reconnect by itself; cdc resumes from its checkpoint instead."""


_LIB: tuple[Any, Any] | None = None


def _library() -> Any:
    """(pymysql, pymysqlreplication), imported on first use with an install hint."""
    global _LIB
    if _LIB is not None:
        return _LIB
    try:
        import pymysql
        import pymysqlreplication
    except ImportError as exc:
        raise FatalError(
            f"the mysql source needs the packages mysql-replication and PyMySQL ({exc}): "
            "pip install mysql-replication PyMySQL",
            kind="plugin_import",
        ) from exc
    # the library reports what matters to cdc through exceptions; its log lines would only be
    # unstructured noise on stderr
    logging.getLogger("pymysqlreplication").setLevel(logging.CRITICAL)
    _LIB = (pymysql, pymysqlreplication)
    return _LIB


class _SocketReader:
    """The read side of the binlog connection, in place of PyMySQL's ``sock.makefile("rb")``.

    PyMySQL only calls ``read(n)`` (and ``close()``) on it. This one reads the socket in large
    chunks (fewer system calls than the default 8 KiB buffer) and, unlike a BufferedReader,
    says how many bytes it holds, so the reader can tell without a system call whether the
    next event is already here.
    """

    __slots__ = ("_sock", "_buf", "_pos")

    CHUNK = 256 * 1024

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def read(self, n: int) -> bytes:
        pos = self._pos
        buf = self._buf
        end = pos + n
        if end <= len(buf):
            self._pos = end
            return buf[pos:end]
        parts = [buf[pos:]]
        have = len(buf) - pos
        self._buf = b""
        self._pos = 0
        recv = self._sock.recv
        while have < n:
            data = recv(max(self.CHUNK, n - have))
            if not data:
                break  # the server closed the connection: PyMySQL reports a short read
            parts.append(data)
            have += len(data)
        data = b"".join(parts)
        if have > n:
            self._buf = data
            self._pos = n
            return data[:n]
        return data

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def close(self) -> None:
        self._buf = b""
        self._pos = 0


class _Table:
    """A listed table as one TABLE_MAP describes it, compiled for fast row decoding."""

    __slots__ = ("name", "schema_name", "table_name", "codec", "schema", "version")

    def __init__(self, schema_name: str, table_name: str, codec: RowCodec, schema: TableSchema, version: SchemaVersion) -> None:
        self.schema_name = schema_name
        self.table_name = table_name
        self.name = names.join(schema_name, table_name)
        self.codec = codec
        self.schema = schema
        self.version = version


class MySQLSource(Source):
    Config = MySQLConfig
    connector = "mysql"

    def __init__(self, config: MySQLConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.tables = set(config.tables)
        self.dsn_display = mask_dsn(config.dsn)
        self.bigint_as_string = ctx.pipeline.values.bigint == "string"
        self.exclude = {t: frozenset(cols) for t, cols in ctx.pipeline.columns.exclude.items()}
        #: old name -> (listed name it became, binlog order of the rename): events of the old
        #: name before the rename, replayed after a restart, belong to the listed table
        self._aliases: dict[str, tuple[str, tuple[int, int]]] = {}
        #: the library's table / schema filters (the same lists it holds: a rename extends them)
        self._lib_tables: list[str] = []
        self._lib_schemas: list[str] = []
        self._meta_lock = threading.Lock()
        self._excluded_seen: dict[str, set[str]] | None = None
        self._settings: dict[str, Any] | None = None
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self._facts: catalog.ServerFacts | None = None
        self._server_id = 0
        self._tag = ""
        self._gtid_mode = False
        self._stream: Any = None
        self._stream_conn: Any = None
        self._ctl_made = False
        self._handlers: dict[type, Any] = {}
        # stream state (reader thread)
        self._file = ""
        self._file_idx = 0
        self._end_file = ""
        self._end_pos = 0
        self._gtids: MariaDBGtidState | MySQLGtidSet | None = None
        self._dirty = False  # the end position moved since it was last handed over
        self._handed_at = 0.0
        self._last_recv = 0.0
        self._acked: Position | None = None
        self._in_tx = False
        self._tx_explicit = False
        self._tx_file = ""
        self._tx_file_idx = 0
        self._tx_pos = 0
        self._tx_id = ""
        self._tx_gtid: str | None = None
        self._tx_gtid_parts: tuple[Any, ...] | None = None
        self._tx_ts_ms = 0
        self._tx_unix = 0.0
        self._tx_server = 0
        self._tx_seq = 0
        self._tx_sources: dict[str, dict[str, Any]] = {}
        self._commit_unix = 0.0
        self._emit_ms = 0
        self._by_id: dict[int, _Table | None] = {}
        self._compiled: dict[bytes, _Table] = {}
        self._current: dict[str, _Table] = {}
        self._out: list[ChangeEvent] = []
        self._out_cost = 0
        self._out_since = 0.0
        self._status: dict[str, Any] = {}

    # -- connections --------------------------------------------------------------------------

    def _catalog(self) -> Any:
        conn = self._conn
        if conn is None or not conn.open:
            assert self._settings is not None
            conn = self._conn = catalog.connect(self._settings, self.dsn_display)
        return conn

    def _wrapper(self, **settings: Any) -> Any:
        """The library's connection factory: one stream and one control connection, never a
        silent reconnect (the library would resume mid-transaction or from its start GTID)."""
        import pymysql

        if settings.get("db") == "information_schema":
            if self._ctl_made:
                raise _Reconnect("control connection")
            self._ctl_made = True
            return pymysql.connect(**settings)
        if self._stream_conn is not None:
            raise _Reconnect("binlog connection")
        conn = pymysql.connect(**settings)
        conn._rfile = _SocketReader(conn._sock)
        with conn.cursor() as cur:
            # the dump thread may wait for us while the pipeline's buffer is full
            cur.execute("SET SESSION net_write_timeout = 3600, net_read_timeout = 3600")
        self._stream_conn = conn
        return conn

    # -- open -----------------------------------------------------------------------------------

    def open(self, checkpoint: str | None, *, adopt: bool = False) -> Position:
        pymysql, _ = _library()
        if adopt and checkpoint is None:
            raise FatalError(
                f"--adopt {self.ctx.name}: a MySQL/MariaDB server keeps no record of a replica's "
                "position, so there is nothing to continue from; run `cdc drop CONFIG "
                f"{self.ctx.name} --yes` and start again with a new snapshot (snapshot.mode: initial)",
                kind="state_lost",
            )
        self._settings = catalog.connection_settings(self.cfg.dsn)
        try:
            with self._conn_lock:
                conn = self._catalog()
                facts = self._facts = catalog.server_facts(conn)
                catalog.check_server(facts)
                renames = self._recorded_renames()
                self._check_renamed_away(conn, renames)
                catalog.check_grants(conn, facts, sorted(self.tables))
                self._check_server_id(conn, facts)
                self._gtid_mode = self._use_gtid(facts)
                start = self._start_position(conn, facts, checkpoint)
                self._set_aliases(renames, start)
        except pymysql.err.OperationalError as exc:
            if catalog.error_code(exc) in catalog.CLIENT_ERRORS:
                raise RetriableError(
                    f"lost the connection to {self.dsn_display} while starting: {exc}",
                    kind="source_unreachable",
                ) from exc
            raise FatalError(
                f"the server refused a start-up query: {catalog.error_text(exc)}", kind="source_error"
            ) from exc
        except pymysql.err.MySQLError as exc:
            raise FatalError(
                f"the server refused a start-up query: {catalog.error_text(exc)}", kind="source_error"
            ) from exc
        self._open_stream(start)
        return start

    def _check_server_id(self, conn: Any, facts: catalog.ServerFacts) -> None:
        install = self.ctx.store.install_id()
        if self.cfg.server_id is not None:
            self._server_id = self.cfg.server_id
        else:
            digest = hashlib.sha256(f"{install}:{self.ctx.name}".encode()).digest()
            self._server_id = 1_000_000_000 + int.from_bytes(digest[:4], "big") % 3_000_000_000
        self._tag = f"cdc:{install[:8]}:{self.ctx.name}"[:60]
        if self._server_id == facts.server_id:
            raise FatalError(
                f"server_id {self._server_id} is the MySQL server's own server_id: give this "
                "pipeline another `source.server_id` (unique among the server's replicas)",
                kind="server_id_collision",
            )
        hosts = catalog.replica_hosts(conn, facts)
        if hosts is None:
            self.ctx.log.warning(
                "server_id_unchecked",
                server_id=self._server_id,
                reason="the user may not list replicas (MariaDB 10.5+: REPLICATION MASTER ADMIN); "
                "a collision is detected when the other replica reconnects",
            )
            return
        for sid, host in hosts:
            if sid == self._server_id and host[:60] != self._tag:
                raise FatalError(
                    f"server_id {self._server_id} is already used by a replica connected to the "
                    f"server (reported host {host or '(none)'!r}): two replicas with one id "
                    "disconnect each other; give this pipeline another `source.server_id`",
                    kind="server_id_collision",
                )

    def _use_gtid(self, facts: catalog.ServerFacts) -> bool:
        mode = self.cfg.positions
        if facts.mariadb:
            gtid_on = (facts.var("gtid_strict_mode") or "").upper() in ("ON", "1")
        else:
            gtid_on = (facts.var("gtid_mode") or "").upper() == "ON"
        if mode == "gtid":
            if not facts.mariadb and not gtid_on:
                raise FatalError(
                    f"positions: gtid needs gtid_mode=ON on the MySQL server (it is "
                    f"{facts.var('gtid_mode') or 'OFF'}); use positions: file or enable GTIDs",
                    kind="source_config",
                )
            return True
        if mode == "file":
            return False
        return gtid_on

    def _way_back(self) -> str:
        return (
            f"to recover, run `cdc drop CONFIG {self.ctx.name} --yes` and start again with a new "
            "snapshot (snapshot.mode: initial)"
        )

    def _start_position(self, conn: Any, facts: catalog.ServerFacts, checkpoint: str | None) -> Position:
        log = self.ctx.log
        flavor = facts.flavor
        if checkpoint is None:
            file, pos, executed = catalog.master_status(conn, facts)
            start: Position
            if self._gtid_mode:
                gtids = catalog.mariadb_gtid_at(conn, file, pos) if facts.mariadb else executed
                start = GtidPosition(gtids, file, pos, flavor)
            else:
                start = BinlogPosition(file, pos)
            log.info(
                "starting_at_current_position",
                position=str(start),
                note="no saved state: changes committed before this position are not streamed",
            )
            return start
        try:
            saved = parse_position(checkpoint)
        except ValueError as exc:
            raise FatalError(
                f"the saved checkpoint {checkpoint!r} is not a MySQL binlog position ({exc}); was "
                f"the pipeline's source type changed? {self._way_back()}",
                kind="state_invalid",
            ) from exc
        files = catalog.binary_logs(conn)
        if self._gtid_mode and isinstance(saved, BinlogPosition):
            if not facts.mariadb:
                log.warning(
                    "positions_kept",
                    reason="the checkpoint is a binlog file position; MySQL cannot turn it into a "
                    "GTID set, so this pipeline keeps resuming by file position",
                )
                self._gtid_mode = False
            else:
                self._check_file(saved, files)
                gtids = catalog.mariadb_gtid_at(conn, saved.file, saved.pos)
                saved = GtidPosition(gtids, saved.file, saved.pos, flavor)
                log.info("positions_converted", position=str(saved))
        elif not self._gtid_mode and isinstance(saved, GtidPosition):
            saved = saved.binlog
            log.info("positions_converted", position=str(saved))
        if isinstance(saved, BinlogPosition):
            self._check_file(saved, files)
        elif saved.file not in files:
            log.info("resuming_by_gtid", position=str(saved), note="the checkpoint's binlog file is not on this server")
        return saved

    def _check_file(self, saved: BinlogPosition, files: list[str]) -> None:
        if saved.file in files:
            return
        oldest = files[0] if files else "none"
        raise FatalError(
            f"the binlog file {saved.file} of the last checkpoint {saved} was purged from the "
            f"server (oldest binlog now: {oldest}): the changes committed after the checkpoint "
            f"are gone; {self._way_back()}. To prevent it, keep binlogs longer "
            "(binlog_expire_logs_seconds / expire_logs_days) than a pipeline may stay stopped",
            kind="binlog_purged",
            position=str(saved),
        )

    def _open_stream(self, start: Position) -> None:
        pymysql, lib = _library()
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import (
            FormatDescriptionEvent,
            GtidEvent,
            HeartbeatLogEvent,
            MariadbBinLogCheckPointEvent,
            MariadbGtidEvent,
            MariadbGtidListEvent,
            QueryEvent,
            RotateEvent,
            StopEvent,
            XAPrepareEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import (
            DeleteRowsEvent,
            PartialUpdateRowsEvent,
            TableMapEvent,
            UpdateRowsEvent,
            WriteRowsEvent,
        )

        self._handlers = {
            WriteRowsEvent: self._on_write,
            UpdateRowsEvent: self._on_update,
            DeleteRowsEvent: self._on_delete,
            TableMapEvent: self._on_table_map,
            XidEvent: self._on_xid,
            MariadbGtidEvent: self._on_mariadb_gtid,
            GtidEvent: self._on_mysql_gtid,
            QueryEvent: self._on_query,
            RotateEvent: self._on_rotate,
            XAPrepareEvent: self._on_xid,
            PartialUpdateRowsEvent: self._on_partial_update,
        }
        self._handlers[FormatDescriptionEvent] = self._on_format_description
        quiet = (HeartbeatLogEvent, MariadbGtidListEvent, MariadbBinLogCheckPointEvent, StopEvent)
        for cls in quiet:
            self._handlers[cls] = None
        assert self._settings is not None
        captured = [names.split(t) for t in self.tables | set(self._aliases)]
        self._lib_tables[:] = sorted({table for _, table in captured})
        self._lib_schemas[:] = sorted({schema for schema, _ in captured})
        settings = dict(self._settings)
        settings.pop("autocommit", None)
        settings["read_timeout"] = int(max(DEAD_AFTER_S * 2, settings.get("read_timeout") or 0))
        kwargs: dict[str, Any] = {
            "connection_settings": settings,
            "server_id": self._server_id,
            "blocking": True,
            "only_events": list(self._handlers),
            "only_tables": self._lib_tables,
            "only_schemas": self._lib_schemas,
            # parse a table id's TABLE_MAP once per binlog file: a table id names one table
            # definition for the life of its TABLE_SHARE (ALTER TABLE, RENAME, DROP/CREATE get
            # a new id); the map is cleared at every rotation and format description (a new
            # file, possibly written after a server restart, when ids start again)
            "freeze_schema": True,
            "enable_logging": False,
            "slave_heartbeat": SERVER_HEARTBEAT_S,
            "report_slave": (self._tag, "", "", 0),
            "slave_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cdc:{self._tag}")),
            "pymysql_wrapper": self._wrapper,
        }
        assert self._facts is not None
        if isinstance(start, GtidPosition):
            kwargs["auto_position"] = start.gtids
            kwargs["is_mariadb"] = self._facts.mariadb
            self._gtids = MariaDBGtidState.parse(start.gtids) if self._facts.mariadb else MySQLGtidSet.parse(start.gtids)
        else:
            kwargs["log_file"] = start.file
            kwargs["log_pos"] = start.pos
            kwargs["resume_stream"] = True
            self._gtids = None
        self._file = self._end_file = start.file
        self._file_idx = file_index(start.file)
        self._end_pos = start.pos
        self._acked = start
        self._stream_conn = None
        self._ctl_made = False
        self._stream = BinLogStreamReader(**kwargs)
        self._last_recv = self._handed_at = time.monotonic()
        # Start the dump now: a refused dump (purged binlog, missing grant) fails the start.
        deadline = time.monotonic() + 30
        while True:
            ev = self._fetch()
            self._dispatch(ev)
            if ev.__class__ is RotateEvent:
                break
            if time.monotonic() > deadline:
                break
        self.ctx.log.info(
            "binlog_stream_open",
            position=str(start),
            server_id=self._server_id,
            positions="gtid" if self._gtid_mode else "file",
        )

    # -- reading --------------------------------------------------------------------------------

    def read(self, timeout: float) -> Batch | None:
        if self._stream is None:
            raise RetriableError("the binlog connection is closed", kind="source_unreachable")
        deadline = 0.0
        while True:
            if not self._in_tx and not self._pending():
                batch = self._idle_batch()
                if batch is not None:
                    return batch
                now = time.monotonic()
                if not deadline:
                    deadline = now + timeout
                if now - self._last_recv > DEAD_AFTER_S:
                    raise RetriableError(
                        f"no data and no heartbeat from {self.dsn_display} for {DEAD_AFTER_S:.0f} s",
                        kind="source_unreachable",
                    )
                remaining = deadline - now
                if remaining <= 0:
                    return None
                if not self._wait(min(remaining, 0.5)):
                    continue
            ev = self._fetch()
            batch = self._dispatch(ev)
            if batch is not None:
                return batch

    def _pending(self) -> bool:
        """Whether a packet is waiting (read already, or on the socket), without blocking."""
        conn = self._stream_conn
        if conn is None or conn._sock is None:
            return True  # let _fetch report the state of the connection
        reader = conn._rfile
        if reader.__class__ is _SocketReader and reader.buffered():
            return True  # a packet, or the start of one whose rest is on its way
        sock = conn._sock
        pending = getattr(sock, "pending", None)  # TLS: decrypted bytes held by the SSL object
        if pending is not None and pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)  # data, or the server closed the connection (_fetch reports it)

    def _wait(self, seconds: float) -> bool:
        conn = self._stream_conn
        if conn is None or conn._sock is None:
            return True
        try:
            ready, _, _ = select.select([conn._sock], [], [], seconds)
        except (OSError, ValueError):
            return True
        return bool(ready)

    def _fetch(self) -> Any:
        pymysql, _ = _library()
        try:
            ev = self._stream.fetchone()
        except _Reconnect as exc:
            raise RetriableError(
                f"lost the binlog connection to {self.dsn_display}", kind="source_unreachable"
            ) from exc
        except pymysql.err.MySQLError as exc:
            raise self._stream_error(exc) from exc
        except (OSError, EOFError) as exc:
            raise RetriableError(
                f"lost the binlog connection to {self.dsn_display}: {exc}", kind="source_unreachable"
            ) from exc
        if ev is None:
            raise RetriableError(
                f"{self.dsn_display} ended the binlog stream (server shutting down?)",
                kind="source_unreachable",
            )
        self._last_recv = time.monotonic()
        # The library's packet wrapper and its event refer to each other: a cycle that only the
        # cyclic GC frees, so big row images (the whole packet) would pile up between
        # collections. Cut it: the event keeps its packet, the packet forgets the event.
        wrapper = getattr(ev, "packet", None)
        if wrapper is not None and getattr(wrapper, "event", None) is ev:
            wrapper.event = None
        return ev

    def _stream_error(self, exc: Exception) -> Exception:
        code = catalog.error_code(exc)
        text = catalog.error_text(exc)
        position = self._position_now()
        if code == catalog.ER_MASTER_FATAL_READING_BINLOG:
            if "same server_uuid" in text or "same server_id" in text:
                return self._collision(text)
            return FatalError(
                f"the server cannot send the binlog from the last checkpoint {position}: {text}; "
                f"if the binlog was purged, the changes after the checkpoint are gone; {self._way_back()}",
                kind="binlog_purged",
                position=str(position),
            )
        if code == catalog.ER_SLAVE_SAME_ID:
            return self._collision(text)
        if code == catalog.ER_SPECIFIC_ACCESS_DENIED:
            return FatalError(
                f"the server refused to send the binlog: {text}; GRANT REPLICATION SLAVE ON *.* "
                "to the pipeline's user",
                kind="source_grants",
            )
        if code in (catalog.ER_ACCESS_DENIED, catalog.ER_DBACCESS_DENIED):
            return FatalError(f"MySQL refused the login to {self.dsn_display}: {text}", kind="source_auth")
        return RetriableError(
            f"lost the binlog connection to {self.dsn_display}: {text}", kind="source_unreachable"
        )

    def _collision(self, text: str) -> FatalError:
        return FatalError(
            f"another replica connected to the server with this pipeline's server_id "
            f"{self._server_id} ({text}): two replicas with one id disconnect each other; give "
            "this pipeline (or the other replica) another `source.server_id`",
            kind="server_id_collision",
        )

    def _dispatch(self, ev: Any) -> Batch | None:
        handler = self._handlers.get(ev.__class__)
        if handler is None:
            return None
        result: Batch | None = handler(ev)
        return result

    # -- positions --------------------------------------------------------------------------------

    def _position_now(self) -> Position:
        if self._gtid_mode and self._gtids is not None:
            assert self._facts is not None
            return GtidPosition(str(self._gtids), self._end_file, self._end_pos, self._facts.flavor)
        return BinlogPosition(self._end_file, self._end_pos)

    def _flush_out(self) -> Batch:
        """Hand over the events gathered so far. Inside a transaction the last event is kept
        back, since only the transaction's end tells whether it is the last."""
        out = self._out
        position: Position | None
        if self._in_tx:
            keep = out[-1:]
            events = out[:-1]
            position = None
        else:
            keep = []
            events = out
            position = self._position_now()
            self._dirty = False
            self._handed_at = time.monotonic()
        self._out = keep
        self._out_since = time.monotonic() if keep else 0.0
        cost = self._out_cost
        self._out_cost = 0
        return Batch(events, position, self._commit_unix or None, cost + 64)

    def _idle_batch(self) -> Batch | None:
        if self._out:
            return self._flush_out()
        if self._dirty:
            self._dirty = False
            self._handed_at = time.monotonic()
            return Batch([], self._position_now(), None, 64)
        return None

    # -- transactions -----------------------------------------------------------------------------

    def _begin(self, ev: Any) -> None:
        packet = ev.packet
        self._in_tx = True
        self._tx_explicit = False
        self._tx_file = self._file
        self._tx_file_idx = self._file_idx
        self._tx_pos = packet.log_pos - packet.event_size
        self._tx_id = f"{self._file}:{self._tx_pos}"
        self._tx_gtid = None
        self._tx_gtid_parts = None
        self._tx_unix = float(ev.timestamp)
        self._tx_ts_ms = ev.timestamp * 1000
        self._tx_server = packet.server_id
        self._tx_seq = 0
        self._tx_sources = {}
        self._emit_ms = int(time.time() * 1000)

    def _commit(self, end_pos: int) -> Batch | None:
        out = self._out
        if out:
            last = out[-1]
            t = last.transaction
            if t is not None and t[0] == self._tx_id:
                last.transaction = (t[0], t[1], True)
        self._in_tx = False
        self._end_file = self._file
        self._end_pos = end_pos
        parts = self._tx_gtid_parts
        if parts is not None and self._gtids is not None:
            self._gtids.add(*parts)
        self._commit_unix = self._tx_unix
        self._dirty = True
        if out:
            if (
                len(out) >= BATCH_EVENTS
                or self._out_cost >= BATCH_BYTES
                or time.monotonic() - self._out_since >= MAX_HOLD_S
            ):
                return self._flush_out()
        elif time.monotonic() - self._handed_at >= HANDOVER_S:
            return self._idle_batch()
        return None

    def _on_mariadb_gtid(self, ev: Any) -> Batch | None:
        batch = self._implicit_end(ev)
        self._begin(ev)
        self._tx_gtid = ev.gtid
        self._tx_gtid_parts = (ev.domain_id, ev.server_id, ev.gtid_seq_no)
        self._tx_explicit = not (ev.flags & FL_STANDALONE)
        return batch

    def _on_mysql_gtid(self, ev: Any) -> Batch | None:
        batch = self._implicit_end(ev)
        self._begin(ev)
        gtid = ev.gtid
        self._tx_gtid = gtid
        sid, _, gno = gtid.rpartition(":")
        self._tx_gtid_parts = (sid, int(gno))
        original = _original_commit_us(ev)
        if original:
            self._tx_unix = original / 1e6
            self._tx_ts_ms = original // 1000
        return batch

    def _implicit_end(self, ev: Any) -> Batch | None:
        """A new transaction starts while one is open (an XA PREPARE's group, a binlog written
        by a crashed server): the open one ends where the new one starts."""
        if not self._in_tx:
            return None
        self.ctx.log.warning("transaction_without_end", transaction=self._tx_id)
        return self._commit(ev.packet.log_pos - ev.packet.event_size)

    def _on_xid(self, ev: Any) -> Batch | None:
        if not self._in_tx:
            self._end_file = self._file
            self._end_pos = ev.packet.log_pos
            self._dirty = True
            return None
        return self._commit(ev.packet.log_pos)

    def _on_query(self, ev: Any) -> Batch | None:
        query = ev.query
        head = query[:12].lstrip().upper()
        if head.startswith("BEGIN") or head.startswith("XA START") or head.startswith("XA BEGIN"):
            if not self._in_tx:
                self._begin(ev)
            self._tx_explicit = True
            return None
        if head.startswith("COMMIT") or (head.startswith("ROLLBACK") and not re.match(r"\s*ROLLBACK\s+TO\b", query, re.IGNORECASE)):
            if not self._in_tx:
                return None
            return self._commit(ev.packet.log_pos)
        if not self._in_tx:
            self._begin(ev)
        if head.startswith("TRUNCATE"):
            schema = ev.schema.decode("utf-8", errors="replace") if isinstance(ev.schema, bytes) else str(ev.schema or "")
            name = parse_truncate(query, schema)
            if name is not None and (name in self.tables or self._alias_active(name)):
                self._emit_truncate(name)
        elif head.startswith(("RENAME", "ALTER", "/*", "#", "-")):
            schema = ev.schema.decode("utf-8", errors="replace") if isinstance(ev.schema, bytes) else str(ev.schema or "")
            renames = parse_renames(query, schema)
            if renames:
                self._on_renames(renames, ev.packet.log_pos)
        if self._tx_explicit:
            return None  # a statement inside a transaction (SAVEPOINT, ...)
        return self._commit(ev.packet.log_pos)

    def _forget_table_ids(self) -> None:
        """A new binlog file: after a server restart the same table ids name other tables."""
        self._by_id.clear()
        stream = self._stream
        if stream is not None:
            stream.table_map.clear()

    def _on_format_description(self, ev: Any) -> Batch | None:
        self._forget_table_ids()
        return None

    def _on_rotate(self, ev: Any) -> Batch | None:
        self._file = ev.next_binlog
        self._file_idx = file_index(ev.next_binlog)
        self._forget_table_ids()
        if ev.timestamp:
            if not self._in_tx:
                self._end_file = ev.next_binlog
                self._end_pos = ev.position
                self._dirty = True
        elif ev.next_binlog != self._end_file and not self._in_tx:
            # the dump starts in another file than the checkpoint's (GTID mode)
            self._end_file = ev.next_binlog
            self._end_pos = ev.position
        return None

    # -- renames ----------------------------------------------------------------------------------

    def _recorded_renames(self) -> list[dict[str, Any]]:
        """The renames of listed tables this pipeline followed, oldest first (state-store meta)."""
        text = self.ctx.get_meta(META_RENAMES)
        if not text:
            return []
        try:
            found = json.loads(text)
        except ValueError:
            return []
        return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []

    def _check_renamed_away(self, conn: Any, renames: list[dict[str, Any]]) -> None:
        """At start: a listed table that this pipeline saw renamed, and that no longer exists
        under its old name, while the file does not list its new name, is fatal (the file was
        not updated; streaming the old name would silently stream nothing)."""
        for old in sorted(self.tables):
            new = old
            for r in renames:  # follow a chain of renames to the last name
                if r.get("from") == new:
                    new = str(r.get("to"))
            if new == old or new in self.tables:
                continue
            schema, table = names.split(old)
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                    (schema, table),
                )
                exists = cur.fetchone() is not None
            if exists:
                continue  # a table of the old name again: it is what the file lists
            raise FatalError(
                f"the listed table {old} was renamed to {new} while this pipeline was streaming it "
                f"(it followed the rename); {old} no longer exists: list {new} instead of {old} in "
                f"`tables` of pipeline {self.ctx.name} (and move any columns.exclude entry of it), "
                "then start again",
                kind="source_config",
                table=old,
            )

    def _set_aliases(self, renames: list[dict[str, Any]], start: Position) -> None:
        """Old names of listed tables renamed after the start position: the events replayed
        from before the rename still call the table by its old name, and are delivered as they
        were (under that name) instead of being dropped as unlisted."""
        self._aliases = {}
        wanted = set(self.tables)
        for r in reversed(renames):
            old, new = str(r.get("from")), str(r.get("to"))
            try:
                order = (file_index(str(r["file"])), int(r["pos"]))
            except (KeyError, TypeError, ValueError):
                continue
            if new in wanted and old not in self.tables and start.order < order:
                self._aliases[old] = (self._listed_name(new), order)
                wanted.add(old)
        if self._aliases:
            self.ctx.log.info(
                "renamed_tables_replayed",
                tables={old: new for old, (new, _) in self._aliases.items()},
                note="events from before the rename are delivered under the old name, as they were",
            )

    def _alias_active(self, name: str) -> bool:
        alias = self._aliases.get(name)
        if alias is None:
            return False
        return self._at()[:2] < alias[1]

    def _listed_name(self, name: str) -> str:
        alias = self._aliases.get(name)
        return alias[0] if alias is not None else name

    def _excluded_for(self, name: str) -> frozenset[str]:
        excluded = self.exclude.get(name)
        if excluded is None:
            excluded = self.exclude.get(self._listed_name(name), frozenset())
        return excluded

    def _on_renames(self, renames: list[tuple[str, str]], end_pos: int) -> None:
        """A QUERY event renamed tables (applied in order, as the server does). A listed table
        is followed: its new name replaces the old one in the filter; the change is recorded in
        the state store for the next start."""
        for old, new in renames:
            if old in self._aliases:
                # a rename replayed after a restart: the listed name already is the new one
                del self._aliases[old]
                continue
            if old in self.tables:
                self.tables.discard(old)
                self.tables.add(new)
                schema, table = names.split(new)
                if table not in self._lib_tables:
                    self._lib_tables.append(table)
                if schema not in self._lib_schemas:
                    self._lib_schemas.append(schema)
                if old in self.exclude and new not in self.exclude:
                    self.exclude[new] = self.exclude[old]  # what was hidden stays hidden
                    self._copy_seen(old, new)
                self._current.pop(old, None)
                self._record_rename(old, new, end_pos)
                self.ctx.log.warning(
                    "table_renamed",
                    old=old,
                    new=new,
                    position=f"{self._file}:{end_pos}",
                    note=f"cdc follows the table: its events now use the name {new}; update "
                    f"`tables` (and columns.exclude) in the pipeline file to list {new} instead "
                    f"of {old} before the next restart",
                )
            elif new in self.tables:
                self.ctx.log.warning(
                    "listed_table_replaced",
                    table=new,
                    renamed_from=old,
                    position=f"{self._file}:{end_pos}",
                    note=f"the unlisted table {old} now has the listed name {new}; its changes "
                    f"are streamed as {new}'s",
                )

    def _record_rename(self, old: str, new: str, end_pos: int) -> None:
        entry = {"from": old, "to": new, "file": self._file, "pos": end_pos}
        with self._meta_lock:
            renames = self._recorded_renames()
            if entry not in renames:
                renames.append(entry)
                self.ctx.set_meta(META_RENAMES, json.dumps(renames))

    # -- columns.exclude ----------------------------------------------------------------------------

    def _seen(self) -> dict[str, set[str]]:
        if self._excluded_seen is None:
            seen: dict[str, set[str]] = {}
            text = self.ctx.get_meta(META_EXCLUDED_SEEN)
            if text:
                try:
                    loaded = json.loads(text)
                    seen = {str(t): {str(c) for c in cols} for t, cols in loaded.items()}
                except (ValueError, AttributeError, TypeError):
                    seen = {}
            self._excluded_seen = seen
        return self._excluded_seen

    def _copy_seen(self, old: str, new: str) -> None:
        with self._meta_lock:
            seen = self._seen()
            if old in seen:
                seen.setdefault(new, set()).update(seen[old])
                self.ctx.set_meta(META_EXCLUDED_SEEN, json.dumps({t: sorted(c) for t, c in seen.items()}))

    def check_excluded(self, name: str, columns: list[str], also: frozenset[str] = frozenset()) -> None:
        """Called whenever a table description arrives (a new TABLE_MAP, a snapshot read): a
        ``columns.exclude`` entry naming a column the table does not have is fatal (a typo
        would send the column meant to be hidden), unless the pipeline saw the table with that
        column before (it was dropped since: nothing to hide any more, and an older event
        replayed still has it hidden) or the table has it now (``also``: the catalog's
        columns; the description is older than the column)."""
        excluded = self._excluded_for(name)
        if not excluded:
            return
        have = set(columns)
        with self._meta_lock:
            seen = self._seen()
            known = seen.setdefault(self._listed_name(name), set())
            present = (excluded & have) - known
            if present:
                known.update(present)
                self.ctx.set_meta(META_EXCLUDED_SEEN, json.dumps({t: sorted(c) for t, c in seen.items()}))
            missing = sorted(excluded - have - known - also)
        if missing:
            listed = self._listed_name(name)
            raise FatalError(
                f"columns.exclude of pipeline {self.ctx.name} names "
                f"{', '.join(repr(c) for c in missing)} for {listed}, which has no such column "
                f"(its columns: {', '.join(columns)}); the column meant to be hidden would be "
                f"sent: fix the name in columns.exclude.{listed} (or remove it) and start again",
                kind="config",
                table=listed,
            )

    # -- tables -----------------------------------------------------------------------------------

    def _on_table_map(self, ev: Any) -> Batch | None:
        name = names.join(ev.schema, ev.table)
        if name not in self.tables and not self._alias_active(name):
            self._by_id[ev.table_id] = None
            return None
        # the description itself: after the packet's OK byte, the 19-byte event header and the
        # 6-byte table id, up to the checksum (which covers the header, so differs per event)
        body = ev.packet.packet._data[26 : 20 + ev.event_size]
        table = self._compiled.get(body)
        if table is None:
            table = self._compile(ev, name, body)
            if len(self._compiled) > 4096:
                self._compiled.clear()
            self._compiled[body] = table
        elif self._current.get(name) is not table:
            # back to a description seen before in this session: the version in effect here
            assert self.ctx.registry is not None
            table.version = self.ctx.registry.resolve(table.schema, self._at())
        self._current[name] = table
        self._by_id[ev.table_id] = table
        return None

    def _at(self) -> tuple[int, int, int]:
        if self._in_tx:
            return (self._tx_file_idx, self._tx_pos, self._tx_seq)
        return (self._file_idx, self._end_pos, 0)

    def _compile(self, ev: Any, name: str, body: bytes) -> _Table:
        assert self._facts is not None
        json_columns: frozenset[str] = frozenset()
        plugins: dict[str, str] = {}
        if self._facts.mariadb:
            # one catalog look-up per new table description (never per event); an alias (an
            # old name replayed after a rename) is looked up under the name the table has now
            catalog_name = self._listed_name(name)
            if any(
                c.type == BLOB and getattr(c, "length_size", 0) == 4 and getattr(c, "collation_name", None) != "binary"
                for c in ev.columns
            ):
                json_columns = self._describe(catalog_name, catalog.mariadb_json_columns, "JSON")
            if any(
                c.type == STRING
                and getattr(c, "collation_name", None) == "binary"
                and getattr(c, "max_length", 0) in PLUGIN_SIZES.values()
                for c in ev.columns
            ):
                plugins = self._describe(catalog_name, catalog.mariadb_plugin_columns, "UUID/INET")
        try:
            columns = columns_from_table_map(ev, json_columns, plugins, body)
        except UnsupportedColumn as exc:
            raise FatalError(str(exc), kind="source_config", table=name) from exc
        key = primary_key_of(ev)
        excluded = self._excluded_for(name)
        names = [c.name for c in columns]
        if excluded - set(names):
            # an event older than an ADD COLUMN of an excluded column lacks it: not a typo
            now = self._describe(self._listed_name(name), catalog.column_names, "current")
            self.check_excluded(name, names, also=now)
        else:
            self.check_excluded(name, names)
        for k in key:
            if columns[k].name in excluded:
                raise FatalError(
                    f"columns.exclude for {name} names the key column {columns[k].name!r}; key "
                    "columns cannot be excluded",
                    kind="config",
                    table=name,
                )
        try:
            codec = RowCodec(columns, key, excluded, bigint_as_string=self.bigint_as_string)
        except UnsupportedColumn as exc:
            raise FatalError(f"{name}: {exc}", kind="source_config", table=name) from exc
        schema = TableSchema(
            name,
            tuple(Column(c.name, type_name(c), c.nullable) for c in columns if c.name not in excluded),
            tuple(columns[k].name for k in key),
        )
        assert self.ctx.registry is not None
        version = self.ctx.registry.resolve(schema, self._at())
        return _Table(ev.schema, ev.table, codec, schema, version)

    def _describe(self, name: str, lookup: Any, what: str) -> Any:
        pymysql, _ = _library()
        schema, table = names.split(name)
        with self._conn_lock:
            try:
                return lookup(self._catalog(), schema, table)
            except pymysql.err.MySQLError as exc:
                if catalog.error_code(exc) in catalog.CLIENT_ERRORS:
                    self._conn = None
                    raise RetriableError(
                        f"lost the catalog connection while describing {schema}.{table}: {exc}",
                        kind="source_unreachable",
                    ) from exc
                raise FatalError(
                    f"cannot read the {what} columns of {schema}.{table}: {catalog.error_text(exc)}",
                    kind="source_error",
                    table=f"{schema}.{table}",
                ) from exc

    # -- events -----------------------------------------------------------------------------------

    def _source_block(self, table: _Table) -> dict[str, Any]:
        block = self._tx_sources.get(table.name)
        if block is None:
            block = {
                "connector": "mysql",
                "pipeline": self.ctx.name,
                "db": table.schema_name,
                "schema": table.schema_name,
                "table": table.table_name,
                "ts_ms": self._tx_ts_ms,
                "tx": self._tx_gtid or self._tx_id,
                "file": self._tx_file,
                "pos": self._tx_pos,
                "server_id": self._tx_server,
            }
            if self._tx_gtid is not None:
                block["gtid"] = self._tx_gtid
            block["snapshot"] = False
            self._tx_sources[table.name] = block
        return block

    def _rows_of(self, ev: Any) -> tuple[_Table | None, bytes, int, int]:
        table = self._by_id.get(ev.table_id)
        if table is None:
            return None, b"", 0, 0
        wrapper = ev.packet
        packet = wrapper.packet
        start = packet._position
        end = start + ev.event_size - wrapper.read_bytes
        if not self._in_tx:
            self._begin(ev)
        if not self._out:
            self._out_since = time.monotonic()
        self._out_cost += end - start
        return table, packet._data, start, end

    def _on_write(self, ev: Any) -> Batch | None:
        return self._on_rows(ev, "c")

    def _on_delete(self, ev: Any) -> Batch | None:
        return self._on_rows(ev, "d")

    def _on_rows(self, ev: Any, op: str) -> Batch | None:
        """An insert (``c``: the row is ``after``) or delete (``d``: it is ``before``) event."""
        table, data, start, end = self._rows_of(ev)
        if table is None:
            return None
        try:
            rows = table.codec.rows(data, start, end, ev.columns_present_bitmap)
        except (IndexError, ValueError, UnicodeDecodeError) as exc:
            raise self._decode_error(table, exc) from exc
        emit = self._emit
        version = table.version
        if op == "c":
            for row, key in rows:
                emit(table, version, "c", key, None, row)
        else:
            for row, key in rows:
                emit(table, version, "d", key, row, None)
        return self._after_rows()

    def _on_update(self, ev: Any) -> Batch | None:
        table, data, start, end = self._rows_of(ev)
        if table is None:
            return None
        try:
            rows = table.codec.updates(data, start, end, ev.columns_present_bitmap, ev.columns_present_bitmap2)
        except (IndexError, ValueError, UnicodeDecodeError) as exc:
            raise self._decode_error(table, exc) from exc
        emit = self._emit
        version = table.version
        for before, old_key, after, new_key in rows:
            if old_key is not None and new_key is not None and old_key != new_key:
                emit(table, version, "d", old_key, before, None, {"to": new_key})
                emit(table, version, "c", new_key, None, after, {"from": old_key})
            else:
                emit(table, version, "u", new_key, before, after)
        return self._after_rows()

    def _on_partial_update(self, ev: Any) -> Batch | None:
        table = self._by_id.get(ev.table_id)
        if table is None:
            return None
        raise FatalError(
            f"{table.name}: the binlog holds a partial JSON update (binlog_row_value_options="
            "PARTIAL_JSON); cdc needs whole rows: SET GLOBAL binlog_row_value_options = ''",
            kind="source_config",
            table=table.name,
        )

    def _after_rows(self) -> Batch | None:
        if len(self._out) >= BATCH_EVENTS or (self._out_cost >= BATCH_BYTES and len(self._out) > 1):
            return self._flush_out()
        return None

    def _decode_error(self, table: _Table, exc: Exception) -> FatalError:
        return FatalError(
            f"cannot decode a row event of {table.name} at {self._file}:{self._tx_pos}: {exc!r}",
            kind="protocol",
            table=table.name,
        )

    def _emit(
        self,
        table: _Table,
        version: SchemaVersion,
        op: str,
        key: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        key_change: dict[str, Any] | None = None,
    ) -> None:
        seq = self._tx_seq
        self._tx_seq = seq + 1
        tx = self._tx_id
        self._out_cost += 400
        self._out.append(
            ChangeEvent(
                f"mysql:{tx}:{seq}",
                op,
                self._emit_ms,
                self._source_block(table),
                (tx, seq, False),
                version,
                key,
                before,
                after,
                None,
                key_change,
            )
        )

    def _emit_truncate(self, name: str) -> None:
        table = self._current.get(name)
        if table is None:
            table = self._catalog_table(name)
            self._current[name] = table
        if not self._out:
            self._out_since = time.monotonic()
        self._emit(table, table.version, "t", None, None, None)

    def _catalog_table(self, name: str) -> _Table:
        """The current version of a table the stream has not described in this session (a
        TRUNCATE before any row change): the newest recorded, else one from the catalog."""
        assert self.ctx.registry is not None and self._facts is not None
        schema_name, table_name = names.split(name)
        latest = self.ctx.registry.latest(name)
        if latest is None:
            pymysql, _ = _library()
            with self._conn_lock:
                try:
                    conn = self._catalog()
                    json_columns = (
                        catalog.mariadb_json_columns(conn, schema_name, table_name) if self._facts.mariadb else frozenset()
                    )
                    columns, key = catalog.catalog_table(conn, schema_name, table_name, json_columns)
                except pymysql.err.MySQLError as exc:
                    raise RetriableError(f"cannot describe {name} for a TRUNCATE: {exc}", kind="source_error") from exc
            excluded = self._excluded_for(name)
            if columns:
                self.check_excluded(name, [n for n, _, _ in columns])
            schema = TableSchema(
                name,
                tuple(Column(n, t, nullable) for n, t, nullable in columns if n not in excluded),
                tuple(key),
            )
            latest = self.ctx.registry.resolve(schema, self._at())
        schema = TableSchema(latest.name, latest.columns, latest.key)
        codec = RowCodec([], [])
        return _Table(schema_name, table_name, codec, schema, latest)

    # -- snapshots --------------------------------------------------------------------------------

    def snapshot_reader(self) -> SnapshotReader:
        """A :class:`.snapshot.MySQLSnapshotReader` on a connection of its own (works whether
        or not :meth:`open` ran)."""
        from .snapshot import MySQLSnapshotReader

        return MySQLSnapshotReader(self)

    def position_reached(self, position: Any, high: Any) -> bool:
        """Positions of both kinds (file, GTID) and a chunk's high watermark (a binlog
        position) compare by where they stand in the binlog: (file index, offset)."""
        if position is None or high is None:
            return False
        return bool(position.order >= high.order)

    # -- acknowledgement, status ------------------------------------------------------------------

    def ack(self, position: Any) -> None:
        self._acked = position

    def serialize_position(self, position: Any) -> str:
        return str(position)

    def poll(self) -> None:
        if self._facts is None or self._settings is None:
            return
        try:
            with self._conn_lock:
                conn = self._catalog()
                file, pos, _ = catalog.master_status(conn, self._facts)
                files = catalog.binary_logs(conn)
        except Exception:
            return
        self._status = {
            "server_id": self._server_id,
            "positions": "gtid" if self._gtid_mode else "file",
            "server_position": f"{file}:{pos}",
            "read_position": f"{self._end_file}:{self._end_pos}",
            "binlog_files": len(files),
            "oldest_binlog": files[0] if files else None,
        }

    def status(self) -> dict[str, Any]:
        return dict(self._status)

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        stream = self._stream
        self._stream = None
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass
        conn = self._stream_conn
        self._stream_conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        conn = self._conn
        self._conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- cdc drop ---------------------------------------------------------------------------------

    @classmethod
    def describe_drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        return ["nothing at the MySQL server: a binlog reader keeps no state there"]

    @classmethod
    def drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        return ["nothing at the MySQL server: a binlog reader keeps no state there"]


def _original_commit_us(ev: Any) -> int:
    """MySQL 8's original_commit_timestamp (microseconds) from a GTID event's tail, or 0."""
    try:
        wrapper = ev.packet
        if ev.event_size - wrapper.read_bytes < 7:
            return 0
        immediate = int.from_bytes(wrapper.read(7), "little")
        if immediate & (1 << 55):
            if ev.event_size - wrapper.read_bytes < 7:
                return 0
            return int.from_bytes(wrapper.read(7), "little")
        return immediate
    except Exception:
        return 0
