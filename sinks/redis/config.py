"""The ``sink:`` section of a pipeline with ``type: redis``, and stream-name templates.

This module imports no Redis client, so ``cdc validate`` and the docs generator can load it on
a machine without redis-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cdc.plugin import setting
from cdc.settings import template_check
from cdc.settings import template_fields as settings_template_fields

STREAM_FIELDS = ("pipeline", "schema", "table")


def _check_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "expected a redis://, rediss:// (TLS) or unix:// URL"
    if parts.scheme != "unix" and not parts.hostname:
        return "the URL has no host"
    return None


template_fields = settings_template_fields

_check_template = template_check(STREAM_FIELDS, "key template")


def _check_maxlen(value: int | None) -> str | None:
    return None if value is None or value > 0 else "must be greater than 0 (or null: no trimming)"


def _check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def render_key(template: str, **values: Any) -> str:
    """Fill a key template (Redis keys take any bytes: values are used as they are)."""
    return template.format_map({k: str(v) for k, v in values.items()})


@dataclass
class RedisConfig:
    url: str = setting(
        doc="redis://[user:password@]host:port/db, rediss:// for TLS (a password in the URL "
        "is never logged)",
        check=_check_url,
        example="redis://redis:6379/0",
    )
    stream: str = setting(
        "cdc:{pipeline}:{schema}.{table}",
        doc="stream key template; {pipeline} {schema} {table} are filled in",
        check=_check_template,
    )
    maxlen: int | None = setting(
        None,
        doc="trim each stream to about this many entries (XADD MAXLEN ~); null keeps everything",
        check=_check_maxlen,
    )
    tls_ca_file: str | None = setting(
        None,
        doc="PEM file of the CA(s) to trust for rediss:// instead of the system's; relative "
        "to the config file",
        path=True,
    )
    timeout_s: float = setting(
        10,
        doc="timeout of connecting and of each command; a server that does not answer within "
        "it counts as unavailable (the batch is retried, never skipped)",
        check=_check_positive,
    )
