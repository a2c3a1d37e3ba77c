"""Table renames in binlog QUERY events, parsed (pure: text in, names out).

Theory of operation. A rename reaches the binlog only as the statement text of a QUERY event,
with the session's default database beside it. :func:`parse_renames` tokenizes that text the way
the server does for what matters here (whitespace; ``/* */``, ``-- `` and ``#`` comments skipped;
``/*! ... */`` and ``/*M! ... */`` executable comments read as code; backtick-quoted names with
doubled backticks; quoted strings skipped whole, so a ``COMMENT 'rename to x'`` is not a rename)
and recognises the statements that rename a table:

- ``RENAME TABLE[S] [IF EXISTS] a [WAIT n | NOWAIT] TO b [, c TO d ...]``;
- ``ALTER [ONLINE] [IGNORE] TABLE [IF EXISTS] a [WAIT n | NOWAIT] ... RENAME [TO | AS] b``
  (a top-level ``RENAME`` clause among the ALTER's others; ``RENAME COLUMN`` / ``INDEX`` /
  ``KEY`` are not table renames).

Names without a database take the event's default database. The result is the list of
``(old, new)`` pairs as ``db.table``, in the order the server applies them (a multi-table
RENAME is applied left to right, so ``a TO tmp, b TO a, tmp TO b`` swaps two tables).
"""

from __future__ import annotations

import re

from cdc import names

_WORD_RE = re.compile(r"[0-9A-Za-z_$\u0080-\uffff]+")
_EXEC_COMMENT_RE = re.compile(r"/\*M?!\d*")


def tokens(query: str) -> list[tuple[str, str]]:
    """``(kind, text)`` tokens: ``id`` (a backtick-quoted name, unquoted), ``word``, ``str``
    (a quoted string, left as its raw text) and ``p`` (one punctuation character)."""
    out: list[tuple[str, str]] = []
    i = 0
    n = len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
            continue
        if query.startswith("/*", i):
            m = _EXEC_COMMENT_RE.match(query, i)
            if m is not None:
                i = m.end()  # executable comment: its content is code
                continue
            end = query.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if query.startswith("*/", i):
            i += 2  # the end of an executable comment
            continue
        if c == "#" or (query.startswith("--", i) and (i + 2 == n or query[i + 2].isspace())):
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == "`":
            buf: list[str] = []
            i += 1
            while i < n:
                if query[i] == "`":
                    if i + 1 < n and query[i + 1] == "`":
                        buf.append("`")
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(query[i])
                i += 1
            out.append(("id", "".join(buf)))
            continue
        if c in "'\"":
            start = i
            i += 1
            while i < n:
                if query[i] == "\\":
                    i += 2
                    continue
                if query[i] == c:
                    if i + 1 < n and query[i + 1] == c:
                        i += 2
                        continue
                    i += 1
                    break
                i += 1
            out.append(("str", query[start:i]))
            continue
        m = _WORD_RE.match(query, i)
        if m is not None:
            out.append(("word", m.group()))
            i = m.end()
            continue
        out.append(("p", c))
        i += 1
    return out


class _Parser:
    def __init__(self, toks: list[tuple[str, str]], default_schema: str) -> None:
        self.toks = toks
        self.i = 0
        self.default_schema = default_schema

    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def word(self, *words: str) -> bool:
        kind, text = self.peek()
        if kind == "word" and text.upper() in words:
            self.i += 1
            return True
        return False

    def ident(self) -> str | None:
        kind, text = self.peek()
        if kind in ("id", "word"):
            self.i += 1
            return text
        return None

    def name(self) -> str | None:
        first = self.ident()
        if first is None:
            return None
        if self.peek() == ("p", "."):
            self.i += 1
            second = self.ident()
            if second is None:
                return None
            return names.join(first, second)
        if not self.default_schema:
            return None
        return names.join(self.default_schema, first)

    def wait_clause(self) -> None:
        if self.word("NOWAIT"):
            return
        if self.word("WAIT"):
            self.i += 1  # the timeout

    def if_exists(self) -> None:
        if self.peek()[1].upper() == "IF" and self.peek(1)[1].upper() == "EXISTS":
            self.i += 2


def parse_renames(query: str, default_schema: str) -> list[tuple[str, str]]:
    """The ``(old, new)`` table renames a statement makes (``db.table`` each), in order; empty
    for any other statement (or a rename this parser cannot read: an unqualified name without a
    default database)."""
    if "RENAME" not in query.upper():
        return []
    p = _Parser(tokens(query), default_schema)
    if p.word("RENAME"):
        if not p.word("TABLE", "TABLES"):
            return []
        p.if_exists()
        pairs: list[tuple[str, str]] = []
        while True:
            old = p.name()
            p.wait_clause()
            if old is None or not p.word("TO"):
                return []
            new = p.name()
            if new is None:
                return []
            pairs.append((old, new))
            if p.peek() != ("p", ","):
                return pairs
            p.i += 1
    if p.word("ALTER"):
        p.word("ONLINE")
        p.word("IGNORE")
        if not p.word("TABLE"):
            return []
        p.if_exists()
        old = p.name()
        if old is None:
            return []
        p.wait_clause()
        found: str | None = None
        depth = 0
        at_clause = True  # at the start of an alter specification
        while p.i < len(p.toks):
            kind, text = p.peek()
            if kind == "p":
                p.i += 1
                if text == "(":
                    depth += 1
                elif text == ")":
                    depth -= 1
                elif text == "," and depth == 0:
                    at_clause = True
                    continue
                at_clause = False
                continue
            if depth == 0 and at_clause and kind == "word" and text.upper() == "RENAME":
                p.i += 1
                if p.peek()[0] == "word" and p.peek()[1].upper() in ("COLUMN", "INDEX", "KEY"):
                    at_clause = False
                    continue
                p.word("TO", "AS")
                new = p.name()
                if new is None:
                    return []
                found = new
                at_clause = False
                continue
            p.i += 1
            at_clause = False
        if found is not None and found != old:
            return [(old, found)]
    return []
