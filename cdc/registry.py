"""Finding sources and sinks by the ``type:`` of a pipeline file.

Plugins are entry points in the groups ``cdc.sources`` and ``cdc.sinks`` (the built-in ones
are registered by this project's own ``pyproject.toml`` the same way). Classes are imported
lazily, on first use, so ``cdc validate`` of a file with a file sink never imports a Kafka
client. An entry point that fails to import is reported with the package to install instead
of a traceback.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from cdc.errors import FatalError, Kind

GROUPS = {
    "source": "cdc.sources",
    "sink": "cdc.sinks",
    "transform": "cdc.transforms",
    "command": "cdc.commands",
}


@dataclass(frozen=True)
class PluginInfo:
    kind: str  # "source" | "sink"
    name: str
    target: str  # "module:Class"
    distribution: str | None


def available(kind: str) -> dict[str, PluginInfo]:
    """Every registered plugin of ``kind``, by name."""
    group = GROUPS[kind]
    found: dict[str, PluginInfo] = {}
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else None
        found.setdefault(ep.name, PluginInfo(kind, ep.name, ep.value, dist))
    return found


_cache: dict[tuple[str, str], Any] = {}


def load(kind: str, name: str) -> Any:
    """The plugin class registered as ``name``; raises FatalError with a hint if it cannot be
    imported or does not exist."""
    key = (kind, name)
    if key in _cache:
        return _cache[key]
    plugins = available(kind)
    info = plugins.get(name)
    if info is None:
        known = ", ".join(sorted(plugins)) or "none"
        raise FatalError(
            f"no {kind} plugin named {name!r} is installed (installed: {known}); a plugin is a "
            f"package registering an entry point in the group {GROUPS[kind]!r}",
            kind=Kind.PLUGIN_MISSING,
        )
    module_name, _, attr = info.target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = module
        for part in attr.split("."):
            cls = getattr(cls, part)
    except ImportError as exc:
        pkg = f" (from the package {info.distribution!r})" if info.distribution else ""
        raise FatalError(
            f"the {kind} plugin {name!r}{pkg} cannot be imported: {exc}; install what it needs",
            kind=Kind.PLUGIN_IMPORT,
        ) from exc
    except AttributeError as exc:
        raise FatalError(
            f"the {kind} plugin {name!r} points at {info.target}, which does not exist: {exc}",
            kind=Kind.PLUGIN_INVALID,
        ) from exc
    if kind in ("source", "sink") and not hasattr(cls, "Config"):
        raise FatalError(
            f"the {kind} plugin {name!r} ({info.target}) has no Config dataclass",
            kind=Kind.PLUGIN_INVALID,
        )
    _cache[key] = cls
    return cls
