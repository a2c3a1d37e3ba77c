"""The ``source:`` section of a pipeline with ``type: mysql``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdc import names
from cdc.plugin import setting


def _check_tables(tables: list[str]) -> str | None:
    if not tables:
        return "list at least one table"
    for t in tables:
        problem = names.problem(t)
        if problem:
            return problem.replace("schema.table", "database.table")
    return None


def _check_server_id(value: int | None) -> str | None:
    if value is not None and not 1 <= value <= 4294967295:
        return "must be from 1 to 4294967295"
    return None


def _check_heartbeat(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


@dataclass
class MySQLConfig:
    dsn: str = setting(
        doc="mysql://user:password@host:3306 (the user needs REPLICATION SLAVE, REPLICATION CLIENT, SELECT)",
        secret=True,
        example="mysql://cdc:${MYSQL_PASSWORD}@mysql:3306",
    )
    tables: list[str] = setting(doc="tables to capture, `database.table` (case as the server stores it; a part with a dot, "
        "a space or a quote in backticks or double quotes, `` `my db`.`my.table` ``)", check=_check_tables)
    server_id: int | None = setting(
        None,
        doc="unique replica server id; default derived from the pipeline name and the install id",
        check=_check_server_id,
    )
    heartbeat_s: float = setting(
        10, doc="checkpoint advance interval while the listed tables are idle", check=_check_heartbeat
    )
    positions: Literal["auto", "gtid", "file"] = setting(
        "auto",
        doc="how checkpoints resume: `gtid` (MariaDB GTID list / MySQL GTID set), `file` (binlog "
        "file and offset), `auto`: gtid when MySQL has gtid_mode=ON or MariaDB gtid_strict_mode=ON",
    )

    def __post_init__(self) -> None:
        # one canonical name per table, however the file quotes it (cdc.names)
        self.tables = [names.normalize(t) for t in self.tables]
