"""Small generated functions, one idiom for the whole project.

Theory of operation: a few hot paths (converting a row of a known table) are faster as one
straight-line function per table than as a loop over per-column converters, so the sources
build that function once per table definition from source lines, as :mod:`dataclasses` and
attrs do for ``__init__``. :func:`make_function` is the one way to do it: constants (the
per-column converters) are bound as keyword defaults, so the body reads them as fast locals;
names from the database only ever enter the text through ``repr()``; and the text is registered
in :mod:`linecache` under its own file name, so a traceback through generated code shows the
generated line instead of nothing. ``CDC_DUMP_CODEGEN=DIR`` also writes every generated source
to DIR, for reading or diffing.
"""

from __future__ import annotations

import itertools
import linecache
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_serial = itertools.count(1)
#: set to a folder: every generated source is also written there
DUMP_ENV = "CDC_DUMP_CODEGEN"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def make_function(
    name: str,
    args: Sequence[str],
    lines: Sequence[str],
    consts: Mapping[str, Any] | None = None,
    filename: str | None = None,
) -> Any:
    """Build ``def name(*args, **consts): lines`` and return the function.

    ``lines`` is the body, one statement per item, without the function's own indentation.
    ``filename`` names the code in tracebacks (``<generated name N>`` by default); it is made
    unique, and the source is kept in :mod:`linecache` for as long as the process runs (one
    entry per table definition, never per row).
    """
    env = dict(consts or {})
    params = ", ".join([*args, *(f"{k}={k}" for k in env)])
    src = f"def {name}({params}):\n" + "".join(f"    {line}\n" for line in lines)
    fname = f"<{filename or 'generated ' + name} #{next(_serial)}>"
    code = compile(src, fname, "exec")
    namespace: dict[str, Any] = {}
    exec(code, env, namespace)  # noqa: S102 - text built from repr()'d names, see the docstring
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
    folder = os.environ.get(DUMP_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / (_SAFE.sub("_", fname.strip("<>")) + ".py")).write_text(src)
    return namespace[name]


def source_of(func: Any) -> str:
    """The generated text of a function made by :func:`make_function` (for tests and dumps)."""
    entry = linecache.cache.get(func.__code__.co_filename)
    return "".join(entry[2]) if entry is not None and len(entry) == 4 else ""
