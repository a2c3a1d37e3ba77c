"""The MySQL / MariaDB binlog protocol: event bytes in, named messages out (pure, sans-IO).

Theory of operation. A replica's binlog stream, like a binlog file after its 4-byte magic, is a
sequence of *events*. Each has a 19-byte header (v4: timestamp, type, server id, size, the end
position of the event in its binlog file, flags), a fixed *post-header* whose length per type
the FORMAT_DESCRIPTION event announces, a body, and, when the server writes checksums, a 4-byte
CRC32 of everything before it. :class:`BinlogReader` holds the little state the protocol needs to
read the next event (the checksum algorithm and post-header lengths of the last
FORMAT_DESCRIPTION, the current binlog file name from the last ROTATE) and turns one event's
bytes into one message of this module: :class:`FormatDescription`, :class:`Rotate`,
:class:`Query`, :class:`Xid`, :class:`TableMap`, :class:`WriteRows` / :class:`UpdateRows` /
:class:`DeleteRows`, :class:`MySQLGtid`, :class:`MariaDBGtid`, :class:`GtidList`,
:class:`Heartbeat`, ... (the protocol's own names). It never touches a socket or runs a query.

Checksums: with ``binlog_checksum=CRC32`` every event ends with the CRC32 of its bytes; the
reader **verifies** it (a mismatch is a :class:`~cdc.errors.ProtocolError`: the bytes were
damaged on the way, and retrying would not read other bytes). The ROTATE a server makes up at
the start of a dump comes before any FORMAT_DESCRIPTION; the I/O layer tells the reader whether
the dump carries checksums (``checksum=``, what it asked the server for).

Row events are framed here, not decoded: :class:`WriteRows` and its siblings carry the table id,
the columns-present bitmaps and the ``(data, start, end)`` span of the row images in the
event's own buffer, so :mod:`.rows` decodes them without a copy. A :class:`TableMap` carries its
description bytes (``body``); :func:`table_map_columns` reads them into :class:`ColumnDef`s,
optional metadata included (``binlog_row_metadata=FULL``: names, signedness, collations,
ENUM/SET members, geometry types, primary key), only for the tables the caller wants.

MariaDB's compressed events (``log_bin_compress=ON``: QUERY_COMPRESSED and the six compressed
row events) are decompressed here (zlib), so the caller sees a plain :class:`Query` or rows
message. Events this build cannot read correctly (MySQL's TRANSACTION_PAYLOAD, i.e.
``binlog_transaction_compression=ON``, tagged GTIDs, row events of before MySQL 5.1.18, an
encrypted binlog) come out as :class:`Unsupported` with the reason, and the caller stops with
it; events without meaning for change capture come out as :class:`Ignored`. A malformed event
raises :class:`~cdc.errors.ProtocolError` with the position (``file:offset`` of its start).
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, NamedTuple

from cdc.errors import ProtocolError

# -- event types (MySQL binlog_event.h, MariaDB log_event.h) ------------------------------------

UNKNOWN_EVENT: Final = 0
START_EVENT_V3: Final = 1
QUERY_EVENT: Final = 2
STOP_EVENT: Final = 3
ROTATE_EVENT: Final = 4
INTVAR_EVENT: Final = 5
RAND_EVENT: Final = 13
USER_VAR_EVENT: Final = 14
FORMAT_DESCRIPTION_EVENT: Final = 15
XID_EVENT: Final = 16
TABLE_MAP_EVENT: Final = 19
PRE_GA_WRITE_ROWS_EVENT: Final = 20
PRE_GA_UPDATE_ROWS_EVENT: Final = 21
PRE_GA_DELETE_ROWS_EVENT: Final = 22
WRITE_ROWS_EVENT_V1: Final = 23
UPDATE_ROWS_EVENT_V1: Final = 24
DELETE_ROWS_EVENT_V1: Final = 25
INCIDENT_EVENT: Final = 26
HEARTBEAT_LOG_EVENT: Final = 27
IGNORABLE_LOG_EVENT: Final = 28
ROWS_QUERY_LOG_EVENT: Final = 29
WRITE_ROWS_EVENT: Final = 30
UPDATE_ROWS_EVENT: Final = 31
DELETE_ROWS_EVENT: Final = 32
GTID_LOG_EVENT: Final = 33
ANONYMOUS_GTID_LOG_EVENT: Final = 34
PREVIOUS_GTIDS_LOG_EVENT: Final = 35
TRANSACTION_CONTEXT_EVENT: Final = 36
VIEW_CHANGE_EVENT: Final = 37
XA_PREPARE_LOG_EVENT: Final = 38
PARTIAL_UPDATE_ROWS_EVENT: Final = 39
TRANSACTION_PAYLOAD_EVENT: Final = 40
HEARTBEAT_LOG_EVENT_V2: Final = 41
GTID_TAGGED_LOG_EVENT: Final = 42
# MariaDB
ANNOTATE_ROWS_EVENT: Final = 160
BINLOG_CHECKPOINT_EVENT: Final = 161
GTID_EVENT: Final = 162
GTID_LIST_EVENT: Final = 163
START_ENCRYPTION_EVENT: Final = 164
QUERY_COMPRESSED_EVENT: Final = 165
WRITE_ROWS_COMPRESSED_EVENT_V1: Final = 166
UPDATE_ROWS_COMPRESSED_EVENT_V1: Final = 167
DELETE_ROWS_COMPRESSED_EVENT_V1: Final = 168
WRITE_ROWS_COMPRESSED_EVENT: Final = 169
UPDATE_ROWS_COMPRESSED_EVENT: Final = 170
DELETE_ROWS_COMPRESSED_EVENT: Final = 171

#: event header length (binlog v4)
HEADER_LEN: Final = 19
#: FORMAT_DESCRIPTION checksum algorithms
CHECKSUM_OFF: Final = 0
CHECKSUM_CRC32: Final = 1
CHECKSUM_UNDEF: Final = 255
#: header flag of events the server made up for the dump (not in the file)
LOG_EVENT_ARTIFICIAL_F: Final = 0x20
#: ROWS event flag: the last row event of a statement
STMT_END_F: Final = 1
#: MariaDB GTID_EVENT flags2
FL_STANDALONE: Final = 1
FL_GROUP_COMMIT_ID: Final = 2
FL_PREPARED_XA: Final = 64
FL_COMPLETED_XA: Final = 128

# TABLE_MAP optional metadata field types
SIGNEDNESS: Final = 1
DEFAULT_CHARSET: Final = 2
COLUMN_CHARSET: Final = 3
COLUMN_NAME: Final = 4
SET_STR_VALUE: Final = 5
ENUM_STR_VALUE: Final = 6
GEOMETRY_TYPE: Final = 7
SIMPLE_PRIMARY_KEY: Final = 8
PRIMARY_KEY_WITH_PREFIX: Final = 9
ENUM_AND_SET_DEFAULT_CHARSET: Final = 10
ENUM_AND_SET_COLUMN_CHARSET: Final = 11
COLUMN_VISIBILITY: Final = 12

# column type codes used by the TABLE_MAP metadata (include/mysql_com.h: enum_field_types)
_TINY, _SHORT, _LONG, _FLOAT, _DOUBLE, _LONGLONG, _INT24, _YEAR = 1, 2, 3, 4, 5, 8, 9, 13
_VARCHAR, _BIT, _TIMESTAMP2, _DATETIME2, _TIME2 = 15, 16, 17, 18, 19
_JSON, _NEWDECIMAL, _ENUM, _SET, _BLOB, _VAR_STRING, _STRING, _GEOMETRY = (
    245, 246, 247, 248, 252, 253, 254, 255,
)
_NUMERIC: Final = frozenset(
    {_TINY, _SHORT, _INT24, _LONG, _LONGLONG, _NEWDECIMAL, _FLOAT, _DOUBLE, _YEAR}
)
_CHARACTER: Final = frozenset({_STRING, _VAR_STRING, _VARCHAR, _BLOB})

_header = struct.Struct("<IBIIIH").unpack_from
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_from_bytes = int.from_bytes


# -- messages ---------------------------------------------------------------------------------


class EventHeader(NamedTuple):
    """The 19-byte v4 header. ``log_pos`` is the end of the event in its binlog file (0 for
    events the server makes up for a dump); ``start`` is where the event begins in its file
    (``log_pos - event_size``, 0 when ``log_pos`` is 0)."""

    timestamp: int
    type: int
    server_id: int
    event_size: int
    log_pos: int
    flags: int

    @property
    def start(self) -> int:
        return self.log_pos - self.event_size if self.log_pos else 0


class FormatDescription(NamedTuple):
    header: EventHeader
    binlog_version: int
    server_version: str
    create_timestamp: int
    header_length: int
    post_header_lengths: bytes
    checksum_alg: int  # CHECKSUM_OFF, CHECKSUM_CRC32 (CHECKSUM_UNDEF: a server without them)


class Rotate(NamedTuple):
    header: EventHeader
    position: int
    next_file: str


class Query(NamedTuple):
    header: EventHeader
    thread_id: int
    exec_time: int
    error_code: int
    schema: str  # the default schema (``USE db``) the statement ran in
    query: str
    status_vars: bytes


class Xid(NamedTuple):
    header: EventHeader
    xid: int


class XaPrepare(NamedTuple):
    header: EventHeader
    one_phase: bool
    xid: bytes


class MySQLGtid(NamedTuple):
    """MySQL GTID_LOG_EVENT: the transaction ``sid:gno`` starts."""

    header: EventHeader
    flags: int
    sid: str  # server uuid, canonical text
    gno: int
    last_committed: int
    sequence_number: int
    immediate_commit_us: int  # 0 when absent
    original_commit_us: int  # the commit time on the source of the transaction; 0 when absent

    @property
    def gtid(self) -> str:
        return f"{self.sid}:{self.gno}"


class MariaDBGtid(NamedTuple):
    """MariaDB GTID_EVENT: the event group ``domain-server-seq`` starts (``server_id`` is the
    header's)."""

    header: EventHeader
    seq_no: int
    domain_id: int
    flags2: int
    commit_id: int  # group commit id, 0 without FL_GROUP_COMMIT_ID
    xid: bytes  # XA: the transaction's xid (FL_PREPARED_XA / FL_COMPLETED_XA), else b""

    @property
    def gtid(self) -> str:
        return f"{self.domain_id}-{self.header.server_id}-{self.seq_no}"

    @property
    def standalone(self) -> bool:
        return bool(self.flags2 & FL_STANDALONE)


class GtidList(NamedTuple):
    """MariaDB GTID_LIST_EVENT: the binlog state at the start of a file, ``(domain, server,
    seq)`` triples."""

    header: EventHeader
    flags: int
    gtids: tuple[tuple[int, int, int], ...]


class BinlogCheckpoint(NamedTuple):
    header: EventHeader
    file: str


class AnnotateRows(NamedTuple):
    header: EventHeader
    query: str


class Heartbeat(NamedTuple):
    """The server has nothing to send (``log_pos``: where it stands in ``file``)."""

    header: EventHeader
    file: str


class TableMap(NamedTuple):
    """A table id is bound to a table description. ``body``: the description bytes from the
    two flag bytes after the table id up to the checksum (the same for every TABLE_MAP of one
    definition; :func:`table_map_columns` reads it)."""

    header: EventHeader
    table_id: int
    schema: str
    table: str
    body: bytes


class WriteRows(NamedTuple):
    """Inserted rows: images in ``data[start:end]``, columns present per ``present``."""

    header: EventHeader
    table_id: int
    flags: int
    width: int
    present: bytes
    data: bytes
    start: int
    end: int


class DeleteRows(NamedTuple):
    header: EventHeader
    table_id: int
    flags: int
    width: int
    present: bytes
    data: bytes
    start: int
    end: int


class UpdateRows(NamedTuple):
    """Updated rows: (before, after) image pairs; ``present`` for before, ``present_after``."""

    header: EventHeader
    table_id: int
    flags: int
    width: int
    present: bytes
    present_after: bytes
    data: bytes
    start: int
    end: int


class PartialUpdateRows(NamedTuple):
    """MySQL PARTIAL_UPDATE_ROWS_EVENT (``binlog_row_value_options=PARTIAL_JSON``)."""

    header: EventHeader
    table_id: int


class Stop(NamedTuple):
    header: EventHeader


class Ignored(NamedTuple):
    """An event without meaning for change capture (INTVAR, ROWS_QUERY, PREVIOUS_GTIDS, ...)."""

    header: EventHeader


class Unsupported(NamedTuple):
    """An event this build cannot read correctly; ``reason`` says why and what to change."""

    header: EventHeader
    reason: str


Event = (
    FormatDescription | Rotate | Query | Xid | XaPrepare | MySQLGtid | MariaDBGtid | GtidList
    | BinlogCheckpoint | AnnotateRows | Heartbeat | TableMap | WriteRows | DeleteRows | UpdateRows
    | PartialUpdateRows | Stop | Ignored | Unsupported
)


class ColumnDef(NamedTuple):
    """One column of a TABLE_MAP: its type (ENUM / SET resolved from STRING), per-type
    metadata and, with ``binlog_row_metadata=FULL``, the optional metadata."""

    type: int
    name: str | None
    nullable: bool
    unsigned: bool = False
    collation: int | None = None  # collation id (character, ENUM and SET columns)
    max_length: int = 0  # VARCHAR / CHAR / BINARY: bytes
    length_size: int = 0  # BLOB / TEXT / JSON / GEOMETRY: bytes of the length prefix
    precision: int = 0
    decimals: int = 0
    fsp: int = 0
    bits: int = 0
    size: int = 0  # ENUM / SET: bytes of the value; FLOAT / DOUBLE: 4 / 8
    members: tuple[bytes, ...] = ()  # ENUM / SET members, the bytes the server wrote
    geometry_type: int = 0
    visible: bool = True


class TableDescription(NamedTuple):
    """A TABLE_MAP's description, read from its ``body``."""

    schema: str
    table: str
    columns: tuple[ColumnDef, ...]
    primary_key: tuple[int, ...]  # column indexes in key order; () without a primary key
    has_names: bool  # the optional metadata named the columns (binlog_row_metadata=FULL)


# -- the reader -------------------------------------------------------------------------------

_ROWS_KIND: Final = {
    WRITE_ROWS_EVENT_V1: (WriteRows, 1, False),
    UPDATE_ROWS_EVENT_V1: (UpdateRows, 1, False),
    DELETE_ROWS_EVENT_V1: (DeleteRows, 1, False),
    WRITE_ROWS_EVENT: (WriteRows, 2, False),
    UPDATE_ROWS_EVENT: (UpdateRows, 2, False),
    DELETE_ROWS_EVENT: (DeleteRows, 2, False),
    WRITE_ROWS_COMPRESSED_EVENT_V1: (WriteRows, 1, True),
    UPDATE_ROWS_COMPRESSED_EVENT_V1: (UpdateRows, 1, True),
    DELETE_ROWS_COMPRESSED_EVENT_V1: (DeleteRows, 1, True),
    WRITE_ROWS_COMPRESSED_EVENT: (WriteRows, 2, True),
    UPDATE_ROWS_COMPRESSED_EVENT: (UpdateRows, 2, True),
    DELETE_ROWS_COMPRESSED_EVENT: (DeleteRows, 2, True),
}

_IGNORED: Final = frozenset(
    {
        START_EVENT_V3, INTVAR_EVENT, RAND_EVENT, USER_VAR_EVENT, INCIDENT_EVENT,
        IGNORABLE_LOG_EVENT, ROWS_QUERY_LOG_EVENT, ANONYMOUS_GTID_LOG_EVENT,
        PREVIOUS_GTIDS_LOG_EVENT, TRANSACTION_CONTEXT_EVENT, VIEW_CHANGE_EVENT,
        6, 7, 8, 9, 10, 11, 12, 17, 18,  # the LOAD DATA family (statement-based only)
    }
)

_UNSUPPORTED: Final = {
    TRANSACTION_PAYLOAD_EVENT: "a compressed transaction (TRANSACTION_PAYLOAD): cdc reads "
    "uncompressed binlogs only; SET GLOBAL binlog_transaction_compression = OFF",
    GTID_TAGGED_LOG_EVENT: "a tagged GTID (MySQL 8.4 GTID tags), which this build cannot read",
    PRE_GA_WRITE_ROWS_EVENT: "a row event of the pre-GA format (MySQL 5.1.0-5.1.17)",
    PRE_GA_UPDATE_ROWS_EVENT: "a row event of the pre-GA format (MySQL 5.1.0-5.1.17)",
    PRE_GA_DELETE_ROWS_EVENT: "a row event of the pre-GA format (MySQL 5.1.0-5.1.17)",
    START_ENCRYPTION_EVENT: "an encrypted binlog (START_ENCRYPTION): a replica receives "
    "decrypted events, so a dump should never hold one",
}


class BinlogReader:
    """Reads binlog events one at a time (see the module docstring).

    ``checksum``: whether events carry a 4-byte CRC32 until the first FORMAT_DESCRIPTION says
    (a dump's made-up ROTATE comes first; the I/O layer knows what it asked the server for).
    ``file``: the binlog file the first events belong to (errors name it; ROTATE moves it)."""

    __slots__ = ("checksum_len", "post_header", "file", "verify")

    def __init__(self, *, checksum: bool = False, file: str = "", verify: bool = True) -> None:
        self.checksum_len = 4 if checksum else 0
        #: post-header length per event type (index: type - 1), from the FORMAT_DESCRIPTION
        self.post_header = b""
        self.file = file
        self.verify = verify

    def header(self, data: bytes, start: int = 0) -> EventHeader:
        if len(data) - start < HEADER_LEN:
            raise self._error(None, f"an event of {len(data) - start} bytes, shorter than its header")
        return EventHeader(*_header(data, start))

    def parse(self, data: bytes, start: int = 0) -> Event:
        """The message of the event at ``data[start:]`` (one whole event: the rest of
        ``data``). Raises :class:`ProtocolError` for a malformed event."""
        h = self.header(data, start)
        end = start + h.event_size
        if end != len(data):
            raise self._error(h, f"the header says {h.event_size} bytes, the event has {len(data) - start}")
        t = h.type
        if t == FORMAT_DESCRIPTION_EVENT:
            return self._format_description(h, data, start, end)
        cs = self.checksum_len
        if cs and self.verify:
            stored = _u32(data, end - 4)[0]
            if zlib.crc32(memoryview(data)[start : end - 4]) != stored:
                raise self._error(h, "the event's CRC32 checksum does not match its bytes")
        body = start + HEADER_LEN
        stop = end - cs
        try:
            kind = _ROWS_KIND.get(t)
            if kind is not None:
                return self._rows(h, data, body, stop, *kind)
            if t == TABLE_MAP_EVENT:
                return self._table_map(h, data, body, stop)
            if t == XID_EVENT:
                return Xid(h, _u64(data, body)[0])
            if t == QUERY_EVENT or t == QUERY_COMPRESSED_EVENT:
                return self._query(h, data, body, stop, t == QUERY_COMPRESSED_EVENT)
            if t == GTID_EVENT:
                return self._mariadb_gtid(h, data, body, stop)
            if t == GTID_LOG_EVENT:
                return self._mysql_gtid(h, data, body, stop)
            if t == ROTATE_EVENT:
                rotate = Rotate(h, _u64(data, body)[0], _text(data[body + 8 : stop]))
                self.file = rotate.next_file
                return rotate
            if t == HEARTBEAT_LOG_EVENT:
                return Heartbeat(h, _text(data[body:stop]))
            if t == HEARTBEAT_LOG_EVENT_V2:
                return Heartbeat(h, self.file)
            if t == GTID_LIST_EVENT:
                return self._gtid_list(h, data, body, stop)
            if t == BINLOG_CHECKPOINT_EVENT:
                (n,) = _u32(data, body)
                return BinlogCheckpoint(h, _text(data[body + 4 : body + 4 + n]))
            if t == ANNOTATE_ROWS_EVENT:
                return AnnotateRows(h, data[body:stop].decode("utf-8", "backslashreplace"))
            if t == XA_PREPARE_LOG_EVENT:
                one_phase = bool(data[body])
                gl, bl = _u32(data, body + 5)[0], _u32(data, body + 9)[0]
                return XaPrepare(h, one_phase, bytes(data[body + 13 : body + 13 + gl + bl]))
            if t == PARTIAL_UPDATE_ROWS_EVENT:
                return PartialUpdateRows(h, self._table_id(data, body))
            if t == STOP_EVENT:
                return Stop(h)
            reason = _UNSUPPORTED.get(t)
            if reason is not None:
                return Unsupported(h, reason)
            if t in _IGNORED:
                return Ignored(h)
        except ProtocolError:
            raise
        except (IndexError, ValueError, struct.error, zlib.error, UnicodeDecodeError) as exc:
            raise self._error(h, f"malformed event of type {t}: {exc!r}") from exc
        if h.flags & 0x80:  # LOG_EVENT_IGNORABLE_F: the server says a replica may skip it
            return Ignored(h)
        return Unsupported(h, f"an event of unknown type {t}")

    # -- helpers ----------------------------------------------------------------------------

    def _error(self, h: EventHeader | None, what: str) -> ProtocolError:
        where = f"{self.file}:{h.start}" if h is not None and h.log_pos else self.file or "?"
        kind = f" (event type {h.type})" if h is not None else ""
        return ProtocolError(f"malformed binlog event at {where}{kind}: {what}", position=where)

    def _post_header_len(self, t: int, default: int) -> int:
        ph = self.post_header
        return ph[t - 1] if 0 < t <= len(ph) else default

    def _table_id(self, data: bytes, p: int) -> int:
        if self._post_header_len(TABLE_MAP_EVENT, 8) == 6:
            return int(_u32(data, p)[0])
        return _from_bytes(data[p : p + 6], "little")

    def _format_description(self, h: EventHeader, data: bytes, start: int, end: int) -> FormatDescription:
        p = start + HEADER_LEN
        try:
            version = _u16(data, p)[0]
            server = data[p + 2 : p + 52].split(b"\0", 1)[0].decode("ascii", "replace")
            created = _u32(data, p + 52)[0]
            header_len = data[p + 56]
        except (IndexError, struct.error) as exc:
            raise self._error(h, f"short FORMAT_DESCRIPTION: {exc!r}") from exc
        if header_len != HEADER_LEN:
            raise self._error(h, f"event headers of {header_len} bytes (binlog v4 has {HEADER_LEN})")
        # servers with checksums (MySQL 5.6.1+, MariaDB 5.3+) end this event with the
        # algorithm byte and a checksum field, whatever the algorithm
        alg = CHECKSUM_UNDEF
        tail = end
        if _has_checksum_alg(server):
            alg = data[end - 5]
            tail = end - 5
        lengths = bytes(data[p + 57 : tail])
        if alg == CHECKSUM_CRC32 and self.verify:
            if zlib.crc32(memoryview(data)[start : end - 4]) != _u32(data, end - 4)[0]:
                raise self._error(h, "the FORMAT_DESCRIPTION's CRC32 checksum does not match its bytes")
        elif alg not in (CHECKSUM_OFF, CHECKSUM_CRC32, CHECKSUM_UNDEF):
            raise self._error(h, f"unknown binlog checksum algorithm {alg}")
        self.checksum_len = 4 if alg == CHECKSUM_CRC32 else 0
        self.post_header = lengths
        return FormatDescription(h, version, server, created, header_len, lengths, alg)

    def _query(self, h: EventHeader, data: bytes, p: int, stop: int, compressed: bool) -> Query:
        thread_id, exec_time = _u32(data, p)[0], _u32(data, p + 4)[0]
        db_len = data[p + 8]
        error_code = _u16(data, p + 9)[0]
        status_len = _u16(data, p + 11)[0]
        p += self._post_header_len(QUERY_EVENT, 13)
        status = bytes(data[p : p + status_len])
        p += status_len
        schema = data[p : p + db_len].decode("utf-8", "replace")
        p += db_len + 1
        raw = bytes(data[p:stop])
        if compressed:
            raw = _uncompress(raw)
        return Query(h, thread_id, exec_time, error_code, schema, raw.decode("utf-8", "backslashreplace"), status)

    def _mariadb_gtid(self, h: EventHeader, data: bytes, p: int, stop: int) -> MariaDBGtid:
        seq, domain, flags2 = _u64(data, p)[0], _u32(data, p + 8)[0], data[p + 12]
        q = p + 13
        commit_id = 0
        if flags2 & FL_GROUP_COMMIT_ID:
            commit_id = _u64(data, q)[0]
            q += 8
        xid = b""
        if flags2 & (FL_PREPARED_XA | FL_COMPLETED_XA):
            gl, bl = data[q + 4], data[q + 5]
            xid = bytes(data[q : q + 6 + gl + bl])
        return MariaDBGtid(h, seq, domain, flags2, commit_id, xid)

    def _mysql_gtid(self, h: EventHeader, data: bytes, p: int, stop: int) -> MySQLGtid:
        flags = data[p]
        sid = data[p + 1 : p + 17].hex()
        sid = f"{sid[:8]}-{sid[8:12]}-{sid[12:16]}-{sid[16:20]}-{sid[20:]}"
        gno = _u64(data, p + 17)[0]
        last_committed = sequence_number = 0
        q = p + 25
        if q < stop and data[q] == 2:  # logical timestamps
            last_committed, sequence_number = _u64(data, q + 1)[0], _u64(data, q + 9)[0]
            q += 17
        immediate = original = 0
        if q + 7 <= stop:
            immediate = _from_bytes(data[q : q + 7], "little")
            q += 7
            if immediate & (1 << 55):
                immediate &= ~(1 << 55)
                if q + 7 <= stop:
                    original = _from_bytes(data[q : q + 7], "little")
            else:
                original = immediate
        return MySQLGtid(h, flags, sid, gno, last_committed, sequence_number, immediate, original)

    def _gtid_list(self, h: EventHeader, data: bytes, p: int, stop: int) -> GtidList:
        (word,) = _u32(data, p)
        count, flags = word & 0x0FFFFFFF, word >> 28
        p += 4
        if p + 16 * count > stop:
            raise ValueError(f"{count} GTIDs do not fit in the event")
        gtids = tuple(
            (_u32(data, q)[0], _u32(data, q + 4)[0], _u64(data, q + 8)[0]) for q in range(p, p + 16 * count, 16)
        )
        return GtidList(h, flags, gtids)

    def _table_map(self, h: EventHeader, data: bytes, p: int, stop: int) -> TableMap:
        ph = self._post_header_len(TABLE_MAP_EVENT, 8)
        table_id = self._table_id(data, p)
        q = p + ph
        n = data[q]
        schema = data[q + 1 : q + 1 + n].decode("utf-8")
        q += n + 2
        n = data[q]
        table = data[q + 1 : q + 1 + n].decode("utf-8")
        return TableMap(h, table_id, schema, table, bytes(data[p + ph - 2 : stop]))

    def _rows(
        self, h: EventHeader, data: bytes, p: int, stop: int, cls: type, version: int, compressed: bool
    ) -> WriteRows | UpdateRows | DeleteRows:
        id_len = 4 if self._post_header_len(h.type, 8) == 6 else 6
        table_id = _from_bytes(data[p : p + id_len], "little")
        flags = _u16(data, p + id_len)[0]
        q = p + id_len + 2
        if version == 2:
            extra = _u16(data, q)[0]  # the length of the extra row data, itself included
            if extra < 2:
                raise ValueError(f"extra row data of length {extra}")
            q += extra
        width, q = lenenc(data, q)
        nb = (width + 7) >> 3
        present = bytes(data[q : q + nb])
        q += nb
        present_after = b""
        if cls is UpdateRows:
            present_after = bytes(data[q : q + nb])
            q += nb
        if q > stop:
            raise ValueError("the rows event ends inside its header")
        if compressed:
            data = _uncompress(bytes(data[q:stop]))
            q, stop = 0, len(data)
        if cls is UpdateRows:
            return UpdateRows(h, table_id, flags, width, present, present_after, data, q, stop)
        if cls is WriteRows:
            return WriteRows(h, table_id, flags, width, present, data, q, stop)
        return DeleteRows(h, table_id, flags, width, present, data, q, stop)


def _has_checksum_alg(server_version: str) -> bool:
    """Whether a FORMAT_DESCRIPTION of this server version ends with the checksum algorithm:
    MySQL 5.6.1 and later, MariaDB 5.3 and later."""
    head = server_version.split("-", 1)[0]
    try:
        parts = tuple(int(x) for x in head.split(".")[:3])
    except ValueError:
        return True
    if "mariadb" in server_version.lower():
        return parts >= (5, 3)
    return parts >= (5, 6, 1)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _uncompress(raw: bytes) -> bytes:
    """MariaDB's compressed event payload: a header byte (0x80 | n), the uncompressed length
    in ``n`` big-endian bytes, then a zlib stream."""
    if not raw:
        raise ValueError("an empty compressed payload")
    head = raw[0]
    n = head & 0x07
    if not head & 0x80 or n == 0 or n > 4:
        raise ValueError(f"bad compressed payload header 0x{head:02x}")
    size = _from_bytes(raw[1 : 1 + n], "big")
    out = zlib.decompress(raw[1 + n :])
    if len(out) != size:
        raise ValueError(f"the compressed payload holds {len(out)} bytes, its header says {size}")
    return out


def lenenc(b: bytes, p: int) -> tuple[int, int]:
    """A length-encoded integer at ``p``: (value, offset after it)."""
    first = b[p]
    if first < 0xFB:
        return first, p + 1
    if first == 0xFC:
        return b[p + 1] | b[p + 2] << 8, p + 3
    if first == 0xFD:
        return b[p + 1] | b[p + 2] << 8 | b[p + 3] << 16, p + 4
    if first == 0xFE:
        return _u64(b, p + 1)[0], p + 9
    raise ValueError(f"bad length-encoded integer 0x{first:02x} at {p}")


# -- TABLE_MAP descriptions ---------------------------------------------------------------------


def table_map_columns(body: bytes, *, mariadb: bool) -> TableDescription:
    """Read a :attr:`TableMap.body`: the column types and per-type metadata, the null bitmap,
    and the optional metadata (``binlog_row_metadata=MINIMAL`` / ``FULL``).

    ``mariadb``: MariaDB counts GEOMETRY columns among the character columns of the charset
    metadata (its geometry type derives from BLOB); MySQL does not. Raises ValueError for a
    malformed description (the caller knows the event's position)."""
    p = 2  # flags
    n = body[p]
    schema = body[p + 1 : p + 1 + n].decode("utf-8")
    p += n + 2
    n = body[p]
    table = body[p + 1 : p + 1 + n].decode("utf-8")
    p += n + 2
    count, p = lenenc(body, p)
    types = list(body[p : p + count])
    if len(types) != count:
        raise ValueError(f"the TABLE_MAP of {schema}.{table} ends inside its column types")
    p += count
    meta_len, p = lenenc(body, p)
    meta_end = p + meta_len
    cols: list[dict[str, object]] = []
    for t in types:
        d: dict[str, object] = {"type": t}
        if t == _VARCHAR:
            d["max_length"] = _u16(body, p)[0]
            p += 2
        elif t in (_FLOAT, _DOUBLE):
            d["size"] = body[p]
            p += 1
        elif t in (_TIMESTAMP2, _DATETIME2, _TIME2):
            d["fsp"] = body[p]
            p += 1
        elif t in (_STRING, _VAR_STRING):
            meta = body[p] << 8 | body[p + 1]
            p += 2
            real = meta >> 8
            if real in (_ENUM, _SET):
                d["type"] = real
                d["size"] = meta & 0xFF
            else:
                d["max_length"] = (((meta >> 4) & 0x300) ^ 0x300) + (meta & 0xFF)
        elif t in (_BLOB, _GEOMETRY, _JSON):
            d["length_size"] = body[p]
            p += 1
        elif t == _NEWDECIMAL:
            d["precision"], d["decimals"] = body[p], body[p + 1]
            p += 2
        elif t == _BIT:
            bits, nbytes = body[p], body[p + 1]
            d["bits"] = nbytes * 8 + bits
            p += 2
        cols.append(d)
    if p != meta_end:
        raise ValueError(f"the TABLE_MAP of {schema}.{table}: column metadata of {meta_len} bytes, read {p - meta_end + meta_len}")
    nulls = body[p : p + (count + 7) // 8]
    p += (count + 7) // 8
    for i, d in enumerate(cols):
        d["nullable"] = bool(nulls[i >> 3] & (1 << (i & 7)))
    real_types = [int(str(d["type"])) for d in cols]
    character = [i for i, t in enumerate(real_types) if t in _CHARACTER or (mariadb and t == _GEOMETRY)]
    enum_set = [i for i, t in enumerate(real_types) if t in (_ENUM, _SET)]
    numeric = [i for i, t in enumerate(real_types) if t in _NUMERIC]
    names: list[str] = []
    key: list[int] = []
    end = len(body)
    while p < end:
        field = body[p]
        size, p = lenenc(body, p + 1)
        stop = p + size
        if stop > end:
            raise ValueError(f"optional metadata field {field} overruns the TABLE_MAP of {schema}.{table}")
        if field == SIGNEDNESS:
            for j, i in enumerate(numeric):
                if body[p + (j >> 3)] & (0x80 >> (j & 7)):
                    cols[i]["unsigned"] = True
        elif field in (DEFAULT_CHARSET, ENUM_AND_SET_DEFAULT_CHARSET):
            which = character if field == DEFAULT_CHARSET else enum_set
            default, q = lenenc(body, p)
            given: dict[int, int] = {}
            while q < stop:
                idx, q = lenenc(body, q)
                coll, q = lenenc(body, q)
                given[idx] = coll
            for j, i in enumerate(which):
                cols[i]["collation"] = given.get(j, default)
        elif field in (COLUMN_CHARSET, ENUM_AND_SET_COLUMN_CHARSET):
            which = character if field == COLUMN_CHARSET else enum_set
            q = p
            for i in which:
                if q >= stop:
                    break
                coll, q = lenenc(body, q)
                cols[i]["collation"] = coll
        elif field == COLUMN_NAME:
            q = p
            while q < stop:
                ln, q = lenenc(body, q)
                names.append(body[q : q + ln].decode("utf-8"))
                q += ln
        elif field in (SET_STR_VALUE, ENUM_STR_VALUE):
            which = [i for i in enum_set if real_types[i] == (_SET if field == SET_STR_VALUE else _ENUM)]
            q = p
            k = 0
            while q < stop:
                nm, q = lenenc(body, q)
                members = []
                for _ in range(nm):
                    ln, q = lenenc(body, q)
                    members.append(bytes(body[q : q + ln]))
                    q += ln
                if k < len(which):
                    cols[which[k]]["members"] = tuple(members)
                k += 1
        elif field == GEOMETRY_TYPE:
            q = p
            geos = [i for i, t in enumerate(real_types) if t == _GEOMETRY]
            for i in geos:
                if q >= stop:
                    break
                g, q = lenenc(body, q)
                cols[i]["geometry_type"] = g
        elif field == SIMPLE_PRIMARY_KEY:
            q = p
            while q < stop:
                idx, q = lenenc(body, q)
                key.append(idx)
        elif field == PRIMARY_KEY_WITH_PREFIX:
            q = p
            while q < stop:
                idx, q = lenenc(body, q)
                _prefix, q = lenenc(body, q)
                key.append(idx)
        elif field == COLUMN_VISIBILITY:
            for i in range(count):
                if not body[p + (i >> 3)] & (0x80 >> (i & 7)):
                    cols[i]["visible"] = False
        p = stop
    if names and len(names) != count:
        raise ValueError(f"the TABLE_MAP of {schema}.{table} names {len(names)} of {count} columns")
    for i in key:
        if i >= count:
            raise ValueError(f"the TABLE_MAP of {schema}.{table} has key column {i} of {count}")
    columns = tuple(
        ColumnDef(
            type=int(str(d["type"])),
            name=names[i] if names else None,
            nullable=bool(d["nullable"]),
            unsigned=bool(d.get("unsigned", False)),
            collation=_opt_int(d.get("collation")),
            max_length=_int(d.get("max_length")),
            length_size=_int(d.get("length_size")),
            precision=_int(d.get("precision")),
            decimals=_int(d.get("decimals")),
            fsp=_int(d.get("fsp")),
            bits=_int(d.get("bits")),
            size=_int(d.get("size")),
            members=_members(d.get("members")),
            geometry_type=_int(d.get("geometry_type")),
            visible=bool(d.get("visible", True)),
        )
        for i, d in enumerate(cols)
    )
    return TableDescription(schema, table, columns, tuple(key), bool(names))


def _int(v: object) -> int:
    return v if isinstance(v, int) else 0


def _opt_int(v: object) -> int | None:
    return v if isinstance(v, int) else None


def _members(v: object) -> tuple[bytes, ...]:
    return v if isinstance(v, tuple) else ()
