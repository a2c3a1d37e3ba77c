"""The postgres sink under the sink contract suite: a PostgreSQL 18 (the embedded wheel's) of
its own as the target.

This sink keeps tables, not events: the harness says so (``keeps_events = False``) and gives
the suite the target's rows and the position the sink stored; the suite checks those instead
of an event list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

from cdc_local.postgres import LocalPostgres, find_embedded_bindir
from tests.sink_harness import SinkHarness


class PostgresSinkHarness(SinkHarness):
    name = "postgres"
    keeps_events = False

    def __init__(self, tmp: Path) -> None:
        self.server = LocalPostgres(find_embedded_bindir())
        self.server.start()
        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE model")
        self.dsn = self.server.dsn("model")

    def sink_config(self) -> dict[str, Any]:
        return {"type": "postgres", "dsn": self.dsn}

    def rows(self, table: str) -> dict[bytes, dict[str, Any]]:
        """The target table's rows by key (``{"id": ...}``, as tests.helpers.fold keys them)."""
        schema, _, name = table.partition(".")
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                found = conn.execute(
                    sql.SQL("SELECT to_jsonb(t) FROM {}.{} t").format(
                        sql.Identifier(schema), sql.Identifier(name)
                    )
                ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
        return {orjson.dumps({"id": r["id"]}, option=orjson.OPT_SORT_KEYS): r for (r,) in found}

    def position(self) -> dict[str, Any] | None:
        """What the sink stored in public.cdc_sink_positions (JSON), or None."""
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(
                    "SELECT position FROM public.cdc_sink_positions WHERE pipeline = 'contract'"
                ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return orjson.loads(row[0]) if row else None

    def columns(self, table: str) -> list[str]:
        schema, _, name = table.partition(".")
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                    "AND table_name = %s ORDER BY ordinal_position",
                    (schema, name),
                ).fetchall()
            ]

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """A lock held on the sink's position table inside the block (as a long maintenance
        operation would): no batch can commit, every attempt times out and is retried."""
        conn = psycopg.connect(self.dsn)
        conn.execute("LOCK TABLE public.cdc_sink_positions IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()
            conn.close()

    def close(self) -> None:
        self.server.cleanup()
