"""The MySQL / MariaDB source: the binlog, read as a replica, decoded by cdc's own code.

Theory of operation. Four layers, the lower two pure (sans-IO):

* :mod:`.protocol` turns one binlog event's bytes into a message (``TableMap``, ``WriteRows``,
  ``Xid``, ``Rotate``, ``MariaDBGtid``, ...);
* :mod:`.decoder` turns messages into change events and batches (transactions, ids, positions,
  table descriptions compiled into row decoders, renames, truncates), with the transaction and
  batch assembly shared with the PostgreSQL source (:mod:`cdc.assembly`);
* :mod:`.stream` is the binlog connection (:mod:`._wire`, the only module touching PyMySQL's
  private API): registering as a replica, the dump, waiting for packets, heartbeats;
* this module composes them: the checks at start, the start position, and the catalog look-ups
  the decoder asks for through its hooks (:class:`MySQLSource` implements
  :class:`.decoder.DecoderHooks`).

*Start* (:meth:`MySQLSource.open`, supervisor thread): a regular PyMySQL connection checks the
server (version, ``log_bin``, ``binlog_format=ROW``, ``binlog_row_image=FULL``,
``binlog_row_metadata=FULL``, on MySQL ``binlog_row_value_options=''``), the grants
(REPLICATION SLAVE, REPLICATION CLIENT, SELECT on each table) and the replica server id (the
server's own, or one a replica of another name already uses, is fatal), then works out where to
start: the checkpoint (its binlog file must still exist, else fatal: the changes after it are
gone) or, without state, the server's current position. The binlog connection then registers as
a replica under the name ``cdc:<install>:<pipeline>`` and dumps the binlog from there, by binlog
coordinates or by GTID (``positions``); the first event is read at once so a refused dump (a
purged binlog, a missing grant) fails the start.

*Streaming* (:meth:`read`, reader thread): packets are read from the socket in 256 KiB chunks
by a reader that knows what it holds, so telling whether another event is waiting costs no
system call while a backlog is being read. Each event is parsed (its CRC32 verified) and fed to
the decoder. Each TABLE_MAP's column names, types and primary key come from the event itself
(``binlog_row_metadata=FULL``), so an event keeps the schema it was written with even when it
is read after an ALTER TABLE. MariaDB JSON columns (LONGTEXT with a ``json_valid`` check) and
UUID / INET4 / INET6 columns (``binary(16)`` / ``binary(4)`` in the binlog) are looked up with
one catalog query each per compiled description; ENUM/SET member names are read from the
TABLE_MAP's own bytes and decoded with the column's charset. A ``columns.exclude`` entry
naming a column that the description lacks, the table lacks now, and this pipeline never saw
in it is fatal (a typo).

*Renames*: a QUERY event that renames tables (:mod:`.ddl`) is applied in order: a listed table
is followed (the new name replaces the old in the filter; its ``columns.exclude`` goes along),
a warning says to update the pipeline file, and the rename is recorded in the state store's
meta. At the next start a listed old name that no longer exists is fatal, and when the new name
is listed, the old name is an alias for the events before the rename (a replay from an earlier
checkpoint), which keep their old name.

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
import threading
from typing import Any

from cdc import names
from cdc.check import named_columns, unknown_columns
from cdc.errors import (
    CDCError,
    FatalError,
    FatalSourceError,
    FatalStateError,
    Kind,
    RetriableSourceError,
)
from cdc.log import mask_dsn
from cdc.plugin import Batch, PluginContext, Source
from cdc.schema import SchemaVersion, TableSchema
from cdc.snapshot_api import SnapshotReader

from . import catalog
from .config import MySQLConfig
from .decoder import MySQLDecoder, parse_truncate
from .position import (
    BinlogPosition,
    GtidPosition,
    Position,
    file_index,
    parse_position,
)
from .stream import BinlogStream

__all__ = ["MySQLSource", "parse_truncate"]

#: state-store meta keys (per pipeline): the renames followed, excluded columns seen
META_RENAMES = "mysql.renames"
META_EXCLUDED_SEEN = "mysql.excluded_seen"

_LIB: Any = None


def _library() -> Any:
    """PyMySQL, imported on first use with an install hint."""
    global _LIB
    if _LIB is not None:
        return _LIB
    try:
        import pymysql
    except ImportError as exc:
        raise FatalError(
            f"the mysql source needs the package PyMySQL ({exc}): pip install PyMySQL",
            kind=Kind.PLUGIN_IMPORT,
        ) from exc
    _LIB = pymysql
    return _LIB


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
        self._decoder = MySQLDecoder(
            ctx.name, self.tables, self.exclude, self, bigint_as_string=self.bigint_as_string
        )
        self._meta_lock = threading.Lock()
        self._excluded_seen: dict[str, set[str]] | None = None
        self._settings: dict[str, Any] | None = None
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self._facts: catalog.ServerFacts | None = None
        self._server_id = 0
        self._tag = ""
        self._gtid_mode = False
        self._stream: BinlogStream | None = None
        self._acked: Position | None = None
        self._status: dict[str, Any] = {}

    # -- connections --------------------------------------------------------------------------

    def _catalog(self) -> Any:
        conn = self._conn
        if conn is None or not conn.open:
            assert self._settings is not None
            conn = self._conn = catalog.connect(self._settings, self.dsn_display)
        return conn

    # -- open -----------------------------------------------------------------------------------

    def open(self, checkpoint: str | None, *, adopt: bool = False) -> Position:
        pymysql = _library()
        if adopt and checkpoint is None:
            raise FatalStateError(
                f"--adopt {self.ctx.name}: a MySQL/MariaDB server keeps no record of a replica's "
                f"position, so there is nothing to continue from; run `cdc drop {self.ctx.config_file} "
                f"{self.ctx.name} --yes` and start again with a new snapshot (snapshot.mode: initial)",
                kind=Kind.STATE_LOST,
            )
        self._settings = catalog.connection_settings(self.cfg.dsn)
        try:
            with self._conn_lock:
                conn = self._catalog()
                facts = self._facts = catalog.server_facts(conn)
                # for the Debezium format (MariaDB's JSON is a plain string there)
                self.ctx.shared[f"source_flavor:{self.ctx.name}"] = facts.flavor
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
                raise RetriableSourceError(
                    f"lost the connection to {self.dsn_display} while starting: {exc}",
                ) from exc
            raise FatalSourceError(
                f"the server refused a start-up query: {catalog.error_text(exc)}"
            ) from exc
        except pymysql.err.MySQLError as exc:
            raise FatalSourceError(
                f"the server refused a start-up query: {catalog.error_text(exc)}"
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
            raise FatalSourceError(
                f"server_id {self._server_id} is the MySQL server's own server_id: give this "
                "pipeline another `source.server_id` (unique among the server's replicas)",
                kind=Kind.SERVER_ID_COLLISION,
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
                raise FatalSourceError(
                    f"server_id {self._server_id} is already used by a replica connected to the "
                    f"server (reported host {host or '(none)'!r}): two replicas with one id "
                    "disconnect each other; give this pipeline another `source.server_id`",
                    kind=Kind.SERVER_ID_COLLISION,
                )

    def _use_gtid(self, facts: catalog.ServerFacts) -> bool:
        mode = self.cfg.positions
        if facts.mariadb:
            gtid_on = (facts.var("gtid_strict_mode") or "").upper() in ("ON", "1")
        else:
            gtid_on = (facts.var("gtid_mode") or "").upper() == "ON"
        if mode == "gtid":
            if not facts.mariadb and not gtid_on:
                raise FatalSourceError(
                    f"positions: gtid needs gtid_mode=ON on the MySQL server (it is "
                    f"{facts.var('gtid_mode') or 'OFF'}); use positions: file or enable GTIDs",
                    kind=Kind.SOURCE_CONFIG,
                )
            return True
        if mode == "file":
            return False
        return gtid_on

    def _way_back(self) -> str:
        return (
            f"to recover, run `cdc drop {self.ctx.config_file} {self.ctx.name} --yes` and start again with a new "
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
            raise FatalStateError(
                f"the saved checkpoint {checkpoint!r} is not a MySQL binlog position ({exc}); was "
                f"the pipeline's source type changed? {self._way_back()}",
                kind=Kind.STATE_INVALID,
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
        raise FatalSourceError(
            f"the binlog file {saved.file} of the last checkpoint {saved} was purged from the "
            f"server (oldest binlog now: {oldest}): the changes committed after the checkpoint "
            f"are gone; {self._way_back()}. To prevent it, keep binlogs longer "
            "(binlog_expire_logs_seconds / expire_logs_days) than a pipeline may stay stopped",
            kind=Kind.BINLOG_PURGED,
            position=str(saved),
        )

    def _open_stream(self, start: Position) -> None:
        assert self._settings is not None and self._facts is not None
        decoder = self._decoder
        decoder.mariadb = self._facts.mariadb
        decoder.flavor = self._facts.flavor
        self._acked = start
        if self._stream is not None:
            self._stream.close()
        self._stream = BinlogStream(
            self._settings,
            self.dsn_display,
            decoder,
            server_id=self._server_id,
            tag=self._tag,
            mariadb=self._facts.mariadb,
            way_back=self._way_back(),
        )
        self._stream.start(start)
        self.ctx.log.info(
            "binlog_stream_open",
            position=str(start),
            server_id=self._server_id,
            positions="gtid" if self._gtid_mode else "file",
        )

    def read(self, timeout: float) -> Batch | None:
        stream = self._stream
        if stream is None:
            raise RetriableSourceError("the binlog connection is closed")
        return stream.read(timeout)

    # -- renames ----------------------------------------------------------------------------------

    def add_tables(self, tables: list[str]) -> None:
        """A reload grew ``tables`` while streaming (called on the dispatcher thread between
        batches): the grants are checked, then the binlog filter takes the tables; a change
        skipped before that was committed before the snapshot that follows reads the table."""
        wanted = sorted(self.tables | set(tables))
        pymysql = _library()
        try:
            with self._conn_lock:
                conn = self._catalog()
                facts = self._facts or catalog.server_facts(conn)
                catalog.check_grants(conn, facts, wanted)
        except pymysql.err.Error as exc:
            raise RetriableSourceError(
                f"could not check the new tables on {self.dsn_display}: {exc}"
            ) from exc
        self.tables.update(tables)
        self._decoder.tables_changed = True
        self.ctx.log.info("binlog_filter", added=tables)

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
            raise FatalSourceError(
                f"the listed table {old} was renamed to {new} while this pipeline was streaming it "
                f"(it followed the rename); {old} no longer exists: list {new} instead of {old} in "
                f"`tables` of pipeline {self.ctx.name} (and move any columns.exclude entry of it), "
                "then start again",
                kind=Kind.SOURCE_CONFIG,
                table=old,
            )

    def _set_aliases(self, renames: list[dict[str, Any]], start: Position) -> None:
        """Old names of listed tables renamed after the start position: the events replayed
        from before the rename still call the table by its old name, and are delivered as they
        were (under that name) instead of being dropped as unlisted."""
        aliases: dict[str, tuple[str, tuple[int, int]]] = {}
        wanted = set(self.tables)
        for r in reversed(renames):
            old, new = str(r.get("from")), str(r.get("to"))
            try:
                order = (file_index(str(r["file"])), int(r["pos"]))
            except (KeyError, TypeError, ValueError):
                continue
            if new in wanted and old not in self.tables and start.order < order:
                aliases[old] = (aliases[new][0] if new in aliases else new, order)
                wanted.add(old)
        self._decoder.aliases = aliases
        if aliases:
            self.ctx.log.info(
                "renamed_tables_replayed",
                tables={old: new for old, (new, _) in aliases.items()},
                note="events from before the rename are delivered under the old name, as they were",
            )

    def _listed_name(self, name: str) -> str:
        return self._decoder.listed_name(name)

    def _excluded_for(self, name: str) -> frozenset[str]:
        return self._decoder.excluded_for(name)

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
                kind=Kind.CONFIG,
                table=listed,
            )

    # -- the decoder's hooks (reader thread) ----------------------------------------------------------

    def resolve(self, schema: TableSchema, at: tuple[int, int, int]) -> SchemaVersion:
        assert self.ctx.registry is not None
        return self.ctx.registry.resolve(schema, at)

    def latest(self, name: str) -> SchemaVersion | None:
        assert self.ctx.registry is not None
        return self.ctx.registry.latest(name)

    def json_columns(self, name: str) -> frozenset[str]:
        found: frozenset[str] = self._describe(name, catalog.mariadb_json_columns, "JSON")
        return found

    def plugin_columns(self, name: str) -> dict[str, str]:
        found: dict[str, str] = self._describe(name, catalog.mariadb_plugin_columns, "UUID/INET")
        return found

    def current_columns(self, name: str) -> frozenset[str]:
        found: frozenset[str] = self._describe(name, catalog.column_names, "current")
        return found

    def catalog_table(self, name: str) -> tuple[list[tuple[str, str, bool]], list[str]]:
        assert self._facts is not None
        pymysql = _library()
        schema_name, table_name = names.split(name)
        with self._conn_lock:
            try:
                conn = self._catalog()
                json_columns = (
                    catalog.mariadb_json_columns(conn, schema_name, table_name) if self._facts.mariadb else frozenset()
                )
                return catalog.catalog_table(conn, schema_name, table_name, json_columns)
            except pymysql.err.MySQLError as exc:
                raise RetriableSourceError(f"cannot describe {name} for a TRUNCATE: {exc}", kind=Kind.SOURCE_ERROR) from exc

    def renamed(self, old: str, new: str, file: str, end_pos: int, exclude_moved: bool) -> None:
        if exclude_moved:
            self._copy_seen(old, new)
        entry = {"from": old, "to": new, "file": file, "pos": end_pos}
        with self._meta_lock:
            renames = self._recorded_renames()
            if entry not in renames:
                renames.append(entry)
                self.ctx.set_meta(META_RENAMES, json.dumps(renames))
        self.ctx.log.warning(
            "table_renamed",
            old=old,
            new=new,
            position=f"{file}:{end_pos}",
            note=f"cdc follows the table: its events now use the name {new}; update "
            f"`tables` (and columns.exclude) in the pipeline file to list {new} instead "
            f"of {old} before the next restart",
        )

    def warning(self, event: str, **fields: Any) -> None:
        self.ctx.log.warning(event, **fields)

    def _describe(self, name: str, lookup: Any, what: str) -> Any:
        pymysql = _library()
        schema, table = names.split(name)
        with self._conn_lock:
            try:
                return lookup(self._catalog(), schema, table)
            except pymysql.err.MySQLError as exc:
                if catalog.error_code(exc) in catalog.CLIENT_ERRORS:
                    self._conn = None
                    raise RetriableSourceError(
                        f"lost the catalog connection while describing {schema}.{table}: {exc}",
                    ) from exc
                raise FatalSourceError(
                    f"cannot read the {what} columns of {schema}.{table}: {catalog.error_text(exc)}",
                    table=f"{schema}.{table}",
                ) from exc

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

    def parse_position(self, text: str) -> Position:
        return parse_position(text)

    def event_before(self, source: dict[str, Any], high: Any) -> bool:
        """Events carry the start of their transaction (``file``, ``pos``); ``high`` is a binlog
        position: the event is before it when it starts before it."""
        try:
            return bool((file_index(str(source["file"])), int(source["pos"])) < high.order)
        except (KeyError, TypeError, ValueError):
            return False

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
            "read_position": f"{self._decoder.end_file}:{self._decoder.end_pos}",
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
        """What :meth:`open` would stop at, with the same catalog checks (login, binlog
        settings, grants and tables), read-only."""
        pymysql = _library()
        src = cls(config, ctx)
        try:
            conn = catalog.connect(catalog.connection_settings(config.dsn), src.dsn_display)
        except CDCError as exc:
            return [exc]
        problems: list[CDCError] = []
        try:
            facts = catalog.server_facts(conn)
            try:
                catalog.check_server(facts)
            except FatalError as exc:
                problems.append(exc)
            try:
                catalog.check_grants(conn, facts, sorted(src.tables))
            except FatalError as exc:
                problems.append(exc)
            for table in sorted(set(named_columns(ctx.pipeline)) & set(src.tables)):
                have = catalog.column_names(conn, *names.split(table))
                if not have:  # missing or not visible: check_grants said so
                    continue
                problems += [
                    FatalSourceError(message, kind=Kind.CONFIG, table=table)
                    for message in unknown_columns(ctx.pipeline, table, have)
                ]
        except pymysql.err.MySQLError as exc:
            problems.append(FatalSourceError(
                f"the server refused a check query: {catalog.error_text(exc)}", kind=Kind.SOURCE_ERROR
            ))
        finally:
            try:
                conn.close()
            except Exception:
                pass
        return problems

    # -- cdc drop ---------------------------------------------------------------------------------

    @classmethod
    def describe_drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        return ["nothing at the MySQL server: a binlog reader keeps no state there"]

    @classmethod
    def drop(cls, config: Any, ctx: PluginContext) -> list[str]:
        return ["nothing at the MySQL server: a binlog reader keeps no state there"]

