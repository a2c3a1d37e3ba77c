"""Target column types: PostgreSQL types as the source names them, and the MySQL mapping.

Pure functions (no database): :func:`target_type` turns a schema definition's column type into
the PostgreSQL type the sink creates. A PostgreSQL source's type is used as written
(``int4``, ``varchar(50)``, ``numeric(12,2)``, ``int4[]``, ``public.mood``); a MySQL or MariaDB
source's type goes through :data:`MYSQL_TYPES`, documented in docs/postgres-sink.md. A MySQL
type without a mapping raises :class:`Unmappable`, which the sink turns into a fatal error
naming the column.

Values need no conversion in Python except one: binary columns arrive as base64 (section 4 of
the contract) and PostgreSQL's ``bytea`` input takes hex, so :func:`bytea_columns` names the
columns whose values the sink rewrites as ``\\x<hex>``. Every other value is handed to
PostgreSQL in its JSON form and read by ``json_populate_recordset``, which calls each column
type's own input function (ISO dates and timestamps, ISO 8601 intervals, ``NaN``, arrays, ...).
"""

from __future__ import annotations

import re

#: what a type name may contain before it is written into DDL (no statement separators)
_SAFE_TYPE = re.compile(r'^[A-Za-z0-9_ ."(),\[\]]+$')

_DECIMAL = re.compile(r"^(?:decimal|numeric|dec|fixed)\((\d+),(\d+)\)$")
_SIZED = re.compile(r"^(char|varchar|binary|varbinary|bit|time|datetime|timestamp)\((\d+)\)$")


class Unmappable(ValueError):
    """A source column type the sink has no target type for."""


#: MySQL / MariaDB type (as the source names it, without a size) -> PostgreSQL type
MYSQL_TYPES: dict[str, str] = {
    "tinyint": "int2",
    "tinyint unsigned": "int2",
    "smallint": "int2",
    "smallint unsigned": "int4",
    "mediumint": "int4",
    "mediumint unsigned": "int4",
    "int": "int4",
    "int unsigned": "int8",
    "bigint": "int8",
    "bigint unsigned": "numeric(20,0)",
    "float": "float4",
    "double": "float8",
    "decimal(p,s)": "numeric(p,s)",
    "char(n)": "varchar(n)",
    "varchar(n)": "varchar(n)",
    "tinytext": "text",
    "text": "text",
    "mediumtext": "text",
    "longtext": "text",
    "enum(...)": "text",
    "set(...)": "text[]",
    "binary(n)": "bytea",
    "varbinary(n)": "bytea",
    "tinyblob": "bytea",
    "blob": "bytea",
    "mediumblob": "bytea",
    "longblob": "bytea",
    "bit(n)": "bit(n)",
    "date": "date",
    "time(n)": "interval",
    "datetime(n)": "timestamp(n)",
    "timestamp(n)": "timestamptz(n)",
    "year": "int2",
    "json": "jsonb",
    "uuid": "uuid",
    "inet4": "inet",
    "inet6": "inet",
}

#: MySQL spatial types: no mapping (PostGIS is not assumed); exclude such columns
MYSQL_SPATIAL = frozenset(
    {
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
        "geomcollection",
    }
)


def mysql_type(source: str) -> str:
    """The PostgreSQL type for a MySQL/MariaDB column type (see :data:`MYSQL_TYPES`)."""
    t = " ".join(source.strip().lower().replace(" zerofill", "").split())
    if t in MYSQL_TYPES:
        return MYSQL_TYPES[t]
    m = _DECIMAL.match(t)
    if m:
        return f"numeric({m.group(1)},{m.group(2)})"
    if t.startswith("enum("):
        return "text"
    if t.startswith("set("):
        return "text[]"
    m = _SIZED.match(t)
    if m:
        kind, n = m.group(1), int(m.group(2))
        if kind in ("char", "varchar"):
            return f"varchar({n})" if n > 0 else "text"
        if kind in ("binary", "varbinary"):
            return "bytea"
        if kind == "bit":
            return f"bit({n})"
        if kind == "time":
            return "interval"
        if kind == "datetime":
            return f"timestamp({min(n, 6)})"
        return f"timestamptz({min(n, 6)})"
    if t in ("time",):
        return "interval"
    if t in ("datetime",):
        return "timestamp(0)"
    if t in ("timestamp",):
        return "timestamptz(0)"
    if t.split("(")[0] in MYSQL_SPATIAL:
        raise Unmappable(
            f"the MySQL spatial type {source!r} has no PostgreSQL mapping (PostGIS is not "
            "assumed); leave the column out with columns.exclude"
        )
    raise Unmappable(f"the MySQL type {source!r} has no PostgreSQL mapping")


def postgres_type(source: str) -> str:
    """A PostgreSQL source's type, checked to be a type name and nothing else."""
    if not _SAFE_TYPE.match(source) or "--" in source:
        raise Unmappable(f"the type {source!r} is not a PostgreSQL type name")
    return source


def target_type(source: str, mysql: bool) -> str:
    """The target type of a source column type (raises :class:`Unmappable`)."""
    return mysql_type(source) if mysql else postgres_type(source)


def is_bytea(target: str) -> bool:
    """Whether values of this target type arrive as base64 and go in as hex."""
    return target in ("bytea", "bytea[]", "_bytea")
