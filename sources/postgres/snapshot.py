"""Snapshot chunks from PostgreSQL (the core's side is :mod:`cdc.snapshot`).

Theory of operation. Each chunk is one short ``REPEATABLE READ, READ ONLY`` transaction on the
reader's own connection. Its first statement takes the transaction's snapshot and, in the same
statement, reads ``pg_current_snapshot()`` (``xmin:xmax:xip``) and
``pg_current_wal_insert_lsn()``; the second reads the rows, ``WHERE (key) > (last key) ORDER BY
key LIMIT n``, in text format, converted by the very converters the stream compiles for the
table (both describe it with :mod:`.relations`, and the session has the stream's settings: UTC,
ISO dates, ``iso_8601`` intervals, hex bytea, all float digits), so a row read here and the
same row streamed are equal. No lock.

Watermark: a transaction visible to the read wrote its commit record before the snapshot was
taken, so before the insert LSN read after it: once the stream has delivered up to that LSN
(``high``), every transaction the read saw is delivered. Which streamed transactions the read
saw is decided by the snapshot itself, not by LSNs: PostgreSQL makes a commit visible after
writing its commit record (and, under synchronous replication, after the standby answered), so
commit order in the WAL and visibility order can differ. A streamed event's xid (from the
transaction's Begin) is tested against ``xmin``, ``xmax`` and ``xip`` (wraparound-aware).

One case is guarded apart: a transaction whose commit the stream may already have delivered
while it is still listed as running in the read's snapshot (its commit record is written, its
backend has not yet left the process array: a synchronous-replication wait, or a stall). Its
changes are newer than the read but could have been delivered before the core started
watching. The first statement therefore also lists the snapshot's running xids that the commit
log already marks committed; when there are any, the read is discarded and taken again a moment
later.

Keyless tables (no primary key, no replica-identity index) are read in one piece, without
ORDER BY or LIMIT.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import psycopg
from psycopg import pq, sql

from cdc._codegen import make_function
from cdc.errors import FatalError, FatalSourceError, Kind, RetriableSourceError
from cdc.events import ChangeEvent
from cdc.log import mask_dsn
from cdc.names import split as split_table_name
from cdc.schema import TableSchema
from cdc.snapshot_api import Chunk, SnapshotReader, TableInfo
from cdc.verify import RangeSum

from . import catalog
from .lsn import Lsn
from .relations import Entry, TypeFacts, describe, snapshot_key

#: attempts at a read whose snapshot lists a committed transaction as running
RACE_RETRIES = 200

_FIRST = (
    b"SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text, "
    b"ARRAY(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x "
    b"WHERE pg_xact_status(x) = 'committed')"
)


class _Snapshot:
    """``pg_current_snapshot()``, for testing 32-bit xids of streamed transactions."""

    __slots__ = ("xmin", "xmax", "xip", "text")

    def __init__(self, text: str) -> None:
        xmin, xmax, xip = text.split(":")
        self.text = text
        self.xmin = int(xmin)
        self.xmax = int(xmax)
        self.xip = frozenset(int(x) for x in xip.split(",") if x)

    def full(self, xid: int) -> int:
        """The 64-bit id of a 32-bit xid near ``xmax`` (within 2^31 either side)."""
        diff = (xid - self.xmax) & 0xFFFFFFFF
        if diff >= 0x80000000:
            diff -= 0x100000000
        return self.xmax + diff

    def sees(self, xid: int) -> bool:
        """Whether a committed transaction is visible to this snapshot."""
        full = self.full(xid)
        if full >= self.xmax:
            return False
        if full < self.xmin:
            return True
        return full not in self.xip


class PgChunk(Chunk):
    __slots__ = ("snapshot", "block")

    def __init__(self, *args: Any, snapshot: _Snapshot, block: dict[str, Any]) -> None:
        super().__init__(*args)
        self.snapshot = snapshot
        self.block = block  # the source block without the emit position

    def visible(self, event: ChangeEvent) -> bool:
        tx = event.source.get("tx")
        if not tx:
            return False
        return self.snapshot.sees(int(tx))

    def source_block(self, position: Any, snapshot_id: str) -> dict[str, Any]:
        return {**self.block, "lsn": str(Lsn(int(position))), "snapshot_id": snapshot_id}

    def at(self, position: Any) -> tuple[int, ...]:
        # just before a transaction whose commit starts at ``position`` (see the MySQL reader)
        return (int(position), -1)


def _compile_rows(table: str, columns: list[Entry], key: list[str]) -> Any:
    """``convert(get, n) -> [(key, after), ...]`` for a result of ``n`` rows in text format
    (``get(row, column)`` is libpq's value, ``None`` for NULL): one generated loop per table,
    with the same converters as the stream's rows."""
    env = {f"_c{j}": conv for j, (_, _, conv) in enumerate(columns)}
    by_name = {name: j for j, (_, name, _) in enumerate(columns)}
    lines = ["out = []", "append = out.append", "for i in range(n):"]
    for j, (index, _, _) in enumerate(columns):
        lines.append(f"    v{j} = get(i, {index})")
    items = ", ".join(
        f"{name!r}: None if v{j} is None else _c{j}(v{j})" for j, (_, name, _) in enumerate(columns)
    )
    lines.append(f"    after = {{{items}}}")
    if key:
        key_items = ", ".join(f"{k!r}: after[{k!r}]" for k in key if k in by_name)
        lines.append(f"    append(({{{key_items}}}, after))")
    else:
        lines.append("    append((None, after))")
    lines.append("return out")
    return make_function("convert", ["get", "n"], lines, env, f"pg snapshot rows {table}")


class _Table:
    """What the reader compiled for one table."""

    __slots__ = ("name", "schema", "key", "key_types", "key_index", "select", "convert", "block", "columns")

    def __init__(
        self,
        *,
        name: str,
        schema: TableSchema,
        key: tuple[str, ...],
        key_types: list[str],
        key_index: list[int],
        select: sql.Composable,
        convert: Any,
        block: dict[str, Any],
        columns: list[Entry],
    ) -> None:
        self.columns = columns  # (result index, name, converter) of the event's columns
        self.name = name
        self.schema = schema
        self.key = key
        self.key_types = key_types  # the key columns' types, for the cursor's casts
        self.key_index = key_index  # the key columns' indexes in a result row
        self.select = select
        self.convert = convert  # convert(get, n) -> [(key, after), ...]
        self.block = block  # the source block without ts_ms


class PostgresSnapshotReader(SnapshotReader):
    """Reads chunks on its own connection; tables are described by :mod:`.relations` from
    ``pg_attribute`` and the catalog facts, exactly as the stream describes them."""

    def __init__(
        self,
        dsn: str,
        pipeline: str,
        exclude: dict[str, set[str]],
        *,
        bigint_as_string: bool = False,
    ) -> None:
        self.dsn = dsn
        self.dsn_display = mask_dsn(dsn)
        self.pipeline = pipeline
        self.exclude = exclude
        self.bigint_as_string = bigint_as_string
        self._connection: psycopg.Connection[Any] | None = None
        self._types: dict[int, TypeFacts] = {}
        self._typmods: dict[tuple[int, int], str] = {}
        self._tables: dict[str, _Table] = {}
        self._database: str | None = None

    def _conn(self) -> psycopg.Connection[Any]:
        try:
            conn = self._connection
            if conn is None or conn.closed or conn.broken:
                conn = self._connection = catalog.connect(self.dsn, self.dsn_display, self.pipeline)
            return conn
        except FatalError:
            raise
        except psycopg.Error as exc:
            raise RetriableSourceError(f"snapshot connection failed: {exc}") from exc

    # -- describe ---------------------------------------------------------------------------

    def describe(self, table: str) -> TableInfo:
        try:
            t = self._table(table, refresh=True)
            estimate = self._estimate(table)
        except psycopg.OperationalError as exc:
            raise RetriableSourceError(f"lost the snapshot connection: {exc}") from exc
        return TableInfo(table, t.key, estimate)

    def _table(self, table: str, refresh: bool = False) -> _Table:
        t = self._tables.get(table)
        if t is not None and not refresh:
            return t
        conn = self._conn()
        schema_name, table_name = split_table_name(table)
        row = conn.execute(
            "SELECT c.oid, c.relkind, c.relreplident, current_database(), "
            "has_table_privilege(c.oid, 'SELECT') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (schema_name, table_name),
        ).fetchone()
        if row is None:
            raise FatalSourceError(
                f"cannot snapshot {table}: the table does not exist", kind=Kind.SNAPSHOT_REFUSED, table=table
            )
        relid, relkind, replident, database, can_select = row
        if not can_select:
            raise FatalSourceError(
                f"cannot snapshot {table}: the role has no SELECT privilege on it (GRANT SELECT "
                f"ON {table} TO <role>)",
                kind=Kind.SNAPSHOT_REFUSED,
                table=table,
            )
        self._database = database
        attrs = conn.execute(
            "SELECT attname, atttypid, atttypmod, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = '' "
            "ORDER BY attnum",
            (relid,),
        ).fetchall()
        facts = catalog.relation_facts(
            conn, relid, replident, [(a[1], a[2]) for a in attrs], self._types, self._typmods
        )
        key_names = snapshot_key(replident, facts.key)
        shape = describe(
            table,
            [(a[0], a[1], a[2]) for a in attrs],
            key_names,
            facts,
            self.exclude,
            bigint_as_string=self.bigint_as_string,
        )
        types = {a[0]: a[3] for a in attrs}
        names = [a[0] for a in attrs]
        ident = sql.Identifier
        select = sql.SQL("SELECT {} FROM {}{}").format(
            sql.SQL(", ").join(ident(n) for n in names),
            sql.SQL("ONLY ") if relkind == "r" else sql.SQL(""),
            sql.SQL("{}.{}").format(ident(schema_name), ident(table_name)),
        )
        convert = _compile_rows(table, shape.columns, key_names)
        t = _Table(
            name=table,
            schema=shape.schema,
            key=tuple(key_names),
            key_types=[types[k] for k in key_names],
            select=select,
            convert=convert,
            block={
                "connector": "postgres",
                "pipeline": self.pipeline,
                "db": database,
                "schema": schema_name,
                "table": table_name,
                "tx": None,
                "snapshot": True,
            },
            key_index=[names.index(k) for k in key_names],
            columns=shape.columns,
        )
        self._tables[table] = t
        return t

    def _estimate(self, table: str) -> int:
        conn = self._conn()
        row = conn.execute(
            "SELECT sum(greatest(c.reltuples, 0))::bigint, bool_or(c.reltuples < 0), "
            "sum(pg_table_size(c.oid))::bigint FROM pg_partition_tree(%s::regclass) AS t "
            "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf",
            (self._qualified(table),),
        ).fetchone()
        estimate, unknown, size = row if row is not None else (0, True, 0)
        if (unknown or not estimate) and (size or 0) < 256 * 1024 * 1024:
            counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._ident(table))).fetchone()
            return int(counted[0]) if counted else 0
        return int(estimate or 0)

    @staticmethod
    def _ident(table: str) -> sql.Composable:
        schema_name, table_name = split_table_name(table)
        return sql.SQL("{}.{}").format(sql.Identifier(schema_name), sql.Identifier(table_name))

    def _qualified(self, table: str) -> str:
        return self._ident(table).as_string(self._conn())

    # -- reading -------------------------------------------------------------------------------

    def read_chunk(self, table: str, cursor: Any, limit: int | None, *, where: str | None = None) -> Chunk:
        try:
            return self._read(table, cursor, limit, where=where)
        except psycopg.OperationalError as exc:
            raise RetriableSourceError(f"lost the snapshot connection: {exc}") from exc
        except psycopg.Error as exc:
            raise FatalSourceError(f"cannot read {table}: {str(exc).strip()}", kind=Kind.SNAPSHOT_REFUSED, table=table) from exc

    def check_where(self, table: str, where: str) -> None:
        """``EXPLAIN`` the first chunk's read with the condition, in a read-only transaction
        that is rolled back: the server parses and plans it (unknown columns, types, functions,
        privileges) without reading a row."""
        try:
            t = self._table(table, refresh=True)
            conn = self._conn()
            query = sql.SQL("EXPLAIN {} WHERE ({})").format(t.select, sql.SQL(where))
            conn.execute("BEGIN READ ONLY")
            try:
                conn.execute(query)
            finally:
                if not conn.closed and not conn.broken:
                    conn.execute("ROLLBACK")
        except psycopg.OperationalError as exc:
            raise RetriableSourceError(f"lost the snapshot connection: {exc}") from exc
        except psycopg.Error as exc:
            raise FatalSourceError(
                f"the condition for {table} is refused by the database: {str(exc).strip()}",
                kind=Kind.SNAPSHOT_REFUSED, table=table,
            ) from exc

    def _read(
        self, table: str, cursor: Any, limit: int | None, upto: Any = None, where: str | None = None
    ) -> Chunk:
        t = self._table(table)
        conn = self._conn()
        query: sql.Composable = t.select
        params: list[Any] = []
        if where:
            # checked by check_where before the snapshot began; parenthesised so that its ORs
            # stay inside it
            query = sql.SQL("{} WHERE ({})").format(query, sql.SQL(where))
        if t.key:
            key_sql = sql.SQL(", ").join(sql.Identifier(k) for k in t.key)
            conditions = []
            if cursor is not None:
                conditions.append(sql.SQL("({}) > ({})").format(key_sql, self._casts(t, 1)))
                params.extend(cursor)
            if upto is not None:
                conditions.append(sql.SQL("({}) <= ({})").format(key_sql, self._casts(t, len(params) + 1)))
                params.extend(upto)
            if conditions:
                glue = " AND " if where else " WHERE "
                query = sql.SQL("{}" + glue + "{}").format(query, sql.SQL(" AND ").join(conditions))
            query = sql.SQL("{} ORDER BY {}").format(query, key_sql)
            if limit is not None:
                query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(limit))
        res, snap_text, high, read_at = self._consistent(table, query.as_string(conn), params)
        return self._chunk(t, res, snap_text, high, read_at, limit)

    @staticmethod
    def _casts(t: _Table, first: int) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL(f"${i}::{ty}") for i, ty in enumerate(t.key_types, first))

    def _consistent(self, table: str, text: str, params: list[Any]) -> tuple[Any, str, Lsn, float]:
        """Run one read-only query in its own REPEATABLE READ transaction: its result (text
        format), the snapshot, the high watermark and the read time."""
        conn = self._conn()
        for _ in range(RACE_RETRIES):
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                first = conn.execute(_FIRST).fetchone()
                assert first is not None
                snap_text, insert_lsn, committed_running = first
                if committed_running:
                    conn.execute("ROLLBACK")
                    time.sleep(0.01)
                    continue
                read_at = time.time()
                res = conn.pgconn.exec_params(
                    text.encode(), [str(p).encode() for p in params] or None, result_format=0
                )
                if res.status != pq.ExecStatus.TUPLES_OK:
                    state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
                    message = res.get_error_message().strip()
                    conn.execute("ROLLBACK")
                    if state in ("42703", "42P01"):  # a column or the table went away meanwhile
                        self._tables.pop(table, None)
                        raise RetriableSourceError(f"{table} changed while it was read: {message}", kind=Kind.SOURCE_SCHEMA)
                    raise FatalSourceError(f"cannot read {table}: {message}", kind=Kind.SNAPSHOT_REFUSED, table=table)
                conn.execute("COMMIT")
            except psycopg.Error:
                if not conn.closed and not conn.broken:
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                raise
            return res, snap_text, Lsn.parse(insert_lsn), read_at
        raise RetriableSourceError(
            f"snapshot of {table}: a committed transaction stayed invisible to {RACE_RETRIES} "
            "reads in a row (a synchronous standby not answering?)",
            kind=Kind.SOURCE_BUSY,
        )

    # -- cdc verify: checksums of key ranges (see cdc.verify) ---------------------------------------

    def range_layout(self, table: str) -> tuple[list[str], list[str], list[str]]:
        """The columns a checksum covers (the event's, in order), the key columns and their
        types (for the cursor casts)."""
        t = self._table(table)
        return [c.name for c in t.schema.columns], list(t.key), list(t.key_types)

    def range_checksum(self, table: str, cursor: Any, limit: int) -> RangeSum:
        """Count and digest of the next ``limit`` rows after ``cursor`` in key order, in one
        consistent read: md5 over the md5 of each row's text (``ROW(columns)::text`` with the
        stream's session settings), in key order."""
        try:
            t = self._table(table)
            conn = self._conn()
            columns, key, _ = self.range_layout(table)
            ident = sql.Identifier
            key_sql = sql.SQL(", ").join(ident(k) for k in key)
            inner = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(ident(c) for c in columns), self._ident(table)
            )
            params: list[Any] = []
            if cursor is not None:
                inner = sql.SQL("{} WHERE ({}) > ({})").format(inner, key_sql, self._casts(t, 1))
                params = list(cursor)
            inner = sql.SQL("{} ORDER BY {} LIMIT {}").format(inner, key_sql, sql.Literal(limit))
            query = sql.SQL(
                "SELECT count(*), md5(string_agg(md5(ROW({})::text), '' ORDER BY {})), {} FROM ({}) s"
            ).format(
                sql.SQL(", ").join(sql.SQL("s.") + ident(c) for c in columns),
                sql.SQL(", ").join(sql.SQL("s.") + ident(k) for k in key),
                sql.SQL(", ").join(
                    sql.SQL("(array_agg(s.{}::text ORDER BY {}))[1]").format(
                        ident(k), sql.SQL(", ").join(sql.SQL("s.{} DESC").format(ident(k2)) for k2 in key)
                    )
                    for k in key
                ),
                inner,
            )
            res, _, high, _ = self._consistent(table, query.as_string(conn), params)
        except psycopg.OperationalError as exc:
            raise RetriableSourceError(f"lost the snapshot connection: {exc}") from exc
        except psycopg.Error as exc:
            raise FatalSourceError(f"cannot read {table}: {str(exc).strip()}", kind=Kind.SNAPSHOT_REFUSED, table=table) from exc
        count = int(res.get_value(0, 0).decode())
        digest = (res.get_value(0, 1) or b"").decode()
        end = [(res.get_value(0, 2 + j) or b"").decode() for j in range(len(key))] if count else None
        res.clear()
        return RangeSum(count, digest, cursor, end, count < limit, high)

    def read_range(self, table: str, after: Any, upto: Any) -> Chunk:
        """The rows with ``after`` < key <= ``upto`` (``None``: unbounded), in one consistent
        read."""
        try:
            return self._read(table, after, None, upto)
        except psycopg.OperationalError as exc:
            raise RetriableSourceError(f"lost the snapshot connection: {exc}") from exc
        except psycopg.Error as exc:
            raise FatalSourceError(f"cannot read {table}: {str(exc).strip()}", kind=Kind.SNAPSHOT_REFUSED, table=table) from exc

    def rows_from_text(self, table: str, rows: list[list[bytes | None]]) -> list[tuple[dict[str, Any] | None, dict[str, Any]]]:
        """Rows of the table's columns in text form (another database's copy with the same
        types) converted like the table's own: ``(key, after)`` each."""
        t = self._table(table)
        width = max((idx for idx, _, _ in t.columns), default=-1) + 1
        # the converter reads result columns by their index in the table's SELECT
        by_name = {c.name: j for j, c in enumerate(t.schema.columns)}
        full: list[list[bytes | None]] = []
        for row in rows:
            values: list[bytes | None] = [None] * width
            for idx, name, _ in t.columns:
                values[idx] = row[by_name[name]]
            full.append(values)
        result: list[tuple[dict[str, Any] | None, dict[str, Any]]] = t.convert(lambda i, j: full[i][j], len(full))
        return result

    def _chunk(self, t: _Table, res: Any, snap_text: str, high: Lsn, read_at: float, limit: int | None) -> Chunk:
        n = res.ntuples
        get = res.get_value
        rows = t.convert(get, n)
        cursor = None
        if n and t.key:
            cursor = [get(n - 1, j).decode() for j in t.key_index]
        res.clear()
        snapshot = _Snapshot(snap_text)
        token = f"{high}.{zlib.crc32(snap_text.encode()):08x}"
        block = {**t.block, "ts_ms": int(read_at * 1000)}
        done = limit is None or not t.key or n < limit
        return PgChunk(t.name, t.schema, rows, cursor, done, high, token, snapshot=snapshot, block=block)

    def close(self) -> None:
        conn = self._connection
        self._connection = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
