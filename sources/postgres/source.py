"""The PostgreSQL source: logical replication with pgoutput, over psycopg 3's ``pq`` layer.

Theory of operation.

*Start* (:meth:`PostgresSource.open`, supervisor thread): a regular connection checks the
server (version, ``wal_level``, REPLICATION, UTF8), the tables (existence, SELECT, partitions,
replica identities), then creates or aligns the publication and finds the slot: created when
missing (no state), adopted at its confirmed position when it exists without state, and checked
against the checkpoint when there is one (missing, lost, or ahead of the checkpoint: fatal). A
second connection with ``replication=database`` then runs ``START_REPLICATION ... LOGICAL`` at
the checkpoint and switches to COPY BOTH.

*Streaming* (:meth:`read`, reader thread): non-blocking ``get_copy_data`` until the socket is
drained, ``select`` when it is empty. Each XLogData payload goes to the pure decoder
(:mod:`.pgoutput`). Relation messages are resolved once, here, into a :class:`_Relation`:
types (domains to their base type, arrays, typmods as text) and the key are looked up on the
regular connection, the schema version is resolved by the registry, and a list of per-column
converters is compiled. Rows are then converted with those lists only.

Transactions: pgoutput sends whole committed transactions in commit order. Events get the id
``pg:<commit LSN>:<seq>``; the last event of a transaction is only known at Commit, so a batch
that must end inside a transaction keeps its last event back. The position handed to the
pipeline is the Commit's end LSN: confirming it makes PostgreSQL skip the transaction after a
restart, and resuming from it re-sends every later one.

*Acknowledgement*: :meth:`ack` (dispatcher thread) only records the checkpointed LSN; the reader
thread sends it as the flush position of the next standby status update, so the slot never
confirms what is not durable in the sink. Keepalive requests are answered at once. While idle,
the reader asks the server for a keepalive every ``heartbeat_s`` and hands its WAL position to
the pipeline as a heartbeat batch, so idle tables pin no WAL.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc import names
from cdc.errors import FatalError, RetriableError
from cdc.events import ChangeEvent
from cdc.log import mask_dsn
from cdc.plugin import Batch, PluginContext, Source
from cdc.schema import Column, SchemaVersion, TableSchema

from . import catalog
from .config import PostgresConfig
from .lsn import Lsn
from .pgoutput import (
    UNCHANGED,
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
    decode,
)
from .protocol import Keepalive, parse_copy_data, pg_time_to_unix, standby_status_update
from .values import array_converter, converter_for

#: events per batch handed to the pipeline
BATCH_EVENTS = 500
#: a batch is also handed over once its events hold about this many bytes (big values)
BATCH_BYTES = 4 * 1024 * 1024
#: seconds between standby status updates even when nothing changed
STATUS_INTERVAL_S = 10.0
_W = ord("w")


def _pg_us_to_ms(us: int) -> int:
    return int(pg_time_to_unix(us) * 1000)


def _compile(name: str, args: list[str], body: list[str], env: dict[str, Any]) -> Any:
    """Build one small function from source lines (as dataclasses and attrs do): per-relation
    code with the column names and converters bound in, so converting a row is one call with
    no Python loop and no per-column lookups."""
    params = ", ".join(args + [f"{k}={k}" for k in env])
    src = f"def {name}({params}):\n" + "\n".join(f"    {line}" for line in body)
    namespace: dict[str, Any] = {}
    exec(src, dict(env), namespace)  # noqa: S102 - code built from catalog names via repr()
    return namespace[name]


def _compile_row(columns: list[tuple[int, str, Any]]) -> Any:
    """``row(values) -> dict`` for tuples without unchanged-TOAST markers."""
    env = {f"_c{j}": conv for j, (_, _, conv) in enumerate(columns)}
    items = [
        f"{name!r}: None if (v{j} := values[{i}]) is None else _c{j}(v{j}),"
        for j, (i, name, _) in enumerate(columns)
    ]
    return _compile("row", ["values"], ["return {", *[f"    {it}" for it in items], "}"], env)


def _compile_key(key_names: tuple[str, ...]) -> Any:
    """``key(row) -> dict | None``: the key columns of a converted row, in key order."""
    if not key_names:
        return _compile("key", ["row"], ["return None"], {})
    items = ", ".join(f"{k!r}: get({k!r})" for k in key_names)
    return _compile("key", ["row"], ["get = row.get", f"return {{{items}}}"], {})


class _Relation:
    """A relation as the stream describes it, compiled for fast row conversion."""

    __slots__ = (
        "relid",
        "name",
        "schema_name",
        "table_name",
        "version",
        "columns",
        "key_names",
        "key_indexes",
        "ncols",
        "fast_row",
        "key",
    )

    def __init__(
        self,
        relid: int,
        schema_name: str,
        table_name: str,
        version: SchemaVersion,
        columns: list[tuple[int, str, Any]],
        key_names: tuple[str, ...],
        key_indexes: list[tuple[int, str, Any]],
        ncols: int,
    ) -> None:
        self.relid = relid
        self.schema_name = schema_name
        self.table_name = table_name
        self.name = names.join(schema_name, table_name)
        self.version = version
        self.columns = columns  # (index in tuple, name, converter) of kept columns
        self.key_names = key_names
        self.key_indexes = key_indexes  # (index in tuple, name, converter) of key columns
        self.ncols = ncols
        #: row(values) -> dict, for tuples without UNCHANGED (every Insert)
        self.fast_row = _compile_row(columns)
        #: key(row) -> the key dict, or None for a keyless table
        self.key = _compile_key(key_names)

    def row(self, values: list[Any]) -> tuple[dict[str, Any], list[str] | None]:
        """Convert a tuple that may hold UNCHANGED markers (Update and Delete)."""
        if UNCHANGED not in values:
            return self.fast_row(values), None
        out: dict[str, Any] = {}
        unchanged: list[str] = []
        for i, name, conv in self.columns:
            v = values[i]
            if v is None:
                out[name] = None
            elif v is UNCHANGED:
                unchanged.append(name)
            else:
                out[name] = conv(v)
        return out, unchanged or None

    def key_row(self, values: list[Any]) -> dict[str, Any]:
        """The key columns of an old-key ('K') tuple, which carries only those."""
        out: dict[str, Any] = {}
        for i, name, conv in self.key_indexes:
            v = values[i]
            out[name] = None if v is None or v is UNCHANGED else conv(v)
        return out

    def key_of(self, row: dict[str, Any]) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.key(row)
        return result


class PostgresSource(Source):
    Config = PostgresConfig
    connector = "postgres"

    def __init__(self, config: PostgresConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.slot = config.slot or f"cdc_{ctx.name}"
        self.publication = config.publication or f"cdc_{ctx.name}"
        self.tables = set(config.tables)
        self.dsn_display = mask_dsn(config.dsn)
        self.bigint_as_string = ctx.pipeline.values.bigint == "string"
        self.exclude = {t: set(cols) for t, cols in ctx.pipeline.columns.exclude.items()}
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_lock = threading.Lock()
        self._repl: pq.PGconn | None = None
        self._facts: catalog.ServerFacts | None = None
        # stream state (reader thread)
        self._relations: dict[int, _Relation | None] = {}
        #: relation OID -> listed name: a table is followed by its OID, through renames
        self._listed: dict[int, str] = {}
        self._types: dict[int, catalog.TypeFacts] = {}
        self._typmods: dict[tuple[int, int], str] = {}
        self._received = Lsn(0)  # newest WAL position seen
        self._position = Lsn(0)  # last transaction boundary handed over
        self._acked = Lsn(0)  # set by ack(); read by the reader thread
        self._sent_flush = Lsn(0)
        self._last_status = 0.0
        self._last_heartbeat_request = 0.0
        self._last_heartbeat_position = Lsn(0)
        self._in_tx = False
        self._tx_id = ""
        self._tx_xid = ""
        self._tx_lsn = 0
        self._tx_ts_ms = 0
        self._tx_commit_unix = 0.0
        self._tx_seq = 0
        self._tx_sources: dict[int, dict[str, Any]] = {}
        self._emit_ms = 0
        self._out: list[ChangeEvent] = []
        #: events in _out up to the last Commit (0: no Commit since the last hand-over)
        self._boundary = 0
        self._out_cost = 0
        self._status: dict[str, Any] = {}

    # -- connections --------------------------------------------------------------------------

    def _conninfo(self, **extra: str) -> str:
        try:
            params = conninfo_to_dict(self.cfg.dsn)
        except psycopg.ProgrammingError as exc:
            raise FatalError(f"invalid PostgreSQL DSN {self.dsn_display}: {exc}", kind="config") from exc
        options = params.get("options")
        params["options"] = f"{options} {catalog.SESSION_OPTIONS}" if options else catalog.SESSION_OPTIONS
        params.setdefault("connect_timeout", "10")
        params.setdefault("application_name", f"cdc_{self.ctx.name}")
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", "30")
        params.update(extra)
        return make_conninfo("", **params)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._conninfo(), autocommit=True)
        except psycopg.Error as exc:
            raise catalog.connect_error(exc, "catalog queries", self.dsn_display) from exc

    def _catalog(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._conn = self._connect()
        return conn

    # -- open -----------------------------------------------------------------------------------

    def open(self, checkpoint: str | None, *, adopt: bool = False) -> Lsn:
        log = self.ctx.log
        try:
            with self._conn_lock:
                conn = self._catalog()
                facts = self._facts = catalog.server_facts(conn)
                catalog.check_server(facts)
                listed = catalog.check_tables(conn, self.cfg.tables, self._renames())
                self._listed = {f.oid: f.name for f in listed.values()}
                done = catalog.ensure_publication(
                    conn, self.publication, self.cfg.tables, self.ctx.name, facts.version
                )
                log.info("publication", publication=self.publication, action=done)
                start = self._prepare_slot(conn, checkpoint, adopt)
        except psycopg.OperationalError as exc:
            raise RetriableError(
                f"lost the connection to {self.dsn_display} while starting: {exc}",
                kind="source_unreachable",
            ) from exc
        except psycopg.Error as exc:
            raise FatalError(
                f"PostgreSQL refused a start-up query: {str(exc).strip()}", kind="source_error"
            ) from exc
        self._start_replication(start)
        self._position = start
        self._received = start
        self._acked = start
        self._sent_flush = start
        self._last_heartbeat_position = start
        self.poll()
        return start

    def _prepare_slot(self, conn: psycopg.Connection[Any], checkpoint: str | None, adopt: bool) -> Lsn:
        log = self.ctx.log
        assert self._facts is not None
        slot = catalog.slot_facts(conn, self.slot)
        way_back = (
            f"to recover, run `cdc drop CONFIG {self.ctx.name} --yes` and start again with "
            "snapshot.mode: initial to re-read the tables"
        )
        if slot is not None and (slot.slot_type != "logical" or slot.plugin != "pgoutput"):
            raise FatalError(
                f"replication slot {self.slot} exists but is not a logical pgoutput slot "
                f"(type {slot.slot_type}, plugin {slot.plugin}); choose another `slot` name",
                kind="source_config",
            )
        if slot is not None and slot.database != self._facts.database:
            raise FatalError(
                f"replication slot {self.slot} belongs to database {slot.database}, not "
                f"{self._facts.database}; choose another `slot` name",
                kind="source_config",
            )
        if checkpoint is not None:
            ckpt = Lsn.parse(checkpoint)
            if slot is None:
                raise FatalError(
                    f"replication slot {self.slot} is missing (dropped by someone?): changes "
                    f"committed after the last checkpoint {ckpt} may be gone; {way_back}",
                    kind="slot_missing",
                    position=str(ckpt),
                )
            if slot.wal_status == "lost":
                raise FatalError(
                    f"replication slot {self.slot} is invalidated (wal_status lost: the server "
                    f"removed WAL it still needed, see max_slot_wal_keep_size); changes after "
                    f"the last checkpoint {ckpt} are gone; {way_back}",
                    kind="slot_lost",
                    position=str(ckpt),
                )
            confirmed = Lsn.parse(slot.confirmed_flush) if slot.confirmed_flush else Lsn(0)
            if ckpt < confirmed:
                raise FatalError(
                    f"the saved checkpoint {ckpt} is behind the slot's confirmed position "
                    f"{confirmed} (was the state restored from a backup?): the changes in "
                    f"between can no longer be read; {way_back}",
                    kind="state_behind_slot",
                    position=str(ckpt),
                )
            self._check_slot_idle(slot)
            return ckpt
        if slot is not None:
            if slot.wal_status == "lost":
                raise FatalError(
                    f"replication slot {self.slot} is invalidated (wal_status lost); drop it "
                    f"(`cdc drop CONFIG {self.ctx.name} --yes`) and start again",
                    kind="slot_lost",
                )
            self._check_slot_idle(slot)
            confirmed = Lsn.parse(slot.confirmed_flush) if slot.confirmed_flush else Lsn(0)
            log.warning("slot_adopted", slot=self.slot, position=str(confirmed))
            return confirmed
        if adopt:
            raise FatalError(
                f"--adopt {self.ctx.name}: there is no replication slot {self.slot} to continue "
                f"from; {way_back}",
                kind="slot_missing",
            )
        created = Lsn.parse(catalog.create_slot(conn, self.slot))
        log.info("slot_created", slot=self.slot, position=str(created))
        return created

    def _check_slot_idle(self, slot: catalog.SlotFacts) -> None:
        if slot.active_pid is not None:
            raise RetriableError(
                f"replication slot {self.slot} is in use by another connection (server PID "
                f"{slot.active_pid}): is another cdc instance running this pipeline? Stop it, "
                f"or give this pipeline another `slot`",
                kind="slot_in_use",
            )

    def _start_replication(self, start: Lsn) -> None:
        conninfo = self._conninfo(replication="database")
        repl = pq.PGconn.connect(conninfo.encode())
        if repl.status != pq.ConnStatus.OK:
            message = repl.get_error_message().strip()
            repl.finish()
            if "password authentication failed" in message or "no pg_hba.conf entry for replication" in message:
                raise FatalError(
                    f"cannot open a replication connection to {self.dsn_display}: {message}; "
                    "pg_hba.conf must allow the role (a `host` line for the database, or "
                    "`replication` in older setups)",
                    kind="source_auth",
                )
            raise RetriableError(
                f"cannot open a replication connection to {self.dsn_display}: {message}",
                kind="source_unreachable",
            )
        pubs = self.publication.replace("'", "''")
        command = (
            f'START_REPLICATION SLOT "{self.slot}" LOGICAL {start} '
            f"(proto_version '1', publication_names '\"{pubs}\"', messages 'true')"
        )
        repl.send_query(command.encode())
        result = repl.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = repl.get_error_message().strip()
            state = result.error_field(pq.DiagnosticField.SQLSTATE) if result is not None else None
            repl.finish()
            sqlstate = state.decode() if state else ""
            if sqlstate == "55006":
                raise RetriableError(
                    f"replication slot {self.slot} is in use by another connection: {message}; "
                    "is another cdc instance running this pipeline?",
                    kind="slot_in_use",
                )
            if sqlstate in ("42704", "55000"):
                raise FatalError(
                    f"cannot stream from replication slot {self.slot}: {message}; to recover, "
                    f"run `cdc drop CONFIG {self.ctx.name} --yes` and start again",
                    kind="slot_lost",
                )
            raise RetriableError(f"START_REPLICATION failed: {message}", kind="source_error")
        repl.nonblocking = 1
        self._repl = repl
        self._last_status = time.monotonic()
        self._last_heartbeat_request = time.monotonic()

    # -- reading --------------------------------------------------------------------------------

    def read(self, timeout: float) -> Batch | None:
        repl = self._repl
        if repl is None:
            raise RetriableError("the replication connection is closed", kind="source_unreachable")
        deadline = time.monotonic() + timeout
        get = repl.get_copy_data
        out = self._out
        handle = self._handle
        while True:
            try:
                nbytes, buf = get(1)
            except psycopg.OperationalError as exc:
                raise self._lost(exc) from exc
            if nbytes > 0:
                if buf[0] == _W:
                    batch = handle(buf, nbytes)
                    if batch is not None:
                        return batch
                    continue
                self._on_keepalive(parse_copy_data(buf))
                continue
            if nbytes == -1:
                raise self._lost(None)
            if nbytes < -1:
                raise self._lost(None)
            # Nothing buffered: hand over what we have, else wait for the socket.
            if out and not self._in_tx:
                return self._flush_out()
            if len(out) >= BATCH_EVENTS:
                return self._flush_out()
            self._housekeeping()
            heartbeat = self._heartbeat()
            if heartbeat is not None:
                return heartbeat
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                ready, _, _ = select.select([repl.socket], [], [], min(remaining, 0.5))
                if ready:
                    repl.consume_input()
            except (OSError, ValueError, psycopg.OperationalError) as exc:
                raise self._lost(exc) from exc

    def _lost(self, exc: BaseException | None) -> RetriableError:
        repl = self._repl
        detail = repl.get_error_message().strip() if repl is not None else ""
        if repl is not None and (not detail or detail == "no error details available"):
            # a server error ending COPY BOTH is in the next result, not on the connection
            try:
                res = repl.get_result()
                if res is not None and res.status == pq.ExecStatus.FATAL_ERROR:
                    detail = res.get_error_message().strip()
            except Exception:
                pass
        if not detail and exc is not None:
            detail = str(exc)
        if "publication" in detail and "does not exist" in detail:
            return FatalError(  # type: ignore[return-value]
                f"the replication stream ended: {detail.splitlines()[0]}; pgoutput reads the "
                "publication as of each change, so a slot created before its publication cannot "
                "stream the changes in between: create the publication first, then the slot "
                f"(or run `cdc drop CONFIG {self.ctx.name} --yes` and let cdc create both)",
                kind="source_config",
            )
        if "replication slot" in detail and ("does not exist" in detail or "invalidated" in detail):
            return FatalError(  # type: ignore[return-value]
                f"the replication stream ended: {detail}; to recover, run `cdc drop CONFIG "
                f"{self.ctx.name} --yes` and start again (snapshot.mode: initial re-reads the tables)",
                kind="slot_lost",
            )
        return RetriableError(
            f"lost the replication connection to {self.dsn_display}: {detail or 'server closed the stream'}",
            kind="source_unreachable",
        )

    def _flush_out(self) -> Batch:
        """Hand over the events gathered so far, ending on a transaction boundary whenever
        one exists: the batch then carries the position of that Commit, so the checkpoint
        keeps moving through a backlog. Only inside one transaction larger than a batch are
        events handed over without a position, and then its last event is kept back, since
        only Commit tells whether it is the transaction's last."""
        out = self._out
        if not self._in_tx:
            events, keep, position = out, [], self._position
        elif self._boundary:
            b = self._boundary
            events, keep, position = out[:b], out[b:], self._position
        else:
            events, keep, position = out[:-1], out[-1:], None
        self._boundary = 0
        self._out = keep
        cost = self._out_cost
        self._out_cost = 0
        self._housekeeping()  # status updates go out under sustained load too
        return Batch(events, position, self._tx_commit_unix or None, cost + 64)

    def _handle(self, buf: Any, nbytes: int) -> Batch | None:
        """Decode one XLogData message; return a batch when one is ready to hand over."""
        msg = decode(buf[25:].tobytes())  # tobytes: far cheaper than bytes(memoryview)
        cls = msg.__class__
        if cls is Insert or cls is Update or cls is Delete:
            rel = self._relations.get(msg.relid)
            if rel is None:
                if msg.relid not in self._relations:
                    raise FatalError(
                        f"pgoutput sent a change for relation {msg.relid} before describing it",
                        kind="protocol",
                    )
                return None  # a relation of the publication we do not capture
            self._out_cost += nbytes + 800  # what an event's Python objects take, roughly
            if cls is Insert:
                self._on_insert(rel, msg)
            elif cls is Update:
                self._on_update(rel, msg)
            else:
                self._on_delete(rel, msg)
            if len(self._out) >= BATCH_EVENTS or (self._out_cost >= BATCH_BYTES and len(self._out) > 1):
                return self._flush_out()
            return None
        if cls is Begin:
            self._in_tx = True
            self._tx_lsn = msg.final_lsn
            self._tx_id = str(Lsn(msg.final_lsn))
            self._tx_xid = str(msg.xid)
            self._tx_commit_unix = pg_time_to_unix(msg.commit_ts)
            self._tx_ts_ms = int(self._tx_commit_unix * 1000)
            self._tx_seq = 0
            self._tx_sources = {}
            self._emit_ms = int(time.time() * 1000)
            return None
        if cls is Commit:
            out = self._out
            if out and out[-1].transaction is not None and out[-1].transaction[0] == self._tx_id:
                t = out[-1].transaction
                out[-1].transaction = (t[0], t[1], True)
            self._in_tx = False
            end = Lsn(msg.end_lsn)
            self._position = end
            self._boundary = len(out)
            if end > self._received:
                self._received = end
            if len(out) >= BATCH_EVENTS or self._out_cost >= BATCH_BYTES:
                return self._flush_out()
            return None
        if cls is Relation:
            self._on_relation(msg)
            return None
        if cls is Truncate:
            for relid in msg.relids:
                rel = self._relations.get(relid)
                if rel is not None:
                    self._emit(rel, "t", None, None, None)
            return None
        if cls is Type or cls is Origin or cls is Message:
            return None
        return None

    # -- events ---------------------------------------------------------------------------------

    def _source_block(self, rel: _Relation) -> dict[str, Any]:
        block = self._tx_sources.get(rel.relid)
        if block is None:
            assert self._facts is not None
            block = self._tx_sources[rel.relid] = {
                "connector": "postgres",
                "pipeline": self.ctx.name,
                "db": self._facts.database,
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
        rel: _Relation,
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
        self._out.append(
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
            )
        )

    def _on_insert(self, rel: _Relation, msg: Insert) -> None:
        # The hottest path: an Insert never carries UNCHANGED, and _emit is inlined.
        after = rel.fast_row(msg.new)
        seq = self._tx_seq
        self._tx_seq = seq + 1
        tx = self._tx_id
        source = self._tx_sources.get(rel.relid) or self._source_block(rel)
        self._out.append(
            ChangeEvent(
                f"pg:{tx}:{seq}", "c", self._emit_ms, source, (tx, seq, False), rel.version,
                rel.key(after), None, after,
            )
        )

    def _on_update(self, rel: _Relation, msg: Update) -> None:
        after, unchanged = rel.row(msg.new)
        before: dict[str, Any] | None = None
        old_key: dict[str, Any] | None = None
        if msg.old_kind == "O":
            before, _ = rel.row(msg.old)
            old_key = rel.key_of(before)
        elif msg.old_kind == "K":
            before = rel.key_row(msg.old)
            old_key = before if rel.key_names else None
        if unchanged and before is not None:
            still = []
            for name in unchanged:
                if name in before:
                    after[name] = before[name]
                else:
                    still.append(name)
            unchanged = still or None
        new_key = rel.key_of(after)
        if old_key is not None and new_key is not None and old_key != new_key:
            self._emit(rel, "d", old_key, before, None, None, {"to": new_key})
            self._emit(rel, "c", new_key, None, after, unchanged, {"from": old_key})
            return
        self._emit(rel, "u", new_key, before, after, unchanged)

    def _on_delete(self, rel: _Relation, msg: Delete) -> None:
        if msg.old_kind == "O":
            before, _ = rel.row(msg.old)
        elif msg.old_kind == "K":
            before = rel.key_row(msg.old)
        else:
            before = None
        key = rel.key_of(before) if before is not None else None
        self._emit(rel, "d", key, before, None)

    # -- relations --------------------------------------------------------------------------------

    def _on_relation(self, msg: Relation) -> None:
        name = names.join(msg.namespace, msg.name)
        listed = self._listed.get(msg.relid, name if name in self.tables else None)
        if listed is None:
            self._relations[msg.relid] = None
            return
        if listed != name:
            self._on_renamed(msg, listed, name)
        with self._conn_lock:
            try:
                rel = self._compile_relation(msg, name, listed)
            except psycopg.OperationalError as exc:
                raise RetriableError(
                    f"lost the catalog connection while describing {name}: {exc}",
                    kind="source_unreachable",
                ) from exc
        self._relations[msg.relid] = rel

    def _on_renamed(self, msg: Relation, listed: str, name: str) -> None:
        """A listed table (known by its OID) is described under another name: it was renamed
        after the pipeline started (the stream is past the rename), or before this start while
        the stream is still behind it (the file names the new name, the stream the old one).
        Either way its changes are delivered, under the name the stream gives them."""
        previous = self._relations.get(msg.relid)
        if previous is not None and previous.name == name:
            return  # already said for this name
        self.ctx.log.warning(
            "table_renamed",
            listed=listed,
            streamed=name,
            lsn=str(Lsn(self._tx_lsn)),
            message=f"the listed table {listed} is called {name} at this point of the stream; "
            f"its events, schema versions and topics use {name} from here on. If it was renamed, "
            f"list {name} in `tables` before the next restart",
        )
        if name not in self.tables:
            self.ctx.set_meta(f"renamed:{listed}", name)

    def _renames(self) -> dict[str, str]:
        """Listed tables this pipeline saw renamed (old name -> new name), for start errors."""
        out: dict[str, str] = {}
        for name in self.cfg.tables:
            new = self.ctx.get_meta(f"renamed:{name}")
            if new:
                out[name] = new
        return out

    def _compile_relation(self, msg: Relation, name: str, listed: str | None = None) -> _Relation:
        schema, columns, key, key_indexes = self.describe_relation(
            self._catalog(), msg, name, listed or name
        )
        assert self.ctx.registry is not None
        version = self.ctx.registry.resolve(schema, (self._tx_lsn, self._tx_seq))
        return _Relation(
            msg.relid, msg.namespace, msg.name, version, columns, tuple(key), key_indexes, len(msg.columns)
        )

    def describe_relation(
        self, conn: psycopg.Connection[Any], msg: Relation, name: str, listed: str | None = None
    ) -> tuple[TableSchema, list[tuple[int, str, Any]], list[str], list[tuple[int, str, Any]]]:
        """A relation's schema, its kept columns as ``(index, name, converter)``, its key and the
        key columns' entries (the stream and the snapshot reader describe tables the same way).
        ``listed``: the name the pipeline file gives the table (its name before a rename)."""
        oids = {c.type_oid for c in msg.columns} - set(self._types)
        if oids:
            self._resolve_types(conn, oids)
        excluded = self.exclude.get(listed or name) or self.exclude.get(name, set())
        names = [c.name for c in msg.columns]
        missing = sorted(excluded - set(names))
        if missing:
            raise FatalError(
                f"columns.exclude for {listed or name} names {', '.join(map(repr, missing))}, which "
                f"the table does not have (its columns: {', '.join(names)}); correct the name in "
                "the pipeline file (an excluded column that does not exist would let the column "
                "meant to be hidden through)",
                kind="config",
                table=listed or name,
            )
        key = self._key_of_relation(conn, msg, name)
        for k in key:
            if k in excluded:
                raise FatalError(
                    f"columns.exclude for {name} names the key column {k!r}; key columns "
                    "cannot be excluded",
                    kind="config",
                    table=name,
                )
        not_null = catalog.not_null_columns(conn, msg.relid)
        columns: list[tuple[int, str, Any]] = []
        schema_columns: list[Column] = []
        by_name: dict[str, tuple[int, str, Any]] = {}
        for i, col in enumerate(msg.columns):
            conv = self._converter(col.type_oid)
            by_name[col.name] = (i, col.name, conv)
            if col.name in excluded:
                continue
            columns.append((i, col.name, conv))
            schema_columns.append(
                Column(col.name, self._type_name(conn, col.type_oid, col.typmod), col.name not in not_null)
            )
        schema = TableSchema(name, tuple(schema_columns), tuple(key))
        return schema, columns, list(key), [by_name[k] for k in key if k in by_name]

    def _key_of_relation(self, conn: psycopg.Connection[Any], msg: Relation, name: str) -> list[str]:
        """The key of the rows this Relation message describes, as it was when they were written.

        Under REPLICA IDENTITY DEFAULT and USING INDEX the message itself flags the identity
        columns, as the table was then: that set is the key (in the catalog's index order when
        today's index has exactly those columns, else in column order). Under FULL every column
        is flagged, so the primary key is read from the catalog as it is now; it is used only
        when every one of its columns is in the message, else the key of that time cannot be
        known and the rows are keyless (``key: null``), with a warning. NOTHING: no key."""
        names = [c.name for c in msg.columns]
        if msg.replica_identity in ("d", "i"):
            flagged = [c.name for c in msg.columns if c.flags & 1]
            if not flagged:
                return []
            now = catalog.key_columns(conn, msg.relid, msg.replica_identity)
            if now is not None and sorted(now) == sorted(flagged):
                return now
            return flagged
        if msg.replica_identity == "f":
            now = catalog.key_columns(conn, msg.relid, "f")
            if not now:
                return []
            absent = [k for k in now if k not in names]
            if absent:
                self.ctx.log.warning(
                    "key_unknown",
                    table=name,
                    lsn=str(Lsn(self._tx_lsn)),
                    message=f"the primary key of {name} is ({', '.join(now)}) now, but "
                    f"{', '.join(absent)} did not exist when these rows were written "
                    "(REPLICA IDENTITY FULL carries no key): its events until the next schema "
                    "version have key null",
                )
                return []
            return now
        return []

    def _resolve_types(self, conn: psycopg.Connection[Any], oids: set[int]) -> None:
        pending = set(oids)
        while pending:
            found = catalog.type_facts(conn, sorted(pending))
            self._types.update(found)
            pending = set()
            for t in found.values():
                for dep in (t.element, t.base):
                    if dep and dep not in self._types:
                        pending.add(dep)
            pending -= set(found)

    def _base(self, oid: int) -> catalog.TypeFacts | None:
        t = self._types.get(oid)
        seen = 0
        while t is not None and t.typtype == "d" and t.base and seen < 10:
            t = self._types.get(t.base)
            seen += 1
        return t

    def _converter(self, oid: int) -> Any:
        t = self._base(oid)
        if t is None:
            return converter_for(oid, bigint_as_string=self.bigint_as_string)
        if t.element:
            elem = self._base(t.element)
            elem_oid = elem.oid if elem is not None else t.element
            if elem is not None and elem.typtype == "e":
                elem_oid = 25  # enums are text
            return array_converter(
                converter_for(elem_oid, bigint_as_string=self.bigint_as_string), t.delim or ","
            )
        if t.typtype == "e":
            return converter_for(25)
        return converter_for(t.oid, bigint_as_string=self.bigint_as_string)

    def _type_name(self, conn: psycopg.Connection[Any], oid: int, typmod: int) -> str:
        t = self._types.get(oid)
        if t is None:
            return f"oid:{oid}"
        if t.element:
            elem = self._types.get(t.element)
            base = elem.name if elem is not None else f"oid:{t.element}"
            mod = self._typmod(conn, elem, typmod) if elem is not None else ""
            return f"{base}{mod}[]"
        return f"{t.name}{self._typmod(conn, t, typmod)}"

    def _typmod(self, conn: psycopg.Connection[Any], t: catalog.TypeFacts, typmod: int) -> str:
        if typmod < 0 or not t.modout:
            return ""
        key = (t.oid, typmod)
        text = self._typmods.get(key)
        if text is None:
            text = self._typmods[key] = catalog.typmod_text(conn, t.modout, typmod)
        return text

    # -- status updates and heartbeats ------------------------------------------------------------

    def _on_keepalive(self, msg: Any) -> None:
        if isinstance(msg, Keepalive):
            wal_end = Lsn(msg.wal_end)
            if wal_end > self._received:
                self._received = wal_end
            if msg.reply_requested:
                self._send_status(reply=False)

    def _send_status(self, reply: bool) -> None:
        repl = self._repl
        if repl is None:
            return
        flush = self._acked
        payload = standby_status_update(self._received, flush, flush, reply=reply)
        try:
            repl.put_copy_data(payload)
            repl.flush()
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from exc
        self._sent_flush = flush
        self._last_status = time.monotonic()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if (self._acked != self._sent_flush and now - self._last_status >= 1.0) or (
            now - self._last_status >= STATUS_INTERVAL_S
        ):
            self._send_status(reply=False)

    def _heartbeat(self) -> Batch | None:
        """While idle, ask for the server's WAL position every heartbeat_s and hand it over."""
        if self._in_tx or self._out:
            return None
        if self._received > self._position and self._received > self._last_heartbeat_position:
            self._position = self._received
            self._last_heartbeat_position = self._received
            return Batch([], self._received, None, 64)
        now = time.monotonic()
        if now - self._last_heartbeat_request >= self.cfg.heartbeat_s:
            self._last_heartbeat_request = now
            self._send_status(reply=True)
        return None

    def request_position(self) -> None:
        """A snapshot chunk waits for the stream: ask the server for its position at the
        reader's next idle turn (within one ``read`` timeout)."""
        self._last_heartbeat_request = 0.0

    def snapshot_reader(self) -> Any:
        from .snapshot import PostgresSnapshotReader

        return PostgresSnapshotReader(PostgresSource(self.cfg, self.ctx))

    def keepalive(self) -> None:
        """Called by the pipeline while its buffer is full (the reader is waiting)."""
        if time.monotonic() - self._last_status >= STATUS_INTERVAL_S / 2:
            self._send_status(reply=False)

    def ack(self, position: Any) -> None:
        if position > self._acked:
            self._acked = position

    def serialize_position(self, position: Any) -> str:
        return str(position)

    # -- monitoring -------------------------------------------------------------------------------

    def poll(self) -> None:
        try:
            with self._conn_lock:
                conn = self._catalog()
                slot = catalog.slot_facts(conn, self.slot)
                others = catalog.cdc_slots(conn)
        except (psycopg.Error, RetriableError, FatalError):
            return
        in_use = set(self.ctx.shared.get("slots_in_use", ()))
        retained = slot.retained_bytes if slot is not None else None
        limit = self.cfg.max_retained_wal_mb * 1024 * 1024
        self._status = {
            "slot": self.slot,
            "publication": self.publication,
            "confirmed_flush_lsn": slot.confirmed_flush if slot else None,
            "received_lsn": str(self._received),
            "retained_wal_bytes": retained,
            "retained_wal_exceeded": retained is not None and retained > limit,
            "wal_status": slot.wal_status if slot else None,
            "unused_slots": [
                {"slot": name, "database": db, "retained_wal_bytes": size}
                for name, db, size in others
                if name not in in_use
            ],
        }

    def status(self) -> dict[str, Any]:
        return dict(self._status)

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        repl = self._repl
        self._repl = None
        if repl is not None:
            try:
                if repl.status == pq.ConnStatus.OK:
                    payload = standby_status_update(self._received, self._acked, self._acked)
                    repl.put_copy_data(payload)
                    repl.flush()
            except Exception:
                pass
            try:
                repl.finish()
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
    def _drop(cls, config: PostgresConfig, ctx: PluginContext, dry_run: bool) -> list[str]:
        src = cls(config, ctx)
        done: list[str] = []
        try:
            conn = src._connect()
        except (RetriableError, FatalError) as exc:
            raise FatalError(f"cannot connect to drop the pipeline's footprint: {exc}") from exc
        with conn:
            slot = catalog.slot_facts(conn, src.slot)
            if slot is None:
                done.append(f"no replication slot {src.slot}")
            else:
                if slot.active_pid is not None:
                    raise FatalError(
                        f"replication slot {src.slot} is in use (server PID {slot.active_pid}): "
                        "stop the service running this pipeline first"
                    )
                if not dry_run:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (src.slot,))
                done.append(f"drop replication slot {src.slot}")
            pub = catalog.drop_publication_if_managed(conn, src.publication, dry_run)
            done.append(pub if pub else f"no publication {src.publication}")
        return done

    @classmethod
    def describe_drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        return cls._drop(config, ctx, dry_run=True)

    @classmethod
    def drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        return cls._drop(config, ctx, dry_run=False)
