"""Logging: structlog to stderr, with secrets masked.

``log.format: auto`` (the default) renders console lines when stderr is a terminal and JSON
lines otherwise (a service manager, a pipe, a file). Writing to stderr never raises: when its
pipe is closed (the reader went away), log lines are dropped instead of killing the thread
that logged them.

Every secret value found in the pipeline file (DSN passwords, tokens, webhook secrets) is
registered with :func:`add_secrets`; a processor replaces any occurrence of one in any logged
string (messages, fields, rendered exceptions) with ``***``. The service never logs per event.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None

_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def add_secrets(values: Iterable[str]) -> None:
    """Register values that must never appear in any output."""
    global _pattern
    with _secrets_lock:
        _secrets.update(v for v in values if v and len(v) >= 1)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


def redact(text: str) -> str:
    """``text`` with registered secrets and DSN passwords masked."""
    text = _DSN_PASSWORD.sub(r"\1***\3", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub("***", text)
    return text


def mask_dsn(dsn: str) -> str:
    """A DSN fit for display: the password replaced by ``***``."""
    return redact(dsn)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    return {k: _redact_value(v) for k, v in event_dict.items()}


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Stderr:
    """``sys.stderr`` (looked up at each write) that never raises: a closed pipe must not stop
    the service; the lines are dropped."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def resolve_format(fmt: str) -> str:
    """``auto`` → ``console`` on a terminal, ``json`` otherwise; others as given."""
    if fmt != "auto":
        return fmt
    try:
        return "console" if sys.stderr.isatty() else "json"
    except (OSError, ValueError):
        return "json"


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for the process (idempotent)."""
    renderer: Any
    if resolve_format(fmt) == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound)
