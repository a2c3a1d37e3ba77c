"""PostgreSQL read-model sink (``type: postgres``): not built yet.

Its settings are validated (so a pipeline file written for it passes ``cdc validate``) and
``cdc run`` refuses it with a "not available yet" error until the sink lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from cdc.events import ChangeEvent
from cdc.plugin import PluginContext, Sink, setting
from cdc.schema import SchemaVersion


@dataclass
class PostgresSinkConfig:
    dsn: str = setting(
        doc="libpq connection string of the target database",
        secret=True,
        example="postgresql://cdc:${TARGET_PASSWORD}@readmodel:5432/app",
    )
    schema: str = setting("{schema}", doc="target schema, a template (`{schema}`, `{table}`, `{pipeline}`)")
    table: str = setting("{table}", doc="target table, a template")
    drop_columns: bool = setting(False, doc="drop a target column when the source drops it")
    deletes: Literal["hard", "soft"] = setting(
        "hard", doc="`soft`: keep deleted rows with `__deleted = true`"
    )


class PostgresSink(Sink):
    """Placeholder: validated, refused by ``cdc run`` (``available = False``)."""

    Config = PostgresSinkConfig
    available: ClassVar[bool] = False
    #: a read model takes rows, not records: `format` does not apply (section 11)
    formats: ClassVar[tuple[str, ...]] = ("cdc",)

    def __init__(self, config: Any, ctx: PluginContext) -> None:  # pragma: no cover - refused first
        super().__init__(config, ctx)

    def open(self, resume: str | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def write_schema(self, schema: SchemaVersion) -> None:  # pragma: no cover
        raise NotImplementedError

    def write(self, events: Sequence[ChangeEvent]) -> None:  # pragma: no cover
        raise NotImplementedError

    def flush(self) -> str | None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        pass


__all__ = ["PostgresSink", "PostgresSinkConfig"]
