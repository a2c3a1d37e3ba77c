"""Reading a postgres sink's target tables back for ``cdc verify`` (see :mod:`cdc.verify`).

Theory of operation. The target layout is the contract's (section 11): each source table
``schema.table`` is kept in the target table named by the sink's ``schema`` and ``table``
templates (``{schema}``, ``{table}``, ``{pipeline}``), with the same column names and types
(PostgreSQL sources) and the same primary key; with ``deletes: soft`` a deleted row stays with
``__deleted = true`` (such rows are not held rows here). The pipeline's position is the row of
``public.cdc_sink_positions``: its ``position`` is either the source position itself or a JSON
object whose ``source`` member is (both are read).

The view compares by checksums computed in SQL (:attr:`cdc.verify.SinkView.checksums`): for a
key range ``after < key <= upto`` it computes ``count(*)`` and ``md5`` over the ``md5`` of each
row's ``ROW(columns)::text`` in key order, exactly as the PostgreSQL source's snapshot reader
does on its side, on a session with the same settings as the source's (UTC, ISO dates,
``iso_8601`` intervals, all float digits, hex bytea), so equal rows give equal digests. Only a
range whose digests differ is read row by row (:meth:`PostgresTablesView.range_rows`, text
form, converted by the source's own converters). A target table that does not exist holds no
rows. Nothing is written to the target.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from cdc.errors import FatalError, FatalSinkError, RetriableSinkError
from cdc.log import mask_dsn
from cdc.names import split as split_table_name
from cdc.verify import SinkView

#: the session settings the PostgreSQL source reads with (text forms must match)
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3 "
    "-c bytea_output=hex -c client_encoding=UTF8"
)
POSITIONS = "public.cdc_sink_positions"
DELETED = "__deleted"


class PostgresTablesView(SinkView):
    """The target tables of one pipeline's postgres sink (see the module notes)."""

    checksums = True

    def __init__(self, dsn: str, schema: str, table: str, pipeline: str) -> None:
        self.dsn = dsn
        self.schema_template = schema
        self.table_template = table
        self.pipeline = pipeline
        self._conn: Any = None
        #: source table -> (target schema, target table, exists, has __deleted)
        self._targets: dict[str, tuple[str, str, bool, bool]] = {}

    # -- connection ------------------------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        try:
            conn = self._conn = psycopg.connect(
                self.dsn, autocommit=True, options=SESSION_OPTIONS, application_name="cdc verify"
            )
        except psycopg.Error as exc:
            raise RetriableSinkError(
                f"cannot connect to the postgres sink's database {mask_dsn(self.dsn)}: {str(exc).strip()}"
            ) from exc
        return conn

    def _query(self, text: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            rows: list[tuple[Any, ...]] = self._connect().execute(text, list(params)).fetchall()
        except psycopg.Error as exc:
            raise FatalSinkError(f"cannot read the postgres sink's tables: {str(exc).strip()}") from exc
        return rows

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass

    # -- position --------------------------------------------------------------------------------

    def position(self) -> str | None:
        if not self._query("SELECT to_regclass(%s) IS NOT NULL", (POSITIONS,))[0][0]:
            return None
        rows = self._query(f"SELECT position FROM {POSITIONS} WHERE pipeline = %s", (self.pipeline,))
        text = rows[0][0] if rows else None
        if not text:
            return None
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            return str(text)
        if isinstance(doc, dict):
            source = doc.get("source")
            return str(source) if source else None
        return str(text)

    # -- tables ----------------------------------------------------------------------------------

    def _target(self, table: str) -> tuple[str, str, bool, bool]:
        found = self._targets.get(table)
        if found is not None:
            return found
        schema, name = split_table_name(table)

        def render(template: str) -> str:
            return template.replace("{schema}", schema).replace("{table}", name).replace("{pipeline}", self.pipeline)

        t_schema, t_name = render(self.schema_template), render(self.table_template)
        rows = self._query(
            "SELECT c.oid IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid "
            "AND a.attname = %s AND NOT a.attisdropped) FROM (SELECT 1) x LEFT JOIN pg_class c ON "
            "c.relname = %s AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s)",
            (DELETED, t_name, t_schema),
        )
        exists, soft = bool(rows[0][0]), bool(rows[0][1])
        found = self._targets[table] = (t_schema, t_name, exists, soft)
        return found

    def _where(self, table: str, key: list[str], key_types: list[str], after: Any, upto: Any) -> tuple[Any, list[Any]]:
        from psycopg import sql

        t_schema, t_name, _, soft = self._target(table)
        key_sql = sql.SQL(", ").join(sql.Identifier(k) for k in key)
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        for bound, op in ((after, ">"), (upto, "<=")):
            if bound is None:
                continue
            casts = sql.SQL(", ").join(sql.SQL(f"%s::{ty}") for ty in key_types)
            conditions.append(sql.SQL("({}) {} ({})").format(key_sql, sql.SQL(op), casts))
            params.extend(bound)
        if soft:
            conditions.append(sql.SQL("NOT {}").format(sql.Identifier(DELETED)))
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        target = sql.SQL("{}.{}").format(sql.Identifier(t_schema), sql.Identifier(t_name))
        return sql.SQL("FROM {}{}").format(target, where), params

    def range_checksum(
        self, table: str, columns: list[str], key: list[str], key_types: list[str], after: Any, upto: Any
    ) -> tuple[int, str]:
        from psycopg import sql

        if not self._target(table)[2]:
            return 0, ""
        source, params = self._where(table, key, key_types, after, upto)
        ident = sql.Identifier
        order = sql.SQL(", ").join(ident(k) for k in key) if key else sql.SQL("1")
        query = sql.SQL("SELECT count(*), coalesce(md5(string_agg(md5(ROW({})::text), '' ORDER BY {})), '') {}").format(
            sql.SQL(", ").join(ident(c) for c in columns), order, source
        )
        rows = self._query(query.as_string(self._connect()), params)
        return int(rows[0][0]), str(rows[0][1])

    def range_rows(
        self, table: str, columns: list[str], key: list[str], key_types: list[str], after: Any, upto: Any
    ) -> list[list[bytes | None]]:
        from psycopg import sql

        if not self._target(table)[2]:
            return []
        source, params = self._where(table, key, key_types, after, upto)
        ident = sql.Identifier
        query = sql.SQL("SELECT {} {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(ident(c)) for c in columns), source
        )
        rows = self._query(query.as_string(self._connect()), params)
        return [[None if v is None else str(v).encode() for v in row] for row in rows]

    # -- the fold interface is not used for a view that compares by checksums -------------------

    def refresh(self) -> None:
        """Nothing to read ahead: every question is answered by the database."""

    def rows(self, table: str) -> dict[bytes, dict[str, Any]]:
        raise FatalError("the postgres sink is compared by checksums")

    def whole_rows(self, table: str) -> Counter[bytes]:
        raise FatalError("the postgres sink is compared by checksums")

    def whole_rows_at(self, table: str, before: Callable[[dict[str, Any]], bool]) -> Counter[bytes]:
        raise FatalError("the postgres sink is compared by checksums")

    def watch_whole(self, table: str) -> None:
        raise FatalError("the postgres sink is compared by checksums")

    def watch(self, table: str, ids: Iterable[bytes]) -> None:
        raise FatalError("the postgres sink is compared by checksums")

    def history(self, table: str, rid: bytes) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        raise FatalError("the postgres sink is compared by checksums")
