"""Table schemas and their versions.

Theory of operation: a source describes each table as it streams it (PostgreSQL: every
Relation message; MySQL: every TABLE_MAP) and asks the :class:`SchemaRegistry` for the version
that describes it at a given point of the stream. ``at`` is a tuple of integers that orders
points in delivery order (PostgreSQL: ``(commit_lsn, seq)``).

What makes a version (the *fingerprint*): column names, order and types with modifiers, the
key, and the pipeline's column exclusions, because all of these are applied before the
description reaches the registry, and the masks of the pipeline's ``mask`` transforms (the
definition names each masked column's mask, so changing a mask makes a new version).
``nullable`` is informational and not part of it.

Versions are kept in the state store with the point where each was first used. After a crash
the source replays from the checkpoint and describes tables again, possibly at points *before*
versions that were recorded in the lost window. The registry therefore compares a description
with the version in effect at that point (the newest recorded at or before it), not with the
newest of all: replaying events written before an ALTER keeps their old version instead of
minting a new one. A description that matches nothing gets the next number.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from cdc.state import CheckpointStore, StoredSchemaVersion


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    nullable: bool = True


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A table as the stream describes it, after ``columns.exclude`` is applied."""

    name: str  # "public.orders" / "shop.orders"
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    def fingerprint(self) -> str:
        return orjson.dumps(
            {"columns": [[c.name, c.type] for c in self.columns], "key": list(self.key)}
        ).decode()


@dataclass(frozen=True, slots=True, eq=False)
class SchemaVersion:
    """One recorded version of a table. Events point at it; sinks receive ``definition``."""

    name: str
    version: int
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    ref: dict[str, Any] = field(repr=False)  # {"name": ..., "version": ...}, shared by events
    definition: dict[str, Any] = field(repr=False)

    @property
    def qualified(self) -> str:
        """``name@version``: the schema's id in sinks (Kafka key, webhook ``schemas``)."""
        return f"{self.name}@{self.version}"

    @classmethod
    def build(
        cls, schema: TableSchema, version: int, masks: dict[str, str] | None = None
    ) -> SchemaVersion:
        return cls(
            name=schema.name,
            version=version,
            columns=schema.columns,
            key=schema.key,
            ref={"name": schema.name, "version": version},
            definition=definition_of(schema, version, masks),
        )

    @classmethod
    def from_definition(cls, d: dict[str, Any]) -> SchemaVersion:
        masks = {c["name"]: c["masked"] for c in d["columns"] if "masked" in c}
        return cls.build(schema_of_definition(d), int(d["version"]), masks or None)


def definition_of(
    schema: TableSchema, version: int, masks: dict[str, str] | None = None
) -> dict[str, Any]:
    columns: list[dict[str, Any]] = []
    for c in schema.columns:
        col: dict[str, Any] = {"name": c.name, "type": c.type, "nullable": c.nullable}
        if masks and c.name in masks:
            col["masked"] = masks[c.name]
        columns.append(col)
    return {"name": schema.name, "version": version, "columns": columns, "key": list(schema.key)}


def schema_of_definition(d: dict[str, Any]) -> TableSchema:
    return TableSchema(
        name=d["name"],
        columns=tuple(
            Column(c["name"], c["type"], bool(c.get("nullable", True))) for c in d["columns"]
        ),
        key=tuple(d.get("key") or ()),
    )


class SchemaRegistry:
    """Assigns and records schema versions for one pipeline. Thread-safe."""

    def __init__(
        self,
        store: CheckpointStore,
        pipeline: str,
        masks: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        #: per table, column -> mask (``hash``, ``redact``, ``truncate(n)``) of the transforms
        self._masks = masks or {}
        self._lock = threading.Lock()
        # table -> list of (at, version, fingerprint, SchemaVersion) in version order
        self._history: dict[str, list[tuple[tuple[int, ...], int, str, SchemaVersion]]] = {}
        for v in store.schema_versions(pipeline):
            self._history.setdefault(v.table, []).append(
                (v.at, v.version, v.fingerprint, SchemaVersion.from_definition(v.definition))
            )

    def resolve(self, schema: TableSchema, at: Sequence[int]) -> SchemaVersion:
        """The version describing ``schema`` at stream point ``at``; records a new one if needed.

        Called by a source's reader each time the stream describes a table (rarely: once per
        table per session and after DDL), never per row.
        """
        at_t = tuple(at)
        fp = schema.fingerprint()
        masks = self._masks.get(schema.name)
        if masks:
            present = {c.name for c in schema.columns}
            for column in masks:
                if column not in present:
                    from cdc.errors import FatalError, Kind

                    raise FatalError(
                        f"transforms: mask names column {column!r} of table {schema.name}, "
                        "which the table does not have (columns: "
                        f"{', '.join(sorted(present))}); fix the mask's columns",
                        pipeline=self._pipeline,
                        table=schema.name,
                        kind=Kind.CONFIG,
                    )
            fp = fp[:-1] + ',"masked":' + orjson.dumps(dict(sorted(masks.items()))).decode() + "}"
        with self._lock:
            history = self._history.setdefault(schema.name, [])
            in_effect = None
            for entry in history:
                if entry[0] <= at_t and (in_effect is None or entry[0] >= in_effect[0]):
                    in_effect = entry
            if in_effect is not None and in_effect[2] == fp:
                return in_effect[3]
            if in_effect is None:
                # Replaying from before the first recorded use: the earliest matching version.
                matching = [e for e in history if e[2] == fp]
                if matching:
                    return min(matching, key=lambda e: e[0])[3]
            version = (max(e[1] for e in history) + 1) if history else 1
            sv = SchemaVersion.build(schema, version, masks)
            self._store.add_schema_version(
                self._pipeline,
                StoredSchemaVersion(schema.name, version, at_t, fp, sv.definition, time.time()),
            )
            history.append((at_t, version, fp, sv))
            return sv

    def seed(self, definitions: Sequence[dict[str, Any]]) -> int:
        """Record versions a sink already holds (``cdc run --adopt``) so numbering continues
        after the highest of them. Returns how many were recorded."""
        added = 0
        with self._lock:
            for d in sorted(definitions, key=lambda d: (d["name"], int(d["version"]))):
                history = self._history.setdefault(d["name"], [])
                version = int(d["version"])
                if any(e[1] == version for e in history):
                    continue
                schema = schema_of_definition(d)
                sv = SchemaVersion.build(schema, version)
                at = (0, version)
                self._store.add_schema_version(
                    self._pipeline,
                    StoredSchemaVersion(
                        schema.name, version, at, schema.fingerprint(), sv.definition, time.time()
                    ),
                )
                history.append((at, version, schema.fingerprint(), sv))
                added += 1
        return added

    def latest(self, table: str) -> SchemaVersion | None:
        with self._lock:
            history = self._history.get(table)
            return history[-1][3] if history else None

    def all_versions(self) -> list[SchemaVersion]:
        with self._lock:
            return [e[3] for h in self._history.values() for e in h]
