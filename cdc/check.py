"""``cdc check``: every problem of every pipeline at once, before anything runs.

Theory of operation. Start-time checks stop at the first problem (a pipeline cannot run past
it), which made adding one table a cycle of start, read the error, fix, start again. This
command asks each plugin for *all* its problems instead: :meth:`cdc.plugin.Source.check` and
:meth:`cdc.plugin.Sink.check` connect, look, and return a list of errors whose messages name
the fix. The plugins reuse the very functions their ``open`` uses (the PostgreSQL source's
catalog problems, the MySQL source's binlog and grant checks), so the two never disagree; the
core only orchestrates and imports no driver. Nothing is created, altered or dropped: the state
store is opened read-only (an in-memory one when there is no state yet).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cdc import names, registry
from cdc.config import PipelineConfig, ServiceConfig
from cdc.errors import CDCError
from cdc.log import get_logger, redact
from cdc.plugin import PluginContext
from cdc.state import CheckpointStore, SQLiteStore


@dataclass
class Finding:
    """One problem: where (``source``, ``sink``, ``state``), its kind and the message with
    its fix."""

    where: str
    kind: str
    message: str


@dataclass
class PipelineReport:
    name: str
    findings: list[Finding] = field(default_factory=list)


def _finding(where: str, exc: CDCError) -> Finding:
    kind = getattr(exc.kind, "value", exc.kind)
    return Finding(where, str(kind), redact(str(exc)))


def _state_findings(config: ServiceConfig) -> list[Finding]:
    if config.state.dsn:
        return []
    folder = os.path.dirname(os.path.abspath(config.state.path))
    if not os.path.isdir(folder):
        return [Finding("state", "config", f"state.path {config.state.path}: the folder {folder} "
                        "does not exist; create it or point state.path at an existing folder")]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [Finding("state", "config", f"state.path {config.state.path}: this user cannot "
                        f"write in {folder}; give it write permission")]
    return []


def named_columns(p: PipelineConfig) -> dict[str, list[tuple[str, list[str]]]]:
    """The columns the pipeline file names per table, with the setting naming them:
    ``columns.exclude`` and each ``mask`` transform's ``columns``. A source's :meth:`check`
    compares them with the table's real columns (see :func:`unknown_columns`)."""
    named: dict[str, list[tuple[str, list[str]]]] = {}
    for table, cols in p.columns.exclude.items():
        named.setdefault(names.normalize(table), []).append(("columns.exclude", list(cols)))
    for i, item in enumerate(p.transforms or []):
        settings = item.get("mask") if isinstance(item, dict) else None
        columns = settings.get("columns") if isinstance(settings, dict) else None
        if not isinstance(columns, dict):
            continue
        for table, cols in columns.items():
            if isinstance(cols, dict):
                named.setdefault(names.normalize(str(table)), []).append(
                    (f"transforms[{i}].mask.columns", [str(c) for c in cols]))
    return named


def unknown_columns(p: PipelineConfig, table: str, have: set[str] | frozenset[str]) -> list[str]:
    """One message per setting of ``p`` that names columns ``table`` does not have (its real
    columns are ``have``), each naming the fix."""
    messages = []
    for where, cols in named_columns(p).get(table, []):
        missing = sorted(set(cols) - set(have))
        if missing:
            messages.append(
                f"{where} names columns that {table} does not have: {', '.join(missing)} "
                "(names are exact and case-sensitive); fix or remove them"
            )
    return messages


def _open_store(config: ServiceConfig) -> CheckpointStore:
    from cdc.service import open_store

    try:
        return open_store(config, readonly=True)
    except CDCError:
        return SQLiteStore(":memory:")  # no state yet: nothing recorded, nothing created


def check_pipeline(p: PipelineConfig, config: ServiceConfig, store: CheckpointStore) -> PipelineReport:
    report = PipelineReport(p.name)
    ctx = PluginContext(p, store, get_logger(pipeline=p.name), config.config_dir,
                        config_file=config.file)
    for where, type_name in (("source", p.source_type), ("sink", p.sink_type)):
        try:
            cls = registry.load(where, type_name)
        except CDCError as exc:
            report.findings.append(_finding(where, exc))
            continue
        if not getattr(cls, "available", True):
            report.findings.append(Finding(where, "not_available", f"{where} type {type_name!r} "
                                           "is not available yet in this build of cdc"))
            continue
        try:
            if where == "source":
                problems = cls.check(p.source, ctx)
            else:
                problems = cls(p.sink, ctx).check()
        except CDCError as exc:
            problems = [exc]
        report.findings += [_finding(where, e) for e in problems]
    return report


def check(config: ServiceConfig, only: str | None = None) -> list[PipelineReport]:
    """A report per pipeline (or the one named ``only``)."""
    store = _open_store(config)
    state = _state_findings(config)
    try:
        reports = []
        for p in config.pipelines:
            if only is not None and p.name != only:
                continue
            report = check_pipeline(p, config, store)
            report.findings[:0] = state
            reports.append(report)
        return reports
    finally:
        store.close()
