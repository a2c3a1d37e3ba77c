"""The postgres sink's type mapping (pure): MySQL/MariaDB column types to PostgreSQL types, and
PostgreSQL type names checked before they are written into DDL."""

from __future__ import annotations

import pytest

from sinks.postgres.types import Unmappable, is_bytea, mysql_type, postgres_type, target_type


@pytest.mark.parametrize(
    ("mysql", "pg"),
    [
        ("tinyint", "int2"),
        ("smallint unsigned", "int4"),
        ("int", "int4"),
        ("int unsigned", "int8"),
        ("bigint", "int8"),
        ("bigint unsigned", "numeric(20,0)"),
        ("decimal(12,2)", "numeric(12,2)"),
        ("float", "float4"),
        ("double", "float8"),
        ("char(3)", "varchar(3)"),
        ("varchar(50)", "varchar(50)"),
        ("longtext", "text"),
        ("enum('a','b')", "text"),
        ("set('a','b,c')", "text[]"),
        ("varbinary(8)", "bytea"),
        ("mediumblob", "bytea"),
        ("bit(5)", "bit(5)"),
        ("date", "date"),
        ("time", "interval"),
        ("time(3)", "interval"),
        ("datetime", "timestamp(0)"),
        ("datetime(6)", "timestamp(6)"),
        ("timestamp(3)", "timestamptz(3)"),
        ("year", "int2"),
        ("json", "jsonb"),
        ("uuid", "uuid"),
        ("inet6", "inet"),
    ],
)
def test_mysql_types_map_as_documented(mysql: str, pg: str) -> None:
    assert mysql_type(mysql) == pg
    assert target_type(mysql, mysql=True) == pg


@pytest.mark.parametrize("mysql", ["point", "geometry", "multipolygon", "type:255", "vector(3)"])
def test_a_mysql_type_without_a_mapping_is_refused_by_name(mysql: str) -> None:
    with pytest.raises(Unmappable, match=mysql.replace("(", r"\(").replace(")", r"\)")):
        mysql_type(mysql)


def test_postgres_types_pass_as_written_and_nothing_else() -> None:
    for t in ("int4", "varchar(50)", "numeric(12,2)", "int4[]", "public.mood", '"my schema"."T"'):
        assert postgres_type(t) == t
    for bad in ("int4; DROP TABLE x", "text -- x", "int4)" + "'"):
        with pytest.raises(Unmappable):
            postgres_type(bad)
    assert is_bytea("bytea") and is_bytea("bytea[]") and not is_bytea("text")


@pytest.mark.parametrize(
    ("sqlstate", "retriable", "kind"),
    [
        (None, True, "sink_unavailable"),  # no SQLSTATE: the connection failed or was lost
        ("08006", True, "sink_unavailable"),
        ("57P01", True, "sink_unavailable"),  # admin shutdown
        ("53300", True, "sink_unavailable"),  # too many connections
        ("40P01", True, "sink_unavailable"),  # deadlock
        ("55P03", True, "sink_unavailable"),  # lock_timeout
        ("28P01", False, "sink_auth"),
        ("42501", False, "sink_auth"),
        ("23514", False, "sink_rejected"),
        ("22007", False, "sink_rejected"),
        ("42P01", False, "sink_rejected"),
    ],
)
def test_errors_are_classified_by_sqlstate(
    sqlstate: str | None, retriable: bool, kind: str
) -> None:
    import psycopg

    from sinks.postgres.sink import classify

    exc = (
        psycopg.OperationalError("gone")
        if sqlstate is None
        else psycopg.errors.lookup(sqlstate)("x")
    )
    err = classify(exc, "applying", "shop", event="pg:0/1:0", table="public.t")
    assert err.retriable is retriable and err.kind == kind
    if sqlstate in ("23514", "22007"):
        assert "pg:0/1:0" in err.message and "dead letters" in err.message
