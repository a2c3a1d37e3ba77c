"""Small, real change events and a plugin context for driving a sink directly in tests
(``open``/``write``/``flush`` against a real broker, without a source)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import structlog

from cdc.events import ChangeEvent
from cdc.plugin import PluginContext
from cdc.schema import Column, SchemaVersion, TableSchema

ORDERS = SchemaVersion.build(
    TableSchema("public.orders", (Column("id", "int4", False), Column("status", "text")), ("id",)),
    1,
)
#: a table without a key (REPLICA IDENTITY FULL)
LOG = SchemaVersion.build(TableSchema("public.log", (Column("line", "text"),), ()), 1)


def source(table: str = "orders") -> dict[str, Any]:
    return {
        "connector": "postgres",
        "pipeline": "shop",
        "db": "shop",
        "schema": "public",
        "table": table,
        "ts_ms": 1764297600100,
        "tx": "7841",
        "lsn": "0/16B37C8",
        "snapshot": False,
    }


_ORDERS_SOURCE = source("orders")
_LOG_SOURCE = source("log")


def event(n: int, op: str = "c") -> ChangeEvent:
    """The n-th change of public.orders (id n)."""
    after = None if op in ("d", "t") else {"id": n, "status": f"s{n}"}
    return ChangeEvent(
        f"pg:0/{n:X}:0",
        op,
        1764297600123,
        _ORDERS_SOURCE,
        (f"0/{n:X}", 0, True),
        ORDERS,
        None if op == "t" else {"id": n},
        None,
        after,
    )


def large(n: int, size: int) -> ChangeEvent:
    """The n-th insert into public.orders with a ``status`` of ``size`` bytes."""
    return ChangeEvent(
        f"pg:0/{n:X}:0",
        "c",
        1764297600123,
        _ORDERS_SOURCE,
        (f"0/{n:X}", 0, True),
        ORDERS,
        {"id": n},
        None,
        {"id": n, "status": "x" * size},
    )


def keyless(n: int) -> ChangeEvent:
    return ChangeEvent(
        f"pg:1/{n:X}:0",
        "c",
        1764297600123,
        _LOG_SOURCE,
        (f"1/{n:X}", 0, True),
        LOG,
        None,
        None,
        {"line": f"line {n}"},
    )


def context(name: str = "shop") -> PluginContext:
    return PluginContext(
        SimpleNamespace(name=name, source=SimpleNamespace(tables=["public.orders"])),  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        log=structlog.get_logger(),
        config_dir="/",
    )
