"""MySQL / MariaDB binlog source (not available yet: its settings validate, `cdc run` refuses)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cdc.errors import NotAvailableYet
from cdc.plugin import Batch, Source, setting

_TABLE_RE = re.compile(r"^[^.\s]+\.[^.\s]+$")


def _check_tables(tables: list[str]) -> str | None:
    if not tables:
        return "list at least one table"
    for t in tables:
        if not _TABLE_RE.match(t):
            return f"{t!r} is not database.table"
    return None


def _check_server_id(value: int | None) -> str | None:
    if value is not None and not 1 <= value <= 4294967295:
        return "must be from 1 to 4294967295"
    return None


@dataclass
class MySQLConfig:
    dsn: str = setting(
        doc="mysql://user:password@host:3306 (the user needs REPLICATION SLAVE, REPLICATION CLIENT, SELECT)",
        secret=True,
        example="mysql://cdc:${MYSQL_PASSWORD}@mysql:3306",
    )
    tables: list[str] = setting(doc="tables to capture, `database.table`", check=_check_tables)
    server_id: int | None = setting(
        None,
        doc="unique replica server id; default derived from the pipeline name and the install id",
        check=_check_server_id,
    )
    heartbeat_s: float = setting(10, doc="checkpoint advance interval while idle")


class MySQLSource(Source):
    Config = MySQLConfig
    available = False
    connector = "mysql"

    def open(self, checkpoint: str | None, *, adopt: bool = False) -> None:
        raise NotAvailableYet(
            "the mysql source is not available yet in this build of cdc",
            pipeline=self.ctx.name,
        )

    def read(self, timeout: float) -> Batch | None:  # pragma: no cover - never opened
        return None

    def ack(self, position: Any) -> None:  # pragma: no cover - never opened
        pass

    def close(self) -> None:
        pass
