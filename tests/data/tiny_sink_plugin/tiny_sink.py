"""A tiny cdc sink plugin: every event as one JSON line in ``PATH/events.jsonl``.

It shows the whole plugin surface: a ``Config`` dataclass declared with
:func:`cdc.plugin.setting` (validated by ``cdc validate`` like the built-in sections), and a
:class:`cdc.plugin.Sink` that makes what it was given durable in ``flush``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cdc.errors import RetriableError
from cdc.plugin import PluginContext, Sink, setting


def _check_prefix(value: str) -> str | None:
    return None if value.isidentifier() else "must be an identifier"


@dataclass
class TinyConfig:
    path: str = setting(doc="folder for events.jsonl and schemas.jsonl", path=True)
    prefix: str = setting("tiny", doc="added to each line as the `sink` field", check=_check_prefix)


class TinySink(Sink):
    Config = TinyConfig

    def __init__(self, config: TinyConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.events_path = os.path.join(config.path, "events.jsonl")
        self.schemas_path = os.path.join(config.path, "schemas.jsonl")
        self._events: Any = None
        self._schemas: Any = None

    def open(self, resume: str | None) -> None:
        os.makedirs(self.config.path, exist_ok=True)
        self._events = open(self.events_path, "ab")
        self._schemas = open(self.schemas_path, "ab")
        if resume is not None:  # drop what was written after the checkpoint: it comes again
            self._events.truncate(int(resume))

    def write_schema(self, schema: Any) -> None:
        self._schemas.write(orjson.dumps(schema.definition) + b"\n")

    def write(self, events: Sequence[Any]) -> None:
        for e in events:
            doc = orjson.loads(e.json)
            doc["sink"] = self.config.prefix
            self._events.write(orjson.dumps(doc) + b"\n")

    def flush(self) -> str | None:
        try:
            for fh in (self._schemas, self._events):
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise RetriableError(f"tiny sink: {exc}", kind="sink_io") from exc
        return str(self._events.tell())

    def close(self) -> None:
        for fh in (self._events, self._schemas):
            if fh is not None:
                fh.close()
        self._events = self._schemas = None

    def holds_events(self) -> bool:
        return os.path.exists(self.events_path) and os.path.getsize(self.events_path) > 0


class TagTransform:
    """A tiny transform plugin (entry point group ``cdc.transforms``): sets ``after[field]``
    to ``value`` on every event it sees, and with ``copies: 2`` turns each event into two."""

    @classmethod
    def check(cls, settings: dict[str, Any]) -> str | None:
        if not isinstance(settings.get("field"), str):
            return "tag needs 'field' (a column name)"
        return None

    def __init__(self, settings: dict[str, Any], pipeline: str) -> None:
        self.field = settings["field"]
        self.value = settings.get("value", pipeline)
        self.copies = int(settings.get("copies", 1))

    def apply(self, event: Any) -> Any:
        from cdc.transforms import derive

        if event.after is None:
            return event
        tagged = derive(event, after={**event.after, self.field: self.value})
        return [tagged] * self.copies if self.copies > 1 else tagged
