"""The ``source:`` section of a pipeline with ``type: postgres``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdc import names
from cdc.plugin import setting

_IDENT_RE = re.compile(r"^[a-z0-9_]{1,63}$")


def _check_tables(tables: list[str]) -> str | None:
    if not tables:
        return "list at least one table"
    for t in tables:
        problem = names.problem(t)
        if problem:
            return problem
    if len({names.canonical(t) for t in tables}) != len(tables):
        return "a table is listed twice"
    return None


def _check_ident(value: str | None) -> str | None:
    if value is not None and not _IDENT_RE.match(value):
        return "must match [a-z0-9_]{1,63}"
    return None


def _check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _check_dsn(value: str) -> str | None:
    if not (value.startswith("postgresql://") or value.startswith("postgres://") or "=" in value):
        return "expected a libpq connection URI (postgresql://user:password@host:5432/db) or key=value string"
    return None


@dataclass
class PostgresConfig:
    dsn: str = setting(
        doc="libpq connection string of the database (the user needs REPLICATION and SELECT)",
        secret=True,
        check=_check_dsn,
        example="postgresql://cdc:${PGPASSWORD}@db:5432/shop",
    )
    tables: list[str] = setting(
        doc="tables to capture, `schema.table` (case-sensitive; a part with a dot, a space or a "
        "quote in double quotes, `\"my schema\".\"my \"\"table\"\"\"`); a partitioned table by its root",
        check=_check_tables,
        example=["public.orders", "public.customers"],
    )
    slot: str | None = setting(None, doc="replication slot name; default `cdc_<pipeline>`", check=_check_ident)
    publication: str | None = setting(
        None, doc="publication name; default `cdc_<pipeline>`", check=_check_ident
    )
    heartbeat_s: float = setting(
        10,
        doc="while no event is in flight, the checkpoint and the slot advance at least this often",
        check=_check_positive,
    )
    max_retained_wal_mb: int = setting(
        10240, doc="/healthz turns 503 when the slot retains more WAL than this", check=_check_positive
    )

    def __post_init__(self) -> None:
        # one canonical name per table, however the file quotes it (cdc.names)
        self.tables = [names.normalize(t) for t in self.tables]
