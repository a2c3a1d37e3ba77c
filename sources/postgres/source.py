"""The PostgreSQL source: logical replication with pgoutput, composed of sans-IO layers.

Theory of operation. The source is three layers, after h11 and psycopg:

- :mod:`.pgoutput`, :mod:`.protocol` and :mod:`.relations` are pure: bytes to messages, and a
  table's description plus catalog facts to its schema and compiled row functions;
- :mod:`.decoder` is pure too: messages in, events and batches out (transactions, ids, key
  changes, TOAST, truncate, renames), with the catalog and the schema registry injected as
  callables;
- :mod:`.stream` and :mod:`.catalog` do the I/O: the replication connection (waiting, status
  updates, heartbeats) and the regular connection's queries.

:class:`PostgresSource` composes them. *Start* (:meth:`PostgresSource.open`, supervisor
thread): a regular connection checks the server (version, ``wal_level``, REPLICATION, UTF8),
the tables (existence, SELECT, partitions, replica identities), then creates or aligns the
publication and finds the slot: created when missing (no state), adopted at its confirmed
position when it exists without state, and checked against the checkpoint when there is one
(missing, lost, or ahead of the checkpoint: fatal). It then builds the decoder (the listed
tables by OID, the pipeline's exclusions, the registry's ``resolve``) and starts the stream at
the checkpoint.

*Streaming* (:meth:`read`, reader thread) is the stream's: frames are decoded and fed to the
decoder, which asks this source for a Relation's catalog facts (:func:`.catalog.relation_facts`
on the regular connection, under the lock :meth:`poll` also takes; types are cached for the
session) and the registry for its schema version. The position handed to the pipeline is a
Commit's end LSN: confirming it makes PostgreSQL skip the transaction after a restart, and
resuming from it re-sends every later one.

*Acknowledgement*: :meth:`ack` (dispatcher thread) only records the checkpointed LSN; the reader
thread sends it with the next standby status update (see :mod:`.stream`).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from cdc import names
from cdc.check import named_columns, unknown_columns
from cdc.errors import (
    CDCError,
    FatalError,
    FatalSourceError,
    Kind,
    RetriableError,
    RetriableSourceError,
)
from cdc.log import mask_dsn
from cdc.plugin import Batch, PluginContext, Source

from . import catalog
from .config import PostgresConfig
from .decoder import PgDecoder
from .lsn import Lsn
from .pgoutput import Relation
from .relations import RelationFacts, TypeFacts
from .stream import ReplicationStream


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
        self._facts: catalog.ServerFacts | None = None
        #: the session's type facts and typmod texts (the decoder's Relation look-ups)
        self._types: dict[int, TypeFacts] = {}
        self._typmods: dict[tuple[int, int], str] = {}
        self._decoder: PgDecoder | None = None
        self._stream: ReplicationStream | None = None
        self._status: dict[str, Any] = {}

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        return catalog.connect(self.cfg.dsn, self.dsn_display, self.ctx.name)

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
                done = catalog.ensure_publication(
                    conn, self.publication, self.cfg.tables, self.ctx.name, facts.version
                )
                log.info("publication", publication=self.publication, action=done)
                start = self._prepare_slot(conn, checkpoint, adopt)
        except psycopg.OperationalError as exc:
            raise RetriableSourceError(
                f"lost the connection to {self.dsn_display} while starting: {exc}",
            ) from exc
        except psycopg.Error as exc:
            raise FatalSourceError(
                f"PostgreSQL refused a start-up query: {str(exc).strip()}"
            ) from exc
        assert self.ctx.registry is not None
        decoder = self._decoder = PgDecoder(
            pipeline=self.ctx.name,
            database=facts.database,
            tables=self.tables,
            listed={f.oid: f.name for f in listed.values()},
            facts=self._relation_facts,
            resolve=self.ctx.registry.resolve,
            log=log,
            record_rename=self._record_rename,
            exclude=self.exclude,
            bigint_as_string=self.bigint_as_string,
            position=start,
        )
        conninfo = catalog.conninfo(
            self.cfg.dsn, self.dsn_display, self.ctx.name, replication="database"
        )
        stream = ReplicationStream(
            conninfo,
            self.dsn_display,
            self.slot,
            self.publication,
            self.ctx.name,
            decoder,
            self.cfg.heartbeat_s,
            config_file=self.ctx.config_file,
        )
        stream.start(start)
        self._stream = stream
        self.poll()
        return start

    def _prepare_slot(
        self, conn: psycopg.Connection[Any], checkpoint: str | None, adopt: bool
    ) -> Lsn:
        log = self.ctx.log
        assert self._facts is not None
        slot = catalog.slot_facts(conn, self.slot)
        problems = self.slot_problems(slot, self._facts.database, checkpoint, adopt)
        if problems:
            raise problems[0]
        if checkpoint is not None:
            return Lsn.parse(checkpoint)
        if slot is not None:
            confirmed = Lsn.parse(slot.confirmed_flush) if slot.confirmed_flush else Lsn(0)
            log.warning("slot_adopted", slot=self.slot, position=str(confirmed))
            return confirmed
        created = Lsn.parse(catalog.create_slot(conn, self.slot))
        log.info("slot_created", slot=self.slot, position=str(created))
        return created

    def slot_problems(
        self, slot: catalog.SlotFacts | None, database: str, checkpoint: str | None, adopt: bool
    ) -> list[FatalSourceError | RetriableSourceError]:
        """What stops the pipeline from reading its slot, each with its way out (at start, the
        first is raised; ``cdc check`` lists them). The advice never drops the slot of a
        pipeline that another instance is running: it says to look first."""
        config = self.ctx.config_file
        way_back = (
            f"first make sure no cdc instance runs pipeline {self.ctx.name} (`cdc status "
            f"{config}`), then, to recover, run `cdc drop {config} {self.ctx.name} --yes` and "
            "start again with snapshot.mode: initial to re-read the tables"
        )
        problems: list[FatalSourceError | RetriableSourceError] = []
        if slot is not None and (slot.slot_type != "logical" or slot.plugin != "pgoutput"):
            problems.append(FatalSourceError(
                f"replication slot {self.slot} exists but is not a logical pgoutput slot "
                f"(type {slot.slot_type}, plugin {slot.plugin}); choose another `slot` name",
                kind=Kind.SOURCE_CONFIG,
            ))
            return problems
        if slot is not None and slot.database != database:
            problems.append(FatalSourceError(
                f"replication slot {self.slot} belongs to database {slot.database}, not "
                f"{database}; choose another `slot` name",
                kind=Kind.SOURCE_CONFIG,
            ))
            return problems
        if checkpoint is not None:
            ckpt = Lsn.parse(checkpoint)
            if slot is None:
                problems.append(FatalSourceError(
                    f"replication slot {self.slot} is missing (dropped by someone?): changes "
                    f"committed after the last checkpoint {ckpt} may be gone; {way_back}",
                    kind=Kind.SLOT_MISSING,
                    position=str(ckpt),
                ))
                return problems
            if slot.wal_status == "lost":
                problems.append(FatalSourceError(
                    f"replication slot {self.slot} is invalidated (wal_status lost: the server "
                    f"removed WAL it still needed, see max_slot_wal_keep_size); changes after "
                    f"the last checkpoint {ckpt} are gone; {way_back}",
                    kind=Kind.SLOT_LOST,
                    position=str(ckpt),
                ))
                return problems
            confirmed = Lsn.parse(slot.confirmed_flush) if slot.confirmed_flush else Lsn(0)
            if ckpt < confirmed:
                problems.append(FatalSourceError(
                    f"the saved checkpoint {ckpt} is behind the slot's confirmed position "
                    f"{confirmed} (was the state restored from a backup?): the changes in "
                    f"between can no longer be read; {way_back}",
                    kind=Kind.STATE_BEHIND_SLOT,
                    position=str(ckpt),
                ))
        elif slot is not None and slot.wal_status == "lost":
            problems.append(FatalSourceError(
                f"replication slot {self.slot} is invalidated (wal_status lost); drop it "
                f"(`cdc drop {config} {self.ctx.name} --yes`) and start again",
                kind=Kind.SLOT_LOST,
            ))
        elif slot is None and adopt:
            problems.append(FatalSourceError(
                f"--adopt {self.ctx.name}: there is no replication slot {self.slot} to continue "
                f"from; {way_back}",
                kind=Kind.SLOT_MISSING,
            ))
        if slot is not None and slot.active_pid is not None:
            problems.append(self._slot_in_use(slot))
        return problems

    def _slot_in_use(self, slot: catalog.SlotFacts) -> RetriableSourceError:
        return RetriableSourceError(
            f"replication slot {self.slot} is in use by another connection (server PID "
            f"{slot.active_pid}): probably another cdc instance is running pipeline "
            f"{self.ctx.name} (`cdc status {self.ctx.config_file}` asks the service at its "
            "api.listen; `SELECT application_name, client_addr FROM pg_stat_replication WHERE "
            f"pid = {slot.active_pid}` names the reader). Stop that one first, or leave it "
            "running and do not start this one; cdc retries until the slot is free",
            kind=Kind.SLOT_IN_USE,
        )

    # -- reading --------------------------------------------------------------------------------

    def read(self, timeout: float) -> Batch | None:
        stream = self._stream
        if stream is None:
            raise RetriableSourceError("the replication connection is closed")
        return stream.read(timeout)

    # -- relations and renames ----------------------------------------------------------------

    def _relation_facts(self, msg: Relation) -> RelationFacts:
        """The decoder describes a Relation: its catalog facts, on the regular connection."""
        columns = [(c.type_oid, c.typmod) for c in msg.columns]
        with self._conn_lock:
            try:
                return catalog.relation_facts(
                    self._catalog(),
                    msg.relid,
                    msg.replica_identity,
                    columns,
                    self._types,
                    self._typmods,
                )
            except psycopg.OperationalError as exc:
                name = names.join(msg.namespace, msg.name)
                raise RetriableSourceError(
                    f"lost the catalog connection while describing {name}: {exc}",
                ) from exc

    def _record_rename(self, listed: str, name: str) -> None:
        self.ctx.set_meta(f"renamed:{listed}", name)

    def _renames(self) -> dict[str, str]:
        """Listed tables this pipeline saw renamed (old name -> new name), for start errors."""
        out: dict[str, str] = {}
        for name in self.cfg.tables:
            new = self.ctx.get_meta(f"renamed:{name}")
            if new:
                out[name] = new
        return out

    def add_tables(self, tables: list[str]) -> None:
        """A reload grew ``tables`` while streaming (called on the dispatcher thread between
        batches): the tables are checked like at start and added to the publication; the
        decoder takes their changes from the next Relation message on. PostgreSQL decodes
        each transaction with the publication as it was at its commit, so every change
        committed after the ALTER is streamed and the snapshot covers the rows before it."""
        wanted = list(dict.fromkeys([*self.cfg.tables, *tables]))
        try:
            with self._conn_lock:
                conn = self._catalog()
                facts = self._facts or catalog.server_facts(conn)
                listed = catalog.check_tables(conn, wanted, self._renames())
                done = catalog.ensure_publication(
                    conn, self.publication, wanted, self.ctx.name, facts.version
                )
        except psycopg.OperationalError as exc:
            raise RetriableSourceError(f"lost the connection to {self.dsn_display}: {exc}") from exc
        except psycopg.Error as exc:
            raise FatalSourceError(
                f"PostgreSQL refused adding the tables: {str(exc).strip()}"
            ) from exc
        self.ctx.log.info("publication", publication=self.publication, action=done, added=tables)
        self.tables.update(tables)
        decoder = self._decoder
        if decoder is not None:
            decoder.listed.update({f.oid: f.name for f in listed.values() if f.name in tables})
            decoder.tables.update(tables)

    # -- the stream's controls and the snapshot reader -----------------------------------------

    def request_position(self) -> None:
        """A snapshot chunk waits for the stream: ask the server for its position at the
        reader's next idle turn (within one ``read`` timeout)."""
        if self._stream is not None:
            self._stream.request_position()

    def snapshot_reader(self) -> Any:
        from .snapshot import PostgresSnapshotReader

        return PostgresSnapshotReader(
            self.cfg.dsn, self.ctx.name, self.exclude, bigint_as_string=self.bigint_as_string
        )

    def keepalive(self) -> None:
        """Called by the pipeline while its buffer is full (the reader is waiting)."""
        if self._stream is not None:
            self._stream.keepalive()

    def ack(self, position: Any) -> None:
        if self._stream is not None:
            self._stream.ack(position)

    def serialize_position(self, position: Any) -> str:
        return str(position)

    def parse_position(self, text: str) -> Lsn:
        return Lsn.parse(text)

    def event_before(self, source: dict[str, Any], high: Any) -> bool:
        lsn = source.get("lsn")
        return isinstance(lsn, str) and Lsn.parse(lsn) < high

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
            "received_lsn": str(self._stream.received if self._stream else Lsn(0)),
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
        stream = self._stream
        if stream is not None:
            stream.close()
        conn = self._conn
        self._conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- cdc check --------------------------------------------------------------------------------

    @classmethod
    def check(cls, config: Any, ctx: PluginContext) -> list[CDCError]:
        """Every problem :meth:`open` would stop at, found with the same catalog functions
        but read-only: nothing is created, altered or dropped."""
        src = cls(config, ctx)
        try:
            conn = src._connect()
        except (FatalError, RetriableError) as exc:
            return [exc]
        problems: list[CDCError] = []
        try:
            with conn:
                facts = catalog.server_facts(conn)
                problems += catalog.server_problems(facts)
                found, table_problems = catalog.table_problems(conn, config.tables, src._renames())
                problems += table_problems
                problems += catalog.publication_problems(conn, src.publication, config.tables, facts.version)
                ck = ctx.store.get_checkpoint(ctx.name)
                slot = catalog.slot_facts(conn, src.slot)
                problems += src.slot_problems(slot, facts.database, ck.position if ck else None, False)
                if slot is None and ck is None:
                    free = conn.execute(
                        "SELECT current_setting('max_replication_slots')::int - count(*) "
                        "FROM pg_replication_slots"
                    ).fetchone()
                    if free is not None and free[0] <= 0:
                        problems.append(FatalSourceError(
                            f"cdc would create the replication slot {src.slot} at start, but all "
                            "max_replication_slots are taken: raise max_replication_slots (and "
                            "max_wal_senders) in postgresql.conf, or drop unused slots",
                            kind=Kind.SOURCE_CONFIG,
                        ))
                for table in sorted(named_columns(ctx.pipeline)):
                    if table not in found:
                        continue
                    have = {r[0] for r in conn.execute(
                        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                        "AND NOT attisdropped", (found[table].oid,)).fetchall()}
                    problems += [
                        FatalSourceError(message, kind=Kind.CONFIG, table=table)
                        for message in unknown_columns(ctx.pipeline, table, have)
                    ]
        except psycopg.Error as exc:
            problems.append(FatalSourceError(
                f"PostgreSQL refused a check query: {str(exc).strip()}", kind=Kind.SOURCE_ERROR
            ))
        return problems

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
                done.append(f"{'drop' if dry_run else 'dropped'} replication slot {src.slot}")
            pub = catalog.drop_publication_if_managed(conn, src.publication, dry_run)
            done.append(pub if pub else f"no publication {src.publication}")
        return done

    @classmethod
    def describe_drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        return cls._drop(config, ctx, dry_run=True)

    @classmethod
    def drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        return cls._drop(config, ctx, dry_run=False)
