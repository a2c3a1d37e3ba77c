"""What a reload changes: the difference between the running configuration and the file.

Theory of operation. A reload (``cdc reload``, ``SIGHUP``, ``POST /reload``) first loads and
validates the file exactly as ``cdc run`` does; an invalid file raises :class:`ConfigError` and
nothing changes. :func:`plan` then compares the two configurations pipeline by pipeline (by
name): a pipeline only in the file is *added*, one only in the service is *removed*, one whose
settings differ in any way is *restarted* (alone, from its checkpoint; the tables added or
removed are named so that the reply and the log can say so), and the others are *unchanged*:
the service does not touch them. A pipeline whose only change is that its ``tables`` grew is
*grown*: the service first asks the running pipeline to take the new tables in place (the
publication or the binlog filter grows, the stream goes on, ``snapshot.mode: initial``
snapshots them); only when that is not possible does it restart the pipeline. A change that would make a pipeline another pipeline (its
replication slot renamed, its source moved to another server or database) is refused: that is
a new pipeline, to be started under a new name after ``cdc drop``. Settings of the service
itself (``api``, ``state``, ``log``) are not applied by a reload; the plan names them so the
reply can say a restart is needed.

This module is pure: it neither starts nor stops anything (the service applies the plan).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cdc.config import PipelineConfig, ServiceConfig
from cdc.errors import Refused


@dataclass
class ReloadPlan:
    added: list[PipelineConfig] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[PipelineConfig] = field(default_factory=list)
    #: pipelines whose only change is tables added (taken in place when the pipeline can)
    grown: list[PipelineConfig] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: per restarted pipeline, the tables added to / removed from its ``tables``
    tables_added: dict[str, list[str]] = field(default_factory=dict)
    tables_removed: dict[str, list[str]] = field(default_factory=dict)
    #: per pipeline grown in place, the id of the snapshot of its new tables (None: none)
    snapshots: dict[str, str | None] = field(default_factory=dict)
    #: service sections that changed but need a restart of the service (``api``, ``state``, ``log``)
    not_applied: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The reply of ``POST /reload`` (and what ``cdc reload`` prints)."""
        return {
            "added": [p.name for p in self.added],
            "removed": list(self.removed),
            "restarted": [p.name for p in self.restarted],
            "tables_added_in_place": [p.name for p in self.grown],
            "unchanged": list(self.unchanged),
            "tables_added": dict(self.tables_added),
            "tables_removed": dict(self.tables_removed),
            "snapshots": dict(self.snapshots),
            "not_applied": list(self.not_applied),
        }

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.restarted or self.grown)


def _tables(p: PipelineConfig) -> list[str]:
    return list(getattr(p.source, "tables", None) or [])


def _dsn_target(dsn: str) -> tuple[str, str, str]:
    """(host, port, database) of a DSN, URL or ``key=value`` form, without its credentials."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        try:
            port = str(parts.port or "")
        except ValueError:
            port = ""
        return (parts.hostname or "", port, parts.path.lstrip("/"))
    values: dict[str, str] = {}
    for item in dsn.split():
        key, _, value = item.partition("=")
        values[key.strip()] = value.strip().strip("'")
    return (values.get("host", ""), values.get("port", ""), values.get("dbname", ""))


def _identity_change(old: PipelineConfig, new: PipelineConfig) -> str | None:
    """Why ``new`` is another pipeline than ``old`` (same name), or None."""
    if old.source_type != new.source_type:
        return f"its source type changes from {old.source_type} to {new.source_type}"
    old_dsn, new_dsn = getattr(old.source, "dsn", ""), getattr(new.source, "dsn", "")
    if isinstance(old_dsn, str) and isinstance(new_dsn, str):
        before, after = _dsn_target(old_dsn), _dsn_target(new_dsn)
        if before != after:
            return (
                "its source moves to another server or database "
                f"({':'.join(x for x in before[:2] if x)}/{before[2]} → "
                f"{':'.join(x for x in after[:2] if x)}/{after[2]})"
            )
    if new.source_type == "postgres":
        before_slot = getattr(old.source, "slot", None) or f"cdc_{old.name}"
        after_slot = getattr(new.source, "slot", None) or f"cdc_{new.name}"
        if before_slot != after_slot:
            return f"its replication slot is renamed from {before_slot} to {after_slot}"
    return None


def _only_tables_grew(old: PipelineConfig, new: PipelineConfig) -> bool:
    """``new`` is ``old`` with tables added to ``tables`` and nothing else."""
    old_tables, new_tables = _tables(old), _tables(new)
    if not set(old_tables) < set(new_tables):
        return False
    if not dataclasses.is_dataclass(new.source) or isinstance(new.source, type):
        return False
    same = dataclasses.replace(new, source=dataclasses.replace(new.source, tables=list(old_tables)))
    return same == old


def plan(old: ServiceConfig, new: ServiceConfig, file: str = "CONFIG") -> ReloadPlan:
    """The changes from ``old`` (running) to ``new`` (the file, validated). Raises
    :class:`Refused` when a pipeline would become another one."""
    result = ReloadPlan()
    before = {p.name: p for p in old.pipelines}
    after = {p.name: p for p in new.pipelines}
    refused = []
    for name, p in after.items():
        if name in before:
            why = _identity_change(before[name], p)
            if why:
                refused.append(
                    f"pipeline {name}: {why}. That is a new pipeline: give it a new name (and "
                    f"`cdc drop {file} {name} --yes` the old one once it is removed from the file)"
                )
    if refused:
        raise Refused("; ".join(refused))
    for name, p in after.items():
        if name not in before:
            result.added.append(p)
        elif before[name] != p:
            old_tables, new_tables = _tables(before[name]), _tables(p)
            if _only_tables_grew(before[name], p):
                result.grown.append(p)
            else:
                result.restarted.append(p)
            grown = [t for t in new_tables if t not in old_tables]
            shrunk = [t for t in old_tables if t not in new_tables]
            if grown:
                result.tables_added[name] = grown
            if shrunk:
                result.tables_removed[name] = shrunk
        else:
            result.unchanged.append(name)
    result.removed = [name for name in before if name not in after]
    for section in ("api", "state", "log"):
        if getattr(old, section) != getattr(new, section):
            result.not_applied.append(section)
    return result
