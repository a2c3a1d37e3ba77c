"""The one error tree of the service.

Every error the service raises on purpose is a :class:`CDCError`. The pipeline's retry loop
decides by type, never by message text:

* :class:`RetriableError` (``retriable = True``): a connection lost, a server restarting, a
  sink that is down. The pipeline closes everything, waits with backoff and resumes from its
  last checkpoint; nothing is lost because nothing past the checkpoint was confirmed.
* :class:`FatalError`: the pipeline cannot go on without a person (a dropped slot, a missing
  grant, a config the source refuses). It stops that pipeline only, with a message that says
  what happened and how to fix it.
* :class:`ConfigError`: the pipeline file is invalid; it carries the YAML path and line.

Errors carry the pipeline, table and position they concern so that logs and ``/pipelines``
can show them without parsing messages.
"""

from __future__ import annotations

from typing import Any


class CDCError(Exception):
    """Root of every error raised by cdc on purpose."""

    retriable: bool = False
    #: short machine-readable class shown by /healthz (e.g. "source_unreachable")
    kind: str = "error"

    def __init__(
        self,
        message: str,
        *,
        pipeline: str | None = None,
        table: str | None = None,
        position: Any = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.pipeline = pipeline
        self.table = table
        self.position = position
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        return self.message


class RetriableError(CDCError):
    """A passing fault: retry with backoff, resume from the checkpoint."""

    retriable = True
    kind = "retrying"


class FatalError(CDCError):
    """The pipeline cannot continue; a person must act. Stops only its own pipeline."""

    kind = "fatal"


class NotAvailableYet(FatalError):
    """A feature the contract describes but this build does not have yet."""

    kind = "not_available_yet"


class ConfigProblem:
    """One problem found in a pipeline file."""

    __slots__ = ("path", "line", "message")

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line is not None else file
        return f"{where}: {self.path or '(top)'}: {self.message}"

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"ConfigProblem({self.path!r}, {self.line!r}, {self.message!r})"


class ConfigError(CDCError):
    """The pipeline file is invalid. ``problems`` lists every problem found."""

    kind = "config"

    def __init__(self, file: str, problems: list[ConfigProblem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


class LeaseLost(RetriableError):
    """This instance no longer holds the pipeline's lease (several instances, ``state.dsn``):
    another instance took it over, or it could not be renewed before it expired. Nothing was
    written; the pipeline stops being active and goes back to ``standby``."""

    kind = "lease_lost"
