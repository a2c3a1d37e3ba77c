"""The fence around PyMySQL's private API: sources/mysql/_wire.py is the only module that uses it,
only the members it lists in PRIVATE_API, with a PyMySQL inside the range pyproject.toml pins.

When one of these tests fails after a PyMySQL upgrade, read _wire.py against the new PyMySQL
before widening the pin: the binlog stream and the snapshot reader depend on these members."""

from __future__ import annotations

import ast
import importlib
import re
from importlib import metadata
from pathlib import Path

from sources.mysql import _wire

ROOT = Path(__file__).resolve().parents[2]
FENCE = "sources/mysql/_wire.py"
#: names that hold library objects (PyMySQL connections, results, cursors, errors)
LIBRARY_NAMES = ("pymysql", "pymysqlreplication", "conn", "result", "cursor", "cur", "packet", "wrapper")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def test_installed_pymysql_is_inside_the_pinned_range() -> None:
    installed = metadata.version("PyMySQL")
    pinned = next(
        r for r in (metadata.requires("cdc") or []) if r.lower().replace("_", "-").startswith("pymysql")
    )
    low = _version_tuple(re.search(r">=\s*([\d.]+)", pinned).group(1))  # type: ignore[union-attr]
    high = _version_tuple(re.search(r"<\s*([\d.]+)", pinned).group(1))  # type: ignore[union-attr]
    assert low <= _version_tuple(installed) < high, (
        f"PyMySQL {installed} is outside the range {pinned!r} that {FENCE} was tested with"
    )
    specifiers = set(re.sub(r"^[A-Za-z0-9_.-]+", "", pinned.replace(" ", "")).split(","))
    assert set(_wire.TESTED_VERSIONS.split(",")) == specifiers, (
        f"{FENCE} TESTED_VERSIONS {_wire.TESTED_VERSIONS!r} and pyproject.toml {pinned!r} disagree"
    )


def test_installed_pymysql_has_every_private_member_the_fence_uses() -> None:
    missing = []
    for owner, attr in _wire.PRIVATE_API:
        module_name, _, class_name = owner.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        has = hasattr(cls, attr)
        if not has:  # instance attributes: set in __init__ (look at its source)
            import inspect

            has = f"self.{attr}" in inspect.getsource(cls)
        if not has:
            missing.append(f"{owner}.{attr}")
    assert not missing, (
        f"the installed PyMySQL lacks {missing}, which {FENCE} (the fence around PyMySQL's "
        "private API) relies on: update _wire.py and the pin in pyproject.toml together"
    )


def test_every_private_member_used_by_the_fence_is_listed() -> None:
    source = (ROOT / FENCE).read_text()
    tree = ast.parse(source)
    listed = {attr for _, attr in _wire.PRIVATE_API}
    used = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in LIBRARY_NAMES
        ):
            used.add(node.attr)
    assert used, "the scan found nothing: it no longer matches _wire.py"
    assert used <= listed, f"{FENCE} uses {sorted(used - listed)} without listing it in PRIVATE_API"


def test_no_module_outside_the_fence_reaches_into_a_library() -> None:
    """Private attributes (``x._name``) of library objects, and python-mysql-replication itself,
    appear nowhere in cdc/, sources/ or sinks/ but in the fence."""
    offenders = []
    for top in ("cdc", "sources", "sinks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == FENCE:
                continue
            tree = ast.parse(path.read_text(), rel)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    if any(m.split(".")[0] == "pymysqlreplication" for m in mods):
                        offenders.append(f"{rel}:{node.lineno}: imports python-mysql-replication")
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name)
                    and node.value.id in LIBRARY_NAMES
                ):
                    offenders.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in {a for _, a in _wire.PRIVATE_API if a.startswith("_")}
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")
                ):
                    offenders.append(f"{rel}:{node.lineno}: .{node.attr} (a PyMySQL internal)")
    assert not offenders, "library internals outside " + FENCE + ":\n" + "\n".join(offenders)
