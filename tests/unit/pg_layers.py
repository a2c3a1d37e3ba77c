"""Shared pieces of the PostgreSQL layer tests: catalog facts, a schema registry and a log in
memory, and a decoder wired to them (no server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdc.schema import SchemaVersion, TableSchema
from sources.postgres.decoder import PgDecoder
from sources.postgres.pgoutput import Relation
from sources.postgres.relations import RelationFacts, TypeFacts

TYPES = {
    23: TypeFacts(23, "int4", "b", 0, 0, ",", None),
    25: TypeFacts(25, "text", "b", 0, 0, ",", None),
    1043: TypeFacts(1043, "varchar", "b", 0, 0, ",", "pg_catalog.varchartypmodout"),
    1007: TypeFacts(1007, "_int4", "b", 23, 0, ",", None),
    1015: TypeFacts(1015, "_varchar", "b", 1043, 0, ",", "pg_catalog.varchartypmodout"),
    700: TypeFacts(700, "mood", "e", 0, 0, ",", None),  # an enum (OID made up)
    701: TypeFacts(701, "posint", "d", 0, 23, ",", None),  # a domain over int4 (OID made up)
}
#: modifier texts as varchartypmodout prints them (atttypmod = length + 4)
TYPMODS = {(1043, 24): "(20)", (1043, 54): "(50)"}


def facts(key: Sequence[str] | None = None, not_null: Sequence[str] = ()) -> RelationFacts:
    return RelationFacts(TYPES, key, frozenset(not_null), TYPMODS)


class Registry:
    """resolve(schema, at) like cdc.schema.SchemaRegistry's, in memory: a new version number
    per new description of a table; every call is recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[TableSchema, tuple[int, ...]]] = []
        self.versions: dict[tuple[str, str], SchemaVersion] = {}

    def resolve(self, schema: TableSchema, at: Sequence[int]) -> SchemaVersion:
        self.calls.append((schema, tuple(at)))
        fp = (schema.name, schema.fingerprint())
        if fp not in self.versions:
            n = 1 + sum(1 for name, _ in self.versions if name == schema.name)
            self.versions[fp] = SchemaVersion.build(schema, n)
        return self.versions[fp]


class Log:
    """The part of a structlog logger the decoder uses, recording what it is told."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.records.append(("warning", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.records.append(("info", event, kw))

    def events(self, level: str = "warning") -> list[str]:
        return [e for lv, e, _ in self.records if lv == level]


def make_decoder(
    tables: Sequence[str],
    catalog: dict[str, RelationFacts] | None = None,
    *,
    listed: dict[int, str] | None = None,
    exclude: dict[str, set[str]] | None = None,
    registry: Registry | None = None,
    log: Log | None = None,
    renames: list[tuple[str, str]] | None = None,
) -> PgDecoder:
    """A decoder whose Relation facts come from ``catalog`` (by table name; the built-in types
    and no key when absent), at a fixed clock of 1,700,000,000 s."""
    catalog = catalog or {}

    def facts_of(msg: Relation) -> RelationFacts:
        return catalog.get(f"{msg.namespace}.{msg.name}") or facts()

    def record(old: str, new: str) -> None:
        if renames is not None:
            renames.append((old, new))

    return PgDecoder(
        pipeline="p1",
        database="shop",
        tables=tables,
        listed=listed or {},
        facts=facts_of,
        resolve=(registry or Registry()).resolve,
        log=log or Log(),
        record_rename=record,
        exclude=exclude,
        clock=lambda: 1_700_000_000.0,
    )
