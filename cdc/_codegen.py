"""One way to generate code: small functions built from source lines, as dataclasses and attrs
build ``__init__``.

cdc generates a few hot functions per table definition (a row converter with the column names
and converters bound in, a row-image decoder per binlog TABLE_MAP) because a generated function
has no Python loop and no per-column lookups: measured several times faster than the loop it
replaces (docs/performance.md). To keep that readable and debuggable, every generator goes
through :func:`make_function`:

* constants (converters, names, sizes) are handed in as a mapping and become globals of the
  generated function, never spliced into its text (no ``repr`` round trips to get wrong);
* the source is registered with :mod:`linecache` under a descriptive file name
  (``<cdc generated: row public.orders v3>``), so a traceback through generated code shows the
  generated line, and :func:`source_of` returns it;
* ``CDC_DUMP_CODEGEN=DIR`` writes every generated source to DIR, for reading or diffing.
"""

from __future__ import annotations

import itertools
import linecache
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

DUMP_ENV = "CDC_DUMP_CODEGEN"

_counter = itertools.count(1)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def make_function(
    name: str,
    args: Sequence[str],
    body: Sequence[str],
    consts: Mapping[str, Any] | None = None,
    *,
    what: str,
) -> Callable[..., Any]:
    """Compile ``def name(args): body`` (``body``: lines without the function's indentation)
    with ``consts`` as its globals. ``what`` names it in tracebacks and dumps."""
    src = f"def {name}({', '.join(args)}):\n" + "".join(f"    {line}\n" for line in body)
    filename = f"<cdc generated #{next(_counter)}: {what}>"
    code = compile(src, filename, "exec")
    # linecache keeps entries whose mtime is None until cleared: tracebacks show the lines
    linecache.cache[filename] = (len(src), None, src.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = dict(consts or {})
    exec(code, namespace)  # noqa: S102 - code built by cdc from catalog names, never from values
    fn: Callable[..., Any] = namespace[name]
    folder = os.environ.get(DUMP_ENV)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / (_SAFE.sub("_", filename.strip("<>")) + ".py")).write_text(src)
    return fn


def source_of(fn: Callable[..., Any]) -> str:
    """The generated source of a function made by :func:`make_function`."""
    filename = fn.__code__.co_filename
    return "".join(linecache.getlines(filename))
