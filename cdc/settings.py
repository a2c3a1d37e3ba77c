"""How a config section declares its settings: :func:`setting`, a dataclass field with the
metadata the loader validates against and the docs generator renders.

It lives apart from the plugin SPI (:mod:`cdc.plugin` re-exports it for plugins) so that the
core's own config model (:mod:`cdc.config`) does not depend on the plugin module.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Sequence
from typing import Any

_MISSING: Any = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    doc: str,
    default_factory: Callable[[], Any] | Any = _MISSING,
    check: Callable[[Any], str | None] | None = None,
    secret: bool = False,
    path: bool = False,
    example: Any = _MISSING,
) -> Any:
    """Declare one setting of a config section.

    ``doc`` is the one-line meaning shown by the generated docs. ``check`` returns an error
    message for a bad value (or ``None``). ``secret`` marks a value that must never be logged or
    shown (it is masked in ``cdc status`` and logs). ``path`` marks a filesystem path, which
    the loader resolves against the config file's folder. A setting without a default is
    required.
    """
    metadata = {"doc": doc, "check": check, "secret": secret, "path": path, "example": example}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def template_fields(template: str, literal_problem: Callable[[str], str | None] | None = None) -> list[str]:
    """The ``{placeholders}`` of a name template (a topic, subject, stream key, routing key).
    Raises ValueError for a malformed template, a placeholder with a format spec or conversion,
    or literal text that ``literal_problem`` refuses (it returns why)."""
    fields = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if literal_problem is not None:
            problem = literal_problem(literal)
            if problem:
                raise ValueError(problem)
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"{{{field}}} takes no format spec or conversion")
        fields.append(field)
    return fields


def template_check(
    allowed: Sequence[str], what: str, parse: Callable[[str], list[str]] = template_fields
) -> Callable[[str], str | None]:
    """A ``check=`` for a name template: not empty, well formed (``parse``), and only the
    placeholders in ``allowed``. ``what`` names it in messages (``topic template``)."""

    def check(value: str) -> str | None:
        if not value:
            return "must not be empty"
        try:
            fields = parse(value)
        except ValueError as exc:
            return f"not a valid {what}: {exc}"
        unknown = sorted({f for f in fields if f not in allowed})
        if unknown:
            names = " ".join(f"{{{f}}}" for f in allowed)
            return f"unknown placeholder {', '.join('{' + f + '}' for f in unknown)}; use {names}"
        return None

    return check
