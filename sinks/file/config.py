"""The ``sink:`` section of a pipeline with ``type: file``."""

from __future__ import annotations

from dataclasses import dataclass

from cdc.plugin import setting


def _check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


@dataclass
class FileConfig:
    path: str = setting(doc="folder for events-NNNNNN.jsonl and schemas.jsonl; relative to the config file",
                        example="./out/shop", path=True)
    rotate_mb: float = setting(128, doc="start a new events file past this size", check=_check_positive)
