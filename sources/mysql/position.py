"""Binlog positions as value types.

Theory of operation: a MySQL/MariaDB replica resumes either from binlog coordinates (a file
name and a byte offset in it) or from a GTID state (the set of transactions already applied).
cdc checkpoints one of two value types, always at a transaction boundary (after an XID event, a
``COMMIT`` query or a DDL statement):

* :class:`BinlogPosition` ``"mysql-bin.000003:1234"``: resume by file and offset;
* :class:`GtidPosition` ``"gtid:0-1-100,7-1-5@mysql-bin.000003:1234"``: resume by the GTID
  state before ``@`` (MariaDB: a ``domain-server-seq`` list, one per domain; MySQL: a GTID set,
  ``uuid:1-100:200-300,uuid2:1-5``); the file and offset after ``@`` say where that state was
  reached on this server (shown to people, used to order positions and to name the transaction
  start in event ids).

Positions order by ``(file index, offset)``, the numeric suffix of the binlog file name first,
so they compare across rotations. :func:`parse_position` reads either string form back.

:class:`MariaDBGtidState` and :class:`MySQLGtidSet` are the mutable accumulators the reader
updates once per transaction; they are frozen into a :class:`GtidPosition` only when a position
is handed to the pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

_SUFFIX_RE: Final = re.compile(r"\.(\d+)$")
_MARIADB_GTID_RE: Final = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_UUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_INTERVAL_RE: Final = re.compile(r"^(\d+)(?:-(\d+))?$")


def file_index(name: str) -> int:
    """The numeric suffix of a binlog file name (``mysql-bin.000003`` -> 3); 0 without one."""
    m = _SUFFIX_RE.search(name)
    return int(m.group(1)) if m else 0


class _BinlogOrdered:
    """Positions of either kind compare by where they stand in the binlog (``order``)."""

    __slots__ = ()

    @property
    def order(self) -> tuple[int, int]:
        raise NotImplementedError

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, _BinlogOrdered):
            return NotImplemented
        return self.order < other.order

    def __le__(self, other: object) -> bool:
        if not isinstance(other, _BinlogOrdered):
            return NotImplemented
        return self.order <= other.order

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, _BinlogOrdered):
            return NotImplemented
        return self.order > other.order

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, _BinlogOrdered):
            return NotImplemented
        return self.order >= other.order


@dataclass(frozen=True, slots=True)
class BinlogPosition(_BinlogOrdered):
    """Binlog coordinates: resume reading ``file`` at byte ``pos``."""

    file: str
    pos: int

    @property
    def order(self) -> tuple[int, int]:
        return (file_index(self.file), self.pos)

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"

    @classmethod
    def parse(cls, text: str) -> BinlogPosition:
        name, sep, offset = text.rpartition(":")
        if not sep or not name or not offset.isdigit():
            raise ValueError(f"not a binlog position: {text!r} (expected FILE:POS)")
        return cls(name, int(offset))


@dataclass(frozen=True, slots=True)
class GtidPosition(_BinlogOrdered):
    """A GTID state (``gtids``: MariaDB list or MySQL set, as text) reached at ``file:pos``."""

    gtids: str
    file: str
    pos: int
    flavor: str = field(default="mariadb")  # "mariadb" | "mysql"

    @property
    def order(self) -> tuple[int, int]:
        return (file_index(self.file), self.pos)

    @property
    def binlog(self) -> BinlogPosition:
        return BinlogPosition(self.file, self.pos)

    def __str__(self) -> str:
        return f"gtid:{self.gtids}@{self.file}:{self.pos}"

    @classmethod
    def parse(cls, text: str) -> GtidPosition:
        if not text.startswith("gtid:"):
            raise ValueError(f"not a GTID position: {text!r} (expected gtid:SET@FILE:POS)")
        gtids, sep, where = text[5:].rpartition("@")
        if not sep:
            raise ValueError(f"not a GTID position: {text!r} (expected gtid:SET@FILE:POS)")
        at = BinlogPosition.parse(where)
        flavor = "mysql" if ":" in gtids else "mariadb"
        if flavor == "mariadb":
            MariaDBGtidState.parse(gtids)  # validates
        else:
            MySQLGtidSet.parse(gtids)
        return cls(gtids, at.file, at.pos, flavor)


Position = BinlogPosition | GtidPosition


def parse_position(text: str) -> Position:
    """Read a checkpoint written by ``str(position)``; ``ValueError`` if it is neither form."""
    text = text.strip()
    if text.startswith("gtid:"):
        return GtidPosition.parse(text)
    return BinlogPosition.parse(text)


class MariaDBGtidState:
    """MariaDB's replication state: the last GTID per replication domain."""

    __slots__ = ("_domains",)

    def __init__(self, domains: dict[int, tuple[int, int]] | None = None) -> None:
        #: domain id -> (server id, sequence number)
        self._domains: dict[int, tuple[int, int]] = dict(domains or {})

    @classmethod
    def parse(cls, text: str) -> MariaDBGtidState:
        """``"0-1-100,7-2-5"`` (empty text: no GTID yet)."""
        domains: dict[int, tuple[int, int]] = {}
        for part in text.replace("\n", ",").split(","):
            part = part.strip()
            if not part:
                continue
            m = _MARIADB_GTID_RE.match(part)
            if m is None:
                raise ValueError(f"not a MariaDB GTID: {part!r} (expected DOMAIN-SERVER-SEQ)")
            domain = int(m.group(1))
            if domain in domains:
                raise ValueError(f"MariaDB GTID list names domain {domain} twice: {text!r}")
            domains[domain] = (int(m.group(2)), int(m.group(3)))
        return cls(domains)

    def add(self, domain: int, server: int, seq: int) -> None:
        """Record that the transaction ``domain-server-seq`` is done."""
        self._domains[domain] = (server, seq)

    def copy(self) -> MariaDBGtidState:
        return MariaDBGtidState(self._domains)

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{q}" for d, (s, q) in sorted(self._domains.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MariaDBGtidState) and other._domains == self._domains

    def __repr__(self) -> str:
        return f"MariaDBGtidState({str(self)!r})"


class MySQLGtidSet:
    """A MySQL GTID set: per source UUID (and tag, MySQL 8.3+), sorted disjoint intervals."""

    __slots__ = ("_sets",)

    def __init__(self) -> None:
        #: (uuid, tag) -> list of [first, last] intervals, inclusive, sorted, not adjacent
        self._sets: dict[tuple[str, str], list[list[int]]] = {}

    @classmethod
    def parse(cls, text: str) -> MySQLGtidSet:
        """``"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,<uuid>:tag:1-3"`` (empty: no GTIDs)."""
        gs = cls()
        for member in text.replace("\n", "").split(","):
            member = member.strip()
            if not member:
                continue
            parts = member.split(":")
            uuid = parts[0].strip()
            if not _UUID_RE.match(uuid):
                raise ValueError(f"not a MySQL GTID set member: {member!r}")
            uuid = _canonical_uuid(uuid)
            tag = ""
            if len(parts) < 2:
                raise ValueError(f"GTID set member without intervals: {member!r}")
            for part in parts[1:]:
                part = part.strip()
                m = _INTERVAL_RE.match(part)
                if m is None:
                    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$", part):
                        raise ValueError(f"not a GTID interval or tag: {part!r} in {member!r}")
                    tag = part.lower()
                    continue
                first = int(m.group(1))
                last = int(m.group(2)) if m.group(2) else first
                if first < 1 or last < first:
                    raise ValueError(f"bad GTID interval {part!r} in {member!r}")
                gs._add_interval((uuid, tag), first, last)
        return gs

    def _add_interval(self, key: tuple[str, str], first: int, last: int) -> None:
        intervals = self._sets.setdefault(key, [])
        intervals.append([first, last])
        intervals.sort()
        merged: list[list[int]] = []
        for iv in intervals:
            if merged and iv[0] <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], iv[1])
            else:
                merged.append(iv)
        self._sets[key] = merged

    def add(self, uuid: str, gno: int, tag: str = "") -> None:
        """Record the transaction ``uuid:gno`` (O(1) when it extends the last interval)."""
        key = (_canonical_uuid(uuid), tag)
        intervals = self._sets.get(key)
        if intervals:
            last = intervals[-1]
            if last[1] + 1 == gno:
                last[1] = gno
                return
            if last[0] <= gno <= last[1]:
                return
        self._add_interval(key, gno, gno)

    def intervals(self) -> list[tuple[str, str, list[tuple[int, int]]]]:
        """``[(uuid, tag, [(first, last), ...]), ...]``: inclusive, sorted, disjoint intervals
        per source uuid and tag (``""``: untagged), in (uuid, tag) order."""
        return [(uuid, tag, [(a, b) for a, b in ivs]) for (uuid, tag), ivs in sorted(self._sets.items())]

    def copy(self) -> MySQLGtidSet:
        gs = MySQLGtidSet()
        gs._sets = {k: [list(iv) for iv in v] for k, v in self._sets.items()}
        return gs

    def __str__(self) -> str:
        by_uuid: dict[str, list[str]] = {}
        for (uuid, tag), intervals in sorted(self._sets.items()):
            text = ":".join(f"{a}-{b}" if a != b else str(a) for a, b in intervals)
            by_uuid.setdefault(uuid, []).append(f"{tag}:{text}" if tag else text)
        return ",".join(f"{uuid}:{':'.join(parts)}" for uuid, parts in by_uuid.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MySQLGtidSet) and other._sets == self._sets

    def __repr__(self) -> str:
        return f"MySQLGtidSet({str(self)!r})"


def _canonical_uuid(text: str) -> str:
    h = text.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
