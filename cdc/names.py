"""Table names: ``schema.table`` (PostgreSQL) or ``database.table`` (MySQL), SQL-quoted where needed.

A pipeline file names a table as two parts joined by a dot. A part is written as it is in the
catalog (case-sensitive, never folded), or quoted when it holds a dot, a space, a quote or any
other character that would make the name ambiguous: in double quotes (``"my schema"``, a double
quote inside doubled: ``"a "" b"``) or, for MySQL users, in backticks (`` `my db` ``, a backtick
inside doubled). So Debezium's fixture ``"Quoted_"" . Schema"."Quoted_"" . Table"`` names the
schema ``Quoted_" . Schema`` and the table ``Quoted_" . Table``.

Inside the service every table has one **canonical** name, which :func:`canonical` gives: each
part bare when it is a plain word, else double-quoted. It is what events (``schema.name``),
schema versions, state and the API use, so ``public.orders``, ``"public"."orders"`` and
`` `public`.`orders` `` are one table. :func:`split` turns any accepted form back into the two
raw parts for catalog queries.
"""

from __future__ import annotations

import re

_PLAIN = re.compile(r"^[^\s.\"`]+$")


class TableNameError(ValueError):
    """A table name that is not ``schema.table`` (the message says why)."""


def quote(part: str) -> str:
    """One part as the canonical name writes it."""
    if _PLAIN.match(part):
        return part
    return '"' + part.replace('"', '""') + '"'


def join(schema: str, table: str) -> str:
    """The canonical name of the table ``table`` in ``schema``."""
    return f"{quote(schema)}.{quote(table)}"


def _part(text: str, at: int) -> tuple[str, int]:
    """Read one part starting at ``at``; returns it and the index after it."""
    if at >= len(text):
        raise TableNameError("a part is missing")
    q = text[at]
    if q in "\"`":
        out: list[str] = []
        i = at + 1
        while True:
            j = text.find(q, i)
            if j < 0:
                raise TableNameError(f"the quote {q} opened at {at + 1} is not closed")
            out.append(text[i:j])
            if j + 1 < len(text) and text[j + 1] == q:  # a doubled quote is one quote
                out.append(q)
                i = j + 2
                continue
            part = "".join(out)
            if not part:
                raise TableNameError("a quoted part is empty")
            return part, j + 1
    j = text.find(".", at)
    end = len(text) if j < 0 else j
    part = text[at:end]
    if not _PLAIN.match(part):
        raise TableNameError(
            f"{part!r} needs quotes: a part with a space, a dot or a quote is written in double "
            'quotes ("my table", a quote inside doubled) or backticks'
        )
    return part, end


def split(name: str) -> tuple[str, str]:
    """The raw (unquoted) parts of a table name in any accepted form."""
    schema, at = _part(name, 0)
    if at >= len(name) or name[at] != ".":
        raise TableNameError("expected two parts joined by a dot")
    table, end = _part(name, at + 1)
    if end != len(name):
        raise TableNameError(f"unexpected {name[end:]!r} after the table part")
    return schema, table


def canonical(name: str) -> str:
    """The one name the service uses for a table named in any accepted form."""
    return join(*split(name))


def problem(name: object) -> str | None:
    """Why ``name`` is not a table name, or None (for config checks)."""
    if not isinstance(name, str):
        return "a table name is a string"
    try:
        split(name)
    except TableNameError as exc:
        return f"{name!r} is not schema.table: {exc}"
    return None


def normalize(name: str) -> str:
    """The canonical form of ``name``, or ``name`` itself when it is not a table name (left for
    validation to report)."""
    return canonical(name) if problem(name) is None else name
