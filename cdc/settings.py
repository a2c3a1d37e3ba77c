"""How a config section declares its settings: :func:`setting`, a dataclass field with the
metadata the loader validates against and the docs generator renders.

It lives apart from the plugin SPI (:mod:`cdc.plugin` re-exports it for plugins) so that the
core's own config model (:mod:`cdc.config`) does not depend on the plugin module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
