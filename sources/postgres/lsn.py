"""PostgreSQL log sequence numbers as a value type.

Theory of operation: an LSN is a 64-bit byte position in the write-ahead log. PostgreSQL writes
it as two upper-case hexadecimal halves without leading zeros, ``"16/B374D848"`` (high 32 bits,
slash, low 32 bits). :class:`Lsn` is an ``int`` subclass, so ordering, hashing and arithmetic
are plain integer operations (arithmetic returns a plain ``int``; wrap it in ``Lsn`` again where
a position is meant) and the wire codecs can pass it to ``struct`` directly; only ``str`` and
``repr`` differ, and :meth:`Lsn.parse` reads the textual form back.
"""

from __future__ import annotations

import re
from typing import Final

_LSN_RE: Final = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_MAX: Final = (1 << 64) - 1


class Lsn(int):
    """A WAL position; ``Lsn(0)`` is PostgreSQL's ``InvalidXLogRecPtr``."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Lsn:
        if not 0 <= value <= _MAX:
            raise ValueError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Read PostgreSQL's ``"XXXXXXXX/XXXXXXXX"`` form; raise ``ValueError`` otherwise."""
        m = _LSN_RE.fullmatch(text)
        if m is None:
            raise ValueError(f"not an LSN: {text!r} (expected like '16/B374D848')")
        return cls((int(m.group(1), 16) << 32) | int(m.group(2), 16))

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(self, spec)
