"""Streaming replication framing: the CopyData payloads of ``START_REPLICATION``.

Theory of operation: after ``START_REPLICATION SLOT ... LOGICAL ...`` the server sends CopyData
messages whose payload starts with a one-byte tag. ``'w'`` (XLogData) wraps one pgoutput
message (:func:`sources.postgres.pgoutput.decode` reads it); ``'k'`` (primary keepalive)
carries the server's WAL end and may ask for an immediate reply. The client answers with
``'r'`` (standby status update): the positions it has written, flushed and applied, which for
a logical slot means "the server may recycle WAL and advance ``confirmed_flush_lsn`` up to the
flush position". All integers are big-endian; times are microseconds since
2000-01-01 00:00:00 UTC (PostgreSQL's epoch).

These functions are pure: the I/O layer reads CopyData payloads from the connection, calls
:func:`parse_copy_data`, and writes the bytes of :func:`standby_status_update` back.
"""

from __future__ import annotations

import struct
import time
from typing import Final, NamedTuple

from sources.postgres.lsn import Lsn

#: Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
PG_EPOCH_UNIX: Final = 946_684_800
_PG_EPOCH_US: Final = PG_EPOCH_UNIX * 1_000_000

_XLOGDATA = struct.Struct(">xQQq")  # 'w', dataStart, walEnd, sendTime; then the data
_KEEPALIVE = struct.Struct(">xQq?")  # 'k', walEnd, sendTime, replyRequested
_STATUS = struct.Struct(">cQQQq?")  # 'r', write, flush, apply, clock, replyRequested


class ProtocolError(ValueError):
    """A CopyData payload that is not a replication message this module knows."""


class XLogData(NamedTuple):
    """``'w'``: WAL data; ``payload`` is one pgoutput message."""

    data_start: Lsn
    wal_end: Lsn
    send_time: int
    payload: memoryview | bytes


class Keepalive(NamedTuple):
    """``'k'``: primary keepalive; answer at once when ``reply_requested``."""

    wal_end: Lsn
    send_time: int
    reply_requested: bool


def parse_copy_data(buf: bytes | memoryview) -> XLogData | Keepalive:
    """Parse one CopyData payload from the replication stream.

    ``XLogData.payload`` is a slice of ``buf`` of the same kind: pass a ``memoryview`` to avoid a
    copy, ``bytes`` to get ``bytes``. Raises :class:`ProtocolError` on an unknown tag or a short
    message.
    """
    if not buf:
        raise ProtocolError("empty CopyData payload")
    tag = buf[0]
    try:
        if tag == 0x77:  # 'w'
            start, end, sent = _XLOGDATA.unpack_from(buf)
            return XLogData(Lsn(start), Lsn(end), sent, buf[25:])
        if tag == 0x6B:  # 'k'
            end, sent, reply = _KEEPALIVE.unpack_from(buf)
            return Keepalive(Lsn(end), sent, reply)
    except struct.error as exc:
        raise ProtocolError(f"truncated {chr(tag)!r} message ({len(buf)} bytes)") from exc
    raise ProtocolError(f"unknown replication message tag {bytes([tag])!r}")


def standby_status_update(
    write_lsn: int,
    flush_lsn: int,
    apply_lsn: int,
    now_us: int | None = None,
    reply: bool = False,
) -> bytes:
    """The ``'r'`` standby status update, ready to send as one CopyData payload.

    ``now_us`` is the client clock in microseconds since 2000-01-01 UTC (the current time when
    omitted); ``reply`` asks the server to answer with a keepalive at once.
    """
    if now_us is None:
        now_us = unix_to_pg_time(time.time())
    return _STATUS.pack(b"r", write_lsn, flush_lsn, apply_lsn, now_us, reply)


def pg_time_to_unix(us: int) -> float:
    """Microseconds since 2000-01-01 UTC -> Unix seconds."""
    return (us + _PG_EPOCH_US) / 1_000_000


def unix_to_pg_time(seconds: float) -> int:
    """Unix seconds -> microseconds since 2000-01-01 UTC (rounded to the microsecond)."""
    return round(seconds * 1_000_000) - _PG_EPOCH_US
