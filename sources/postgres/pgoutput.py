"""Pure decoder of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

Theory of operation: every XLogData frame of a logical replication stream started with
``proto_version '1'`` carries exactly one pgoutput message. :func:`decode` reads that message
and returns an immutable NamedTuple named after the protocol's own message (``Begin``,
``Relation``, ``Insert``, ...). It keeps no state, runs no query and touches no socket: the
caller keeps the relation cache (``Relation`` messages arrive before the first change of a
table in each session and again after its definition changes) and resolves type OIDs.

A transaction arrives as ``Begin``, then ``Relation``/``Type``/``Origin`` messages and changes,
then ``Commit``. A non-transactional logical ``Message`` (``flags & 1 == 0``) may arrive outside
of any transaction.

Row tuples are lists with one item per column of the relation, in column order:

- ``bytes``: the column's value in its type's text output (``'t'``),
- ``None``: SQL NULL (``'n'``); in a ``'K'`` old tuple also every column outside the key,
- :data:`UNCHANGED`: a TOASTed value the update did not change, which pgoutput does not resend
  (``'u'``).

Binary column values (``'b'``, only with the ``binary`` option) are refused with
:class:`PgOutputError`, as are unknown message types (streaming and two-phase messages need
protocol versions 2 and 3, which this decoder does not request).

Integers are big-endian; LSNs become :class:`~sources.postgres.lsn.Lsn`, timestamps stay raw
``int`` microseconds since 2000-01-01 UTC (see :func:`sources.postgres.protocol.pg_time_to_unix`),
strings (names) are decoded as UTF-8, values stay ``bytes`` for :mod:`sources.postgres.values`.

Speed matters: this runs once per row change. Each message type has one function that unpacks
its fixed header with one precompiled ``struct`` call on a ``bytes`` object, tuple values are
sliced straight out of the buffer, and results are built with ``tuple.__new__`` to skip the
keyword-handling ``__new__`` that ``NamedTuple`` generates.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, NamedTuple, NoReturn, TypeAlias

from sources.postgres.lsn import Lsn


class PgOutputError(ValueError):
    """A pgoutput message this decoder cannot or will not read."""


class _Unchanged:
    """Type of :data:`UNCHANGED`; there is exactly one instance."""

    __slots__ = ()
    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


#: An unchanged TOASTed value in an update's new tuple: pgoutput did not send it.
UNCHANGED: Final = _Unchanged()

#: One column value of a row tuple.
Value: TypeAlias = "bytes | None | _Unchanged"
#: A row tuple: one value per column of the relation, in column order.
Row: TypeAlias = "list[bytes | None | _Unchanged]"


class Begin(NamedTuple):
    """``'B'``: a transaction starts; ``final_lsn`` is the LSN of its commit record."""

    final_lsn: Lsn
    commit_ts: int
    xid: int


class Commit(NamedTuple):
    """``'C'``: the transaction ended; ``end_lsn`` is where the next one may start."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: int


class Origin(NamedTuple):
    """``'O'``: the transaction came from replication origin ``name`` at its ``lsn``."""

    lsn: Lsn
    name: str


class RelationColumn(NamedTuple):
    """One column of a ``Relation``; ``flags & 1`` marks a replica identity (key) column."""

    flags: int
    name: str
    type_oid: int
    typmod: int


class Relation(NamedTuple):
    """``'R'``: a table's current definition, sent before its first change in a session.

    ``namespace`` is ``""`` for ``pg_catalog``. ``replica_identity`` is ``'d'`` (default: the
    primary key), ``'n'`` (nothing), ``'f'`` (full: every column is flagged as key) or ``'i'``
    (a chosen index).
    """

    relid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


class Type(NamedTuple):
    """``'Y'``: a non-built-in type (enum, domain, composite, ...) used by a following relation."""

    oid: int
    namespace: str
    name: str


class Insert(NamedTuple):
    """``'I'``: a new row."""

    relid: int
    new: Row


class Update(NamedTuple):
    """``'U'``: a changed row.

    ``old_kind`` is ``'K'`` (``old`` holds the old key, other columns ``None``: the key
    changed), ``'O'`` (``old`` is the whole old row: REPLICA IDENTITY FULL) or ``None`` (no old
    tuple sent; ``old`` is ``None``).
    """

    relid: int
    old_kind: str | None
    old: Row | None
    new: Row


class Delete(NamedTuple):
    """``'D'``: a deleted row; ``old_kind`` is ``'K'`` (key only) or ``'O'`` (whole row)."""

    relid: int
    old_kind: str
    old: Row


class Truncate(NamedTuple):
    """``'T'``: ``relids`` were truncated; ``options`` bit 1 = CASCADE, bit 2 = RESTART IDENTITY."""

    options: int
    relids: tuple[int, ...]


class Message(NamedTuple):
    """``'M'``: ``pg_logical_emit_message``; ``flags & 1`` = transactional."""

    flags: int
    lsn: Lsn
    prefix: str
    content: bytes


PgOutputMessage: TypeAlias = (
    "Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message"
)

TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2

_new: Final = tuple.__new__
_u16: Final = struct.Struct(">H").unpack_from
_u32: Final = struct.Struct(">I").unpack_from
_insert_head: Final = struct.Struct(">xIxH").unpack_from  # 'I', relid, 'N', ncols
_begin: Final = struct.Struct(">xQqI").unpack_from
_commit: Final = struct.Struct(">xBQQq").unpack_from
_origin: Final = struct.Struct(">xQ").unpack_from
_relation_head: Final = struct.Struct(">xI").unpack_from
_column_tail: Final = struct.Struct(">Ii").unpack_from
_truncate_head: Final = struct.Struct(">xIB").unpack_from
_message_head: Final = struct.Struct(">xBQ").unpack_from

_B: Final = 0x62  # 'b': a binary column value


def decode(buf: bytes | bytearray | memoryview) -> PgOutputMessage:
    """Decode one pgoutput message (the payload of one XLogData frame).

    Returns one of the message NamedTuples of this module (see ``PgOutputMessage``); raises
    :class:`PgOutputError` for an unknown message type, a binary column value or a truncated
    message.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    try:
        return _DECODERS[buf[0]](buf)
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, PgOutputError):
            raise
        kind = chr(buf[0]) if buf else ""
        raise PgOutputError(
            f"malformed pgoutput {kind!r} message ({len(buf)} bytes): {exc}"
        ) from exc


def _tuple(buf: bytes, pos: int, ncols: int) -> tuple[Row, int]:
    """Read ``ncols`` column values starting at ``pos``; return them and the position after.

    The row starts as ``[None] * ncols`` so NULLs cost no store; a ``while`` loop is measurably
    cheaper than ``for ... in range`` here.
    """
    row: Row = [None] * ncols
    i = 0
    while i < ncols:
        kind = buf[pos]
        if kind == 0x74:  # 't'
            end = pos + 5 + _u32(buf, pos + 1)[0]
            row[i] = buf[pos + 5 : end]
            pos = end
        elif kind == 0x6E:  # 'n'
            pos += 1
        elif kind == 0x75:  # 'u'
            row[i] = UNCHANGED
            pos += 1
        else:
            _bad_kind(buf, pos)
        i += 1
    if pos > len(buf):
        raise PgOutputError(f"column values run past the message end ({len(buf)} bytes)")
    return row, pos


def _bad_kind(buf: bytes, pos: int) -> NoReturn:
    if buf[pos] == _B:
        raise PgOutputError(
            "binary column value ('b') in pgoutput tuple: the decoder reads text mode only;"
            " start replication without the 'binary' option"
        )
    raise PgOutputError(f"unknown tuple column kind {buf[pos : pos + 1]!r} at byte {pos}")


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _decode_insert(buf: bytes) -> Insert:
    # The hottest path: _tuple inlined.
    relid, ncols = _insert_head(buf)
    if buf[5] != 0x4E:  # 'N'
        raise PgOutputError(f"Insert without a new tuple ('N'), got {buf[5:6]!r}")
    row: Row = [None] * ncols
    pos = 8
    i = 0
    while i < ncols:
        kind = buf[pos]
        if kind == 0x74:  # 't'
            end = pos + 5 + _u32(buf, pos + 1)[0]
            row[i] = buf[pos + 5 : end]
            pos = end
        elif kind != 0x6E:  # 'n'
            _bad_kind(buf, pos)  # 'u' is impossible in an Insert
        else:
            pos += 1
        i += 1
    if pos > len(buf):
        raise PgOutputError(f"column values run past the message end ({len(buf)} bytes)")
    return _new(Insert, (relid, row))


def _decode_update(buf: bytes) -> Update:
    relid = _relation_head(buf)[0]
    kind = buf[5]
    if kind == 0x4E:  # 'N': no old tuple
        row, _ = _tuple(buf, 8, _u16(buf, 6)[0])
        return _new(Update, (relid, None, None, row))
    if kind != 0x4B and kind != 0x4F:  # 'K', 'O'
        raise PgOutputError(f"Update with unknown tuple kind {bytes([kind])!r}")
    old, pos = _tuple(buf, 8, _u16(buf, 6)[0])
    if buf[pos] != 0x4E:
        raise PgOutputError(f"Update without a new tuple ('N'), got {buf[pos : pos + 1]!r}")
    row, _ = _tuple(buf, pos + 3, _u16(buf, pos + 1)[0])
    return _new(Update, (relid, chr(kind), old, row))


def _decode_delete(buf: bytes) -> Delete:
    relid = _relation_head(buf)[0]
    kind = buf[5]
    if kind != 0x4B and kind != 0x4F:  # 'K', 'O'
        raise PgOutputError(f"Delete with unknown tuple kind {bytes([kind])!r}")
    old, _ = _tuple(buf, 8, _u16(buf, 6)[0])
    return _new(Delete, (relid, chr(kind), old))


def _decode_begin(buf: bytes) -> Begin:
    final_lsn, commit_ts, xid = _begin(buf)
    return _new(Begin, (Lsn(final_lsn), commit_ts, xid))


def _decode_commit(buf: bytes) -> Commit:
    flags, commit_lsn, end_lsn, commit_ts = _commit(buf)
    return _new(Commit, (flags, Lsn(commit_lsn), Lsn(end_lsn), commit_ts))


def _decode_origin(buf: bytes) -> Origin:
    lsn = _origin(buf)[0]
    name, _ = _cstring(buf, 9)
    return Origin(Lsn(lsn), name)


def _decode_relation(buf: bytes) -> Relation:
    relid = _relation_head(buf)[0]
    namespace, pos = _cstring(buf, 5)
    name, pos = _cstring(buf, pos)
    replica_identity = chr(buf[pos])
    ncols = _u16(buf, pos + 1)[0]
    pos += 3
    columns = []
    for _ in range(ncols):
        flags = buf[pos]
        col_name, pos = _cstring(buf, pos + 1)
        type_oid, typmod = _column_tail(buf, pos)
        pos += 8
        columns.append(RelationColumn(flags, col_name, type_oid, typmod))
    return Relation(relid, namespace, name, replica_identity, tuple(columns))


def _decode_type(buf: bytes) -> Type:
    oid = _relation_head(buf)[0]
    namespace, pos = _cstring(buf, 5)
    name, _ = _cstring(buf, pos)
    return Type(oid, namespace, name)


def _decode_truncate(buf: bytes) -> Truncate:
    nrels, options = _truncate_head(buf)
    relids = struct.unpack_from(f">{nrels}I", buf, 6)
    return Truncate(options, relids)


def _decode_message(buf: bytes) -> Message:
    flags, lsn = _message_head(buf)
    prefix, pos = _cstring(buf, 10)
    size = _u32(buf, pos)[0]
    content = buf[pos + 4 : pos + 4 + size]
    if len(content) != size:
        raise PgOutputError(f"Message content of {size} bytes runs past the message end")
    return Message(flags, Lsn(lsn), prefix, content)


_NAMES: Final = {
    "S": "Stream Start",
    "E": "Stream Stop",
    "c": "Stream Commit",
    "A": "Stream Abort",
    "b": "Begin Prepare",
    "P": "Prepare",
    "K": "Commit Prepared",
    "r": "Rollback Prepared",
    "p": "Stream Prepare",
}


def _unknown(buf: bytes) -> NoReturn:
    tag = chr(buf[0])
    what = _NAMES.get(tag)
    if what is not None:
        raise PgOutputError(
            f"unsupported pgoutput message {tag!r} ({what}): needs a protocol version above 1,"
            " which this decoder does not request"
        )
    raise PgOutputError(f"unknown pgoutput message type {buf[:1]!r}")


# Indexed by the message's first byte: one list lookup per message, no dict.
_DECODERS: Final[list[Callable[[bytes], PgOutputMessage]]] = [_unknown] * 256
for _tag, _fn in (
    ("B", _decode_begin),
    ("C", _decode_commit),
    ("O", _decode_origin),
    ("R", _decode_relation),
    ("Y", _decode_type),
    ("I", _decode_insert),
    ("U", _decode_update),
    ("D", _decode_delete),
    ("T", _decode_truncate),
    ("M", _decode_message),
):
    _DECODERS[ord(_tag)] = _fn
del _tag, _fn
