"""The ``sink:`` section of a pipeline with ``type: postgres``, and target-name templates.

This module imports no database client, so ``cdc validate`` and the docs generator can load it
without psycopg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cdc.plugin import setting
from cdc.settings import template_check

NAME_FIELDS = ("pipeline", "schema", "table")

_check_template = template_check(NAME_FIELDS, "name template")


def _check_dsn(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def render_name(template: str, **values: Any) -> str:
    """Fill a target-name template (the result is used as one quoted identifier)."""
    return template.format_map({k: str(v) for k, v in values.items()})


@dataclass
class PostgresSinkConfig:
    dsn: str = setting(
        doc="libpq connection string of the target database",
        secret=True,
        check=_check_dsn,
        example="postgresql://cdc:${TARGET_PASSWORD}@readmodel:5432/app",
    )
    schema: str = setting(
        "{schema}",
        doc="target schema, a template (`{schema}`, `{table}`, `{pipeline}`); created when missing",
        check=_check_template,
    )
    table: str = setting(
        "{table}",
        doc="target table, a template (`{schema}`, `{table}`, `{pipeline}`)",
        check=_check_template,
    )
    drop_columns: bool = setting(
        False, doc="drop a target column when the source drops it (default: keep it, nullable)"
    )
    deletes: Literal["hard", "soft"] = setting(
        "hard",
        doc="`hard` deletes target rows; `soft` keeps them with `__deleted = true` (a column "
        "the sink adds)",
    )
    adopt_tables: bool = setting(
        False,
        doc="use a target table that exists but was not created by this pipeline, when its "
        "shape is compatible (otherwise such a table is a fatal error naming the differences)",
    )
    timeout_s: float = setting(
        30,
        doc="connect timeout, and the longest a statement waits for a lock held by someone "
        "else before the batch is retried (never skipped)",
        check=_check_positive,
    )
