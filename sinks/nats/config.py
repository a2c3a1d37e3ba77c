"""The ``sink:`` section of a pipeline with ``type: nats``, and subject templates.

This module imports no NATS client, so ``cdc validate`` and the docs generator can load it on a
machine without nats-py.

Subjects are dot-separated tokens. A template's own text may use letters, digits, ``_``, ``-``
and ``.`` (between tokens); the values filled in for ``{pipeline}``, ``{schema}`` and
``{table}`` have every other character (a dot included) replaced by ``_``, so a value is always
inside one token and the stream can cover a table's subjects with a ``*`` wildcard there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cdc.plugin import setting
from cdc.settings import template_check
from cdc.settings import template_fields as settings_template_fields

SUBJECT_FIELDS = ("pipeline", "schema", "table")
_LEGAL_LITERAL = re.compile(r"[^A-Za-z0-9_.\-]")
_LEGAL_VALUE = re.compile(r"[^A-Za-z0-9_\-]")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")
_HOLE = "\x00"


def _literal_problem(literal: str) -> str | None:
    bad = sorted(set(_LEGAL_LITERAL.findall(literal)))
    if bad:
        return (
            f"{''.join(bad)!r} cannot appear in a NATS subject template (letters, digits, "
            "'.', '_' and '-' only)"
        )
    return None


def template_fields(template: str) -> list[str]:
    """The placeholders of a subject template; raises ValueError for a malformed one."""
    fields = settings_template_fields(template, _literal_problem)
    if any(not t for t in template.split(".")):
        raise ValueError("a subject has no empty tokens (no leading, trailing or double '.')")
    return fields


def _template_check(allowed: tuple[str, ...]) -> Any:
    return template_check(allowed, "subject template", template_fields)


def _check_url(value: str) -> str | None:
    for one in value.split(","):
        try:
            parts = urlsplit(one.strip())
        except ValueError as exc:
            return f"not a valid URL: {exc}"
        if parts.scheme not in ("nats", "tls"):
            return "expected nats://host:port or tls://host:port (several: comma-separated)"
        if not parts.hostname:
            return "the URL has no host"
    return None


def _check_stream(value: str) -> str | None:
    if not _STREAM_NAME.match(value):
        return "a stream name is 1-255 letters, digits, '_' or '-'"
    return None


def clean(value: Any) -> str:
    """A value fit for one subject token."""
    return _LEGAL_VALUE.sub("_", str(value)) or "_"


def render_subject(template: str, **values: Any) -> str:
    """Fill a subject template (see the module doc)."""
    return template.format_map({k: clean(v) for k, v in values.items()})


def subject_pattern(template: str, pipeline: str) -> str:
    """The subject filter covering every subject the template gives for ``pipeline``: tokens
    holding ``{schema}`` or ``{table}`` become ``*``."""
    filled = template.format_map({"pipeline": clean(pipeline), "schema": _HOLE, "table": _HOLE})
    return ".".join("*" if _HOLE in t else t for t in filled.split("."))


def covers(pattern: str, subject: str) -> bool:
    """Whether the subject filter ``pattern`` matches every subject ``subject`` (itself a
    filter, possibly with wildcards) matches."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if s[i] == ">":
            return False
        if tok == "*":
            continue
        if tok != s[i]:
            return False
    return len(p) == len(s)


@dataclass
class NatsConfig:
    url: str = setting(
        doc="server URL(s), nats://host:4222 or tls://host:4222; several comma-separated",
        check=_check_url,
        example="nats://nats:4222",
    )
    subject: str = setting(
        "cdc.{pipeline}.{schema}.{table}",
        doc="subject template; {pipeline} {schema} {table} are filled in (characters other "
        "than letters, digits, _ and - become _)",
        check=_template_check(SUBJECT_FIELDS),
    )
    stream: str = setting(
        "CDC",
        doc="the JetStream stream holding the subjects; created when missing (with "
        "create_stream), covering the event subjects and schema_subject",
        check=_check_stream,
    )
    create_stream: bool = setting(
        True,
        doc="create the stream when missing, or add the pipeline's subjects to it; false: "
        "only check that it exists and covers them (a fatal error otherwise)",
    )
    schema_subject: str = setting(
        "cdc.{pipeline}.schemas",
        doc="subject of the schema definitions (header cdc-schema-version: name@version); "
        "{pipeline} is filled in; it tells a restart whether this pipeline already wrote events",
        check=_template_check(("pipeline",)),
    )
    user: str | None = setting(None, doc="user name (with password)")
    password: str | None = setting(None, doc="password (with user)", secret=True)
    token: str | None = setting(None, doc="authentication token", secret=True)
    creds: str | None = setting(
        None,
        doc="credentials file (JWT and NKey seed, as `nsc` writes it); relative to the config file",
        path=True,
    )
    tls_ca_file: str | None = setting(
        None,
        doc="PEM file of the CA(s) to trust for TLS instead of the system's; relative to the "
        "config file",
        path=True,
    )
