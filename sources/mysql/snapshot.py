"""Snapshot chunks of MySQL / MariaDB tables, for :mod:`cdc.snapshot` (see :mod:`cdc.snapshot_api`).

Theory of operation. :class:`MySQLSnapshotReader` has a PyMySQL connection of its own (the DSN
of the source; it works whether or not the stream was opened) and reads one chunk per short
transaction, without any table lock:

1. ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`` (REPEATABLE READ, session
   ``time_zone = '+00:00'``, ``character_set_results = NULL`` so text arrives as stored);
2. the binlog position that matches the read (below);
3. a zero-row ``SELECT`` of the table, which takes its metadata lock until the commit, then its
   columns, primary key (and MariaDB JSON checks) from the catalog: the definition the read
   uses. A definition seen before reuses its compiled reader;
4. ``SELECT <columns> FROM db.table WHERE <key> > <cursor> ORDER BY <key> LIMIT n`` (the key
   comparison is spelled out as ``a > x OR (a = x AND b > y)``, which both servers turn into
   an index range; MariaDB does not for a row comparison);
5. ``COMMIT``.

*Which columns and which key.* The columns are the table's minus ``columns.exclude``; the key
is what the binlog's TABLE_MAP calls the primary key (so the stream's ``event.key``): the
``PRIMARY`` index, else the first unique index whose columns are all NOT NULL and whole (the
server promotes it); none: a keyless table, read in one piece. Column types are rebuilt as
:class:`.rows.ColumnMeta` from ``information_schema.COLUMNS`` and named with the stream's own
:func:`.rows.type_name`, so a chunk's :class:`~cdc.schema.TableSchema` equals the stream's for
the same definition (MariaDB ``UUID``/``INET4``/``INET6`` are named ``uuid``/``inet4``/``inet6``,
as the stream names them).

*Values, fast.* The result set is not parsed by PyMySQL: once the column definitions are read,
the text-protocol row packets are read from the socket in large blocks and decoded by a
function generated once per table definition (like :mod:`.rows` does for binlog images): per
row, straight-line code reads each length-prefixed field and converts it into exactly the JSON
value the stream produces for it, then builds the ``key`` and ``after`` dicts. The SELECT helps
where the server's text is not enough: FLOAT and DOUBLE as ``col * 1e0`` (a double printed in
full, then narrowed to the shortest float32 text as the stream does), UUID/INET as their
stored bytes (the keyset cursor's form), turned into the server's text form as the stream does. DECIMAL text is exact; DATE/TIME/DATETIME/TIMESTAMP text (UTC) is reshaped to the
contract's form (zero dates stay the server's text); BIT arrives as bytes; text is decoded with
the stream's codec for the column's charset; MariaDB JSON goes through the stream's own
:func:`.rows.mariadb_json`. Memory is bounded by one chunk (a keyless table: by the table).

*Cursor.* A JSON list with one value per key column, taken from the last row's raw fields:
integers (also BIT, and ENUM/SET as their index, compared as ``col+0``), DECIMAL/FLOAT/DOUBLE
and temporal values as text, strings and binary values as hex (compared as
``_charset X'..' COLLATE <the column's collation>`` or ``X'..'``, so the order is the index's).

*Watermarks.*

- MariaDB: ``binlog_snapshot_file`` / ``binlog_snapshot_position`` (session status after the
  consistent snapshot starts) is exactly the point of the read: every transaction that ends at
  or before it is visible to the read, none after. ``high`` is that position (when nothing but
  the header of a new binlog file lies before it in that file, the start of the file, which the
  stream reaches after a rotation without needing another transaction); ``visible(event)`` is
  "the event's transaction starts before it"; the read token is ``<file index>.<offset>``.
- MySQL 8 has no such status. The position and the executed GTID set are read (``SHOW BINARY
  LOG STATUS``, ``SHOW MASTER STATUS`` before 8.2) right before the snapshot starts (low) and
  right after (high). ``high`` is the position after: it includes everything the read can see.
  Visibility is conservative. With GTIDs, an event is visible when its GTID is in the low set:
  MySQL adds a GTID to the executed set only after the storage engine committed it, so the
  read sees it. Without GTIDs nothing is reported visible: MySQL writes a transaction to the
  binlog before InnoDB commits it, so a position before low does not prove that the read saw
  it, and answering "not seen" is always safe (the stream's full row wins; a keyless table is
  read again). Caveat: on a busy keyless table without GTIDs such re-reads may repeat. The
  read token also carries a random part, since a MySQL read cannot name its data exactly.
  MySQL JSON arrives as text: a DECIMAL inside a JSON document (only ``CAST(... AS JSON)`` of
  a DECIMAL makes one) reads as a number of equal value but not the stream's exact digits.

Rows emitted at a stream position ``P`` (a batch position, the end of a transaction) stand in
the schema registry at ``(file index of P, offset of P, 0)``: after every transaction before P
and with the stream's own point of a transaction starting at P; their ``source`` block is the
stream's with ``file``/``pos`` of P, ``tx`` null, ``ts_ms`` the read's time, ``snapshot: true``.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cdc._codegen import make_function
from cdc.errors import FatalError, FatalSourceError, Kind, RetriableSourceError
from cdc.names import split as split_table_name
from cdc.schema import Column, TableSchema
from cdc.snapshot_api import Chunk, SnapshotReader, TableInfo

from . import _wire, catalog
from . import rows as R
from .position import BinlogPosition, MySQLGtidSet, file_index, parse_position

#: bytes asked from the socket per read while a result set streams in
READ_SIZE = 256 * 1024
#: a read that fails with a passing server error (definition changed, deadlock) is tried again
READ_ATTEMPTS = 3
#: server errors worth another attempt inside one read_chunk call
_AGAIN = {
    1412,  # ER_TABLE_DEF_CHANGED: an ALTER committed after the snapshot started
    1213,  # ER_LOCK_DEADLOCK
    1205,  # ER_LOCK_WAIT_TIMEOUT
}
#: server errors that mean the connection or the server is going away
_GONE = {1053, 1077, 1927, 1317, 1969, 3024, 4031}
#: binlog events found at the start of a file before its first transaction
_HEADER_EVENTS = {
    "format_desc",
    "gtid_list",
    "binlog_checkpoint",
    "previous_gtids",
    "start_encryption",
}
_MAX_PACKET = 0xFFFFFF

_HEX_RE = re.compile(r"^(?:[0-9a-f]{2})*$")
_DECIMAL_RE = re.compile(r"^[+-]?[0-9]+(?:\.[0-9]+)?$")
_TEMPORAL_RE = re.compile(r"^-?[0-9]{1,4}[-:0-9 .]*$")
_CHARSET_RE = re.compile(r"^[A-Za-z0-9_]+$")


# -- values: text protocol -> the stream's JSON values ---------------------------------------


def _text(value: Any) -> str:
    """A catalog value as text (PyMySQL gives bytes for a binary-collated result column)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _unzero(s: bytes) -> str:
    """A ZEROFILL DECIMAL's text without its padding (``0001.50`` -> ``1.50``)."""
    t = s.decode().lstrip("0")
    return "0" + t if not t or t[0] == "." else t


def _fraction_tail(fsp: int) -> str:
    """What makes the server's fraction of ``fsp`` digits six digits long."""
    return ".000000" if fsp == 0 else "0" * (6 - fsp)


def _datetime_conv(fsp: int) -> Callable[[bytes], str]:
    tail = _fraction_tail(fsp)

    def conv(s: bytes) -> str:
        if (s[5] == 48 and s[6] == 48) or (s[8] == 48 and s[9] == 48):
            return s.decode()  # a zero or partly zero date: the server's text, as the stream has it
        return s.replace(b" ", b"T").decode() + tail

    return conv


def _timestamp_conv(fsp: int) -> Callable[[bytes], str]:
    tail = _fraction_tail(fsp) + "Z"

    def conv(s: bytes) -> str:
        if s[0] == 48 and s.startswith(b"0000-00-00"):
            return s.decode()  # the zero timestamp (no real one starts with a 0 year)
        return s.replace(b" ", b"T").decode() + tail

    return conv


def _time_conv(fsp: int) -> Callable[[bytes], str]:
    tail = _fraction_tail(fsp)

    def conv(s: bytes) -> str:
        return s.decode() + tail

    return conv


def _set_conv(decode: Callable[[bytes], str] | None) -> Callable[[bytes], list[str]]:
    def conv(s: bytes) -> list[str]:
        if not s:
            return []
        return (decode(s) if decode is not None else s.decode("utf-8")).split(",")

    return conv


def _mysql_json_text(s: bytes) -> Any:
    """A MySQL JSON value as the server prints it, as the Python value the stream's binary
    decoder gives (numbers, strings, lists, dicts; see the module notes for DECIMALs)."""
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        import json

        return json.loads(s)


def _lenc(b: bytes, p: int) -> tuple[int, int]:
    """A length-encoded integer of 2, 3 or 8 bytes at ``p``: (value, position after)."""
    n = b[p]
    if n == 252:
        return b[p + 1] | b[p + 2] << 8, p + 3
    if n == 253:
        return b[p + 1] | b[p + 2] << 8 | b[p + 3] << 16, p + 4
    if n == 254:
        return int.from_bytes(b[p + 1 : p + 9], "little"), p + 9
    raise ValueError(f"bad length prefix 0x{n:02x} in a row packet")


def _fields(b: bytes) -> list[bytes | None]:
    """Every field of one row packet's payload (slow path: the cursor of a chunk's last row)."""
    out: list[bytes | None] = []
    p = 0
    end = len(b)
    while p < end:
        n = b[p]
        if n == 251:
            out.append(None)
            p += 1
            continue
        if n < 251:
            p += 1
        else:
            n, p = _lenc(b, p)
        out.append(b[p : p + n])
        p += n
    return out


_NS: dict[str, Any] = {
    "_lenc": _lenc,
    "_b64": R.b64,
    "_float32": R.float32,
    "_fb": int.from_bytes,
    "_mariadb_json": R.mariadb_json,
    "_mysql_json": _mysql_json_text,
    "_unzero": _unzero,
}


# -- the catalog's view of a table --------------------------------------------------------------

_COLUMNS_SQL = (
    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_OCTET_LENGTH, "
    "NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_SET_NAME, COLLATION_NAME "
    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
    "ORDER BY ORDINAL_POSITION"
)

_INT_TYPES = {
    "tinyint": R.TINY,
    "smallint": R.SHORT,
    "mediumint": R.INT24,
    "int": R.LONG,
    "integer": R.LONG,
    "bigint": R.LONGLONG,
}
_LOB_LENGTH = {
    "tinytext": 1,
    "text": 2,
    "mediumtext": 3,
    "longtext": 4,
    "tinyblob": 1,
    "blob": 2,
    "mediumblob": 3,
    "longblob": 4,
}
_GEOMETRY_TYPES = {
    "geometry": 0,
    "point": 1,
    "linestring": 2,
    "polygon": 3,
    "multipoint": 4,
    "multilinestring": 5,
    "multipolygon": 6,
    "geometrycollection": 7,
    "geomcollection": 7,
}
_ESCAPES = {"0": "\0", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "Z": "\x1a"}


def parse_members(column_type: str) -> tuple[str, ...]:
    """The members of ``enum('a','it''s',...)`` / ``set(...)`` as ``COLUMN_TYPE`` writes them
    (quotes doubled, backslash escapes as in SQL string literals)."""
    text = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    members: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        if text[i] != "'":
            i += 1  # the commas between members
            continue
        i += 1
        buf: list[str] = []
        while i < n:
            c = text[i]
            if c == "'":
                if i + 1 < n and text[i + 1] == "'":
                    buf.append("'")
                    i += 2
                    continue
                i += 1
                break
            if c == "\\" and i + 1 < n:
                nxt = text[i + 1]
                buf.append(_ESCAPES.get(nxt, nxt))
                i += 2
                continue
            buf.append(c)
            i += 1
        members.append("".join(buf))
    return tuple(members)


@dataclass(frozen=True, slots=True)
class _Col:
    """One selected column: what the stream would call it and how its text becomes its value."""

    meta: R.ColumnMeta
    select: str  # the SELECT expression
    conv: str  # the conversion, with @ standing for the field's bytes
    consts: tuple[tuple[str, Any], ...]  # names the conversion refers to
    kind: str  # how a key value of it is compared: int, bit, decimal, float, text, binary, plugin, enum, set, temporal
    charset: str | None = None  # the server's charset name (text keys)
    collation: str | None = None
    plugin: str | None = None  # MariaDB UUID / INET4 / INET6


def _column(
    row: Sequence[Any],
    json_columns: frozenset[str],
    mariadb: bool,
    bigint_as_string: bool,
    table: str,
) -> _Col:
    (
        name,
        data_type,
        column_type,
        is_nullable,
        octets,
        precision,
        scale,
        dt_precision,
        charset_name,
        collation,
    ) = row
    name = _text(name)
    column_type = _text(column_type)
    charset_name = _text(charset_name) if charset_name is not None else None
    collation = _text(collation) if collation is not None else None
    dt = _text(data_type).lower()
    ctype = column_type.lower()
    nullable = _text(is_nullable).upper() == "YES"
    unsigned = " unsigned" in ctype
    zerofill = " zerofill" in ctype
    ident = catalog.quote_ident(name)
    charset = R.charset_of_collation(str(collation)) if collation else None
    if charset is None and charset_name:
        charset = str(charset_name).lower()
    consts: list[tuple[str, Any]] = []
    base: dict[str, Any] = {"name": name, "nullable": nullable}

    def text_codec(meta: R.ColumnMeta) -> str:
        decoder = R._codec_decoder(meta)
        if decoder is None:
            return "_b64(@)"
        found = R.CHARSETS.get(meta.charset or "")
        if found is not None and found[1] == "utf-8":
            return "@.decode('utf-8')"
        consts.append(("_dec", decoder))
        return "_dec(@)"

    if dt in _INT_TYPES:
        t = _INT_TYPES[dt]
        meta = R.ColumnMeta(type=t, unsigned=unsigned, **base)
        if t == R.LONGLONG and bigint_as_string:
            conv = "str(int(@))" if zerofill else "@.decode()"
        else:
            conv = "int(@)"
        return _Col(meta, ident, conv, (), "int")
    if dt in ("float", "double", "real", "double precision"):
        t = R.FLOAT if dt == "float" else R.DOUBLE
        meta = R.ColumnMeta(type=t, unsigned=unsigned, size=4 if t == R.FLOAT else 8, **base)
        # the column's own text has 6 digits (FLOAT) or its declared decimals: a double
        # product is printed in full, exactly
        conv = "_float32(float(@))" if t == R.FLOAT else "float(@)"
        return _Col(meta, f"({ident} * 1e0)", conv, (), "float")
    if dt in ("decimal", "numeric"):
        meta = R.ColumnMeta(
            type=R.NEWDECIMAL,
            unsigned=unsigned,
            precision=int(precision or 0),
            decimals=int(scale or 0),
            **base,
        )
        return _Col(meta, ident, "_unzero(@)" if zerofill else "@.decode()", (), "decimal")
    if dt in ("char", "varchar", "binary", "varbinary"):
        binary = dt in ("binary", "varbinary") or charset == "binary"
        t = R.STRING if dt in ("char", "binary") else R.VARCHAR
        meta = R.ColumnMeta(
            type=t,
            charset="binary" if binary else charset,
            codec=str(charset_name) if charset_name else None,
            max_length=int(octets or 0),
            **base,
        )
        if binary:
            conv = f"_b64(@.ljust({meta.max_length}, b'\\0'))" if t == R.STRING else "_b64(@)"
            return _Col(meta, ident, conv, (), "binary")
        return _Col(
            meta, ident, text_codec(meta), tuple(consts), "text", str(charset_name), str(collation)
        )
    if dt in _LOB_LENGTH or dt == "json":
        if dt == "json":  # MySQL's JSON type
            meta = R.ColumnMeta(type=R.JSON, length_size=4, **base)
            return _Col(meta, ident, "_mysql_json(@)", (), "json")
        binary = dt.endswith("blob") or charset == "binary"
        meta = R.ColumnMeta(
            type=R.BLOB,
            charset="binary" if binary else charset,
            codec=str(charset_name) if charset_name else None,
            length_size=_LOB_LENGTH[dt],
            json=mariadb and dt == "longtext" and name in json_columns and not binary,
            **base,
        )
        if binary:
            return _Col(meta, ident, "_b64(@)", (), "binary")
        if meta.json:
            decoder = R._codec_decoder(meta)
            found = R.CHARSETS.get(meta.charset or "")
            if decoder is None or (found is not None and found[1] == "utf-8"):
                return _Col(meta, ident, "_mariadb_json(@)", (), "json")
            return _Col(
                meta, ident, "_mariadb_json(_dec(@).encode())", (("_dec", decoder),), "json"
            )
        return _Col(
            meta, ident, text_codec(meta), tuple(consts), "text", str(charset_name), str(collation)
        )
    if dt == "date":
        return _Col(R.ColumnMeta(type=R.DATE, **base), ident, "@.decode()", (), "temporal")
    if dt in ("time", "datetime", "timestamp"):
        fsp = int(dt_precision or 0)
        t, make = {
            "time": (R.TIME2, _time_conv),
            "datetime": (R.DATETIME2, _datetime_conv),
            "timestamp": (R.TIMESTAMP2, _timestamp_conv),
        }[dt]
        return _Col(
            R.ColumnMeta(type=t, fsp=fsp, **base),
            ident,
            "_tconv(@)",
            (("_tconv", make(fsp)),),
            "temporal",
        )
    if dt == "year":
        return _Col(R.ColumnMeta(type=R.YEAR, **base), ident, "int(@)", (), "int")
    if dt in ("enum", "set"):
        members = parse_members(str(column_type))
        t = R.ENUM if dt == "enum" else R.SET
        meta = R.ColumnMeta(
            type=t,
            charset=charset,
            codec=str(charset_name) if charset_name else None,
            values=members,
            **base,
        )
        if t == R.ENUM:
            if R._codec_decoder(meta) is None:  # CHARACTER SET binary: the members' UTF-8 text
                return _Col(meta, ident, "@.decode('utf-8', 'replace')", (), "enum")
            return _Col(meta, ident, text_codec(meta), tuple(consts), "enum")
        decoder = R._codec_decoder(meta)
        found = R.CHARSETS.get(meta.charset or "")
        plain = decoder is None or (found is not None and found[1] == "utf-8")
        return _Col(
            meta, ident, "_sconv(@)", (("_sconv", _set_conv(None if plain else decoder)),), "set"
        )
    if dt == "bit":
        bits = int(precision or 1)
        meta = R.ColumnMeta(type=R.BIT, bits=bits, **base)
        return _Col(meta, ident, "format(_fb(@, 'big'), _bfmt)", (("_bfmt", f"0{bits}b"),), "bit")
    if dt in _GEOMETRY_TYPES:
        meta = R.ColumnMeta(
            type=R.GEOMETRY, length_size=4, geometry_type=_GEOMETRY_TYPES[dt], **base
        )
        return _Col(meta, ident, "_b64(@)", (), "binary")
    if mariadb and dt in R.PLUGIN_SIZES:
        # read as the stored bytes (which also make the keyset cursor), shown as the text the
        # stream writes for them
        size = R.PLUGIN_SIZES[dt]
        meta = R.ColumnMeta(type=R.STRING, charset="binary", max_length=size, plugin=dt, **base)
        return _Col(
            meta,
            f"CAST({ident} AS BINARY({size}))",
            f"_ptext(@.ljust({size}, b'\\0'))",
            (("_ptext", R.PLUGIN_TEXT[dt]),),
            "plugin",
            plugin=dt.upper(),
        )
    raise FatalSourceError(
        f"cannot snapshot {table}: column {name!r} has the type {column_type}, which the snapshot "
        "reader cannot read as the binlog stream delivers it; exclude the column (columns.exclude) "
        "or leave the table out of the snapshot",
        kind=Kind.SNAPSHOT_REFUSED,
        table=table,
    )


def primary_key_from_index_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The key the server treats as the primary key, from ``SHOW INDEX`` rows (in the server's
    index order): ``PRIMARY``, else the first unique index whose columns are all NOT NULL and
    whole (no prefix); empty when there is none."""
    indexes: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        indexes.setdefault(_text(r["key_name"]), []).append(r)
    primary = indexes.get("PRIMARY")
    if primary is not None:
        return [
            _text(r["column_name"]) for r in sorted(primary, key=lambda r: int(r["seq_in_index"]))
        ]
    for parts in indexes.values():
        if int(parts[0]["non_unique"]):
            continue
        if _text(parts[0].get("index_type") or "").upper() not in ("BTREE", ""):
            continue  # a long unique (hash) key, full text, spatial
        if any(
            r["column_name"] is None or r.get("sub_part") is not None or _text(r.get("null") or "")
            for r in parts
        ):
            continue
        return [
            _text(r["column_name"]) for r in sorted(parts, key=lambda r: int(r["seq_in_index"]))
        ]
    return []


class _Table:
    """A table definition compiled for reading chunks (one per distinct catalog answer)."""

    def __init__(
        self,
        name: str,
        cols: list[_Col],
        hidden: list[str],
        key_names: list[str],
        key_idx: list[int],
        hidden_idx: dict[int, int],
        schema: TableSchema,
    ) -> None:
        self.name = name
        db, tbl = split_table_name(name)
        self.db = db
        self.tbl = tbl
        self.cols = cols
        self.key_names = tuple(key_names)
        self.key_idx = key_idx
        self.schema = schema
        self.nfields = len(cols) + len(hidden)
        self.hidden_idx = hidden_idx  # position in key_idx -> field index of its `col+0`
        self.from_sql = f"{catalog.quote_ident(db)}.{catalog.quote_ident(tbl)}"
        self.select_sql = (
            "SELECT " + ", ".join([c.select for c in cols] + hidden) + " FROM " + self.from_sql
        )
        self.order_sql = (
            " ORDER BY " + ", ".join(catalog.quote_ident(cols[i].meta.name) for i in key_idx)
            if key_idx
            else ""
        )
        self.parse, self.parse_one = _compile(cols, key_idx)

    # -- cursors -------------------------------------------------------------------------------

    def cursor_of(self, payload: bytes) -> list[Any]:
        """The cursor after the row whose packet payload is ``payload``."""
        fields = _fields(payload)
        out: list[Any] = []
        for j, i in enumerate(self.key_idx):
            col = self.cols[i]
            raw = fields[self.hidden_idx[j]] if j in self.hidden_idx else fields[i]
            if raw is None:
                raise ValueError(f"key column {col.meta.name!r} is NULL")
            kind = col.kind
            if kind in ("int", "enum", "set"):
                out.append(int(raw))
            elif kind == "bit":
                out.append(int.from_bytes(raw, "big"))
            elif kind in ("decimal", "float", "temporal"):
                out.append(raw.decode("ascii"))
            else:  # text, binary, plugin
                out.append(raw.hex())
        return out

    def where(self, cursor: Any) -> str:
        """``WHERE`` for the rows after ``cursor`` (as :meth:`cursor_of` made it)."""
        if not isinstance(cursor, list | tuple) or len(cursor) != len(self.key_idx):
            raise FatalSourceError(
                f"the snapshot cursor {cursor!r} does not fit the key {list(self.key_names)} of "
                f"{self.name} (was the primary key changed during the snapshot?); request a new "
                "snapshot of the table",
                kind=Kind.SNAPSHOT_REFUSED,
                table=self.name,
            )
        exprs: list[str] = []
        literals: list[str] = []
        for j, i in enumerate(self.key_idx):
            col = self.cols[i]
            ident = catalog.quote_ident(col.meta.name)
            value = cursor[j]
            exprs.append(f"({ident}+0)" if col.kind in ("enum", "set") else ident)
            literals.append(self._literal(col, value))
        terms = []
        for i in range(len(exprs)):
            parts = [f"{exprs[j]} = {literals[j]}" for j in range(i)] + [
                f"{exprs[i]} > {literals[i]}"
            ]
            terms.append("(" + " AND ".join(parts) + ")")
        return " WHERE " + " OR ".join(terms)

    def _literal(self, col: _Col, value: Any) -> str:
        kind = col.kind
        bad = FatalSourceError(
            f"the snapshot cursor of {self.name} holds {value!r} for the key column "
            f"{col.meta.name!r}, which is not a value of its type; request a new snapshot",
            kind=Kind.SNAPSHOT_REFUSED,
            table=self.name,
        )
        if kind in ("int", "enum", "set", "bit"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            return str(value)
        if not isinstance(value, str):
            raise bad
        if kind == "decimal":
            if not _DECIMAL_RE.match(value):
                raise bad
            return value
        if kind == "float":
            try:
                x = float(value)
            except ValueError:
                raise bad from None
            if x != x or x in (float("inf"), float("-inf")):
                raise bad
            text = repr(x)
            return text if "e" in text else text + "e0"
        if kind == "temporal":
            if not _TEMPORAL_RE.match(value):
                raise bad
            return f"'{value}'"
        if not _HEX_RE.match(value):
            raise bad
        if kind == "text":
            if not (
                col.charset
                and _CHARSET_RE.match(col.charset)
                and col.collation
                and _CHARSET_RE.match(col.collation)
            ):
                raise bad
            return f"_{col.charset} X'{value}' COLLATE {col.collation}"
        if kind == "plugin":
            return f"CAST(X'{value}' AS {col.plugin})"
        return f"X'{value}'"


def _compile(cols: Sequence[_Col], key_idx: Sequence[int]) -> tuple[Any, Any]:
    """Generate ``parse(b, p, end, out)`` (the row packets of a result set in ``b``) and
    ``parse_one(payload)`` (one row) for these columns.

    ``parse`` appends ``(key, after)`` per complete row packet and returns ``(p, status, lr,
    lq)``: where it stopped, why (0: the next packet is incomplete, 1: the end of the result
    set was consumed, 2: an error packet is at ``p``, 3: a row of 16 MiB or more starts at
    ``p``) and the bounds of the last row's payload (-1 when none).
    """
    ns = dict(_NS)
    body: list[str] = []
    for i, col in enumerate(cols):
        conv = col.conv
        for name, value in col.consts:
            unique = f"{name}_{i}"
            ns[unique] = value
            conv = conv.replace(name, unique)
        body += [
            "n = b[p]",
            "if n < 251:",
            f"    v{i} = {conv.replace('@', 'b[p + 1:p + 1 + n]')}",
            "    p += 1 + n",
            "elif n == 251:",
            f"    v{i} = None",
            "    p += 1",
            "else:",
            "    n, p = _lenc(b, p)",
            f"    v{i} = {conv.replace('@', 'b[p:p + n]')}",
            "    p += n",
        ]
    after = "{" + ", ".join(f"{c.meta.name!r}: v{i}" for i, c in enumerate(cols)) + "}"
    key = (
        "{" + ", ".join(f"{cols[i].meta.name!r}: v{i}" for i in key_idx) + "}"
        if key_idx
        else "None"
    )
    loop = [
        "append = out.append",
        "lr = lq = -1",
        "while True:",
        "    if p + 4 > end:",
        "        return p, 0, lr, lq",
        "    ln = b[p] | b[p + 1] << 8 | b[p + 2] << 16",
        "    q = p + 4 + ln",
        "    if q > end:",
        "        return p, 0, lr, lq",
        f"    if ln == {_MAX_PACKET}:",
        "        return p, 3, lr, lq",
        "    h = b[p + 4]",
        "    if h >= 254:",
        "        if h == 255:",
        "            return p, 2, lr, lq",
        "        if ln < 9:",
        "            return q, 1, lr, lq",
        "    p += 4",
        "    lr = p",
        "    lq = q",
        *("    " + line for line in body),
        f"    append(({key}, {after}))",
        "    p = q",
    ]
    one = ["p = 0", *body, f"return ({key}, {after})"]
    names = ", ".join(c.meta.name for c in cols)
    parse = make_function("parse", ["b", "p", "end", "out"], loop, ns, f"mysql snapshot rows ({names})")
    parse_one = make_function("parse_one", ["b"], one, ns, f"mysql snapshot row ({names})")
    return parse, parse_one


# -- gtid sets ------------------------------------------------------------------------------------


def _gtid_index(text: str) -> dict[tuple[str, str], tuple[list[int], list[int]]]:
    """(uuid, tag) -> (interval starts, interval ends) of a MySQL GTID set, for membership."""
    gs = MySQLGtidSet.parse(text)
    out: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for sid, tag, intervals in gs.intervals():  # sorted, disjoint
        out[(sid, tag)] = ([a for a, _ in intervals], [b for _, b in intervals])
    return out


def _gtid_in(index: dict[tuple[str, str], tuple[list[int], list[int]]], gtid: str) -> bool:
    sid, _, gno_text = gtid.rpartition(":")
    uuid_text, _, tag = sid.partition(":")
    try:
        gno = int(gno_text)
        h = uuid_text.replace("-", "").lower()
        key = (f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", tag.lower())
    except ValueError:
        return False
    found = index.get(key)
    if found is None:
        return False
    starts, ends = found
    k = bisect_right(starts, gno) - 1
    return k >= 0 and gno <= ends[k]


@functools.lru_cache(maxsize=1024)
def _file_index(name: str) -> int:
    return file_index(name)


# -- chunks ---------------------------------------------------------------------------------------

_BY_POSITION = 0  # MariaDB: visible = starts before the snapshot's binlog position
_BY_GTID = 1  # MySQL with GTIDs: visible = in the GTID set executed before the snapshot
_NEVER = 2  # MySQL without GTIDs: nothing is known to be seen


class MySQLChunk(Chunk):
    """One chunk read by :class:`MySQLSnapshotReader` (see the module notes for ``high``,
    ``visible`` and ``read_token``)."""

    __slots__ = ("_db", "_tbl", "_pipeline", "_server_id", "_ts_ms", "_mode", "_snap", "_gtids")

    def __init__(
        self,
        table: _Table,
        rows: list[tuple[dict[str, Any] | None, dict[str, Any]]],
        cursor: Any,
        done: bool,
        high: BinlogPosition,
        read_token: str,
        *,
        pipeline: str,
        server_id: int,
        ts_ms: int,
        mode: int,
        snap: tuple[int, int] = (0, 0),
        gtids: dict[tuple[str, str], tuple[list[int], list[int]]] | None = None,
    ) -> None:
        super().__init__(table.name, table.schema, rows, cursor, done, high, read_token)
        self._db = table.db
        self._tbl = table.tbl
        self._pipeline = pipeline
        self._server_id = server_id
        self._ts_ms = ts_ms
        self._mode = mode
        self._snap = snap
        self._gtids = gtids or {}

    def visible(self, event: Any) -> bool:
        mode = self._mode
        source = event.source
        if mode == _BY_POSITION:
            try:
                return (_file_index(source["file"]), source["pos"]) < self._snap
            except (KeyError, TypeError):
                return False
        if mode == _BY_GTID:
            gtid = source.get("gtid")
            return isinstance(gtid, str) and _gtid_in(self._gtids, gtid)
        return False

    def source_block(self, position: Any, snapshot_id: str) -> dict[str, Any]:
        where = _binlog_position(position)
        return {
            "connector": "mysql",
            "pipeline": self._pipeline,
            "db": self._db,
            "schema": self._db,
            "table": self._tbl,
            "ts_ms": self._ts_ms,
            "tx": None,
            "file": where.file,
            "pos": where.pos,
            "server_id": self._server_id,
            "snapshot": True,
            "snapshot_id": snapshot_id,
        }

    def at(self, position: Any) -> tuple[int, ...]:
        # just before a transaction starting at ``position``: rows read before an ALTER that
        # such a transaction is the first to use keep the version in effect before it
        where = _binlog_position(position)
        return (_file_index(where.file), where.pos, -1)


def _binlog_position(position: Any) -> Any:
    if isinstance(position, str):
        return parse_position(position)
    return position


# -- the reader -----------------------------------------------------------------------------------


class MySQLSnapshotReader(SnapshotReader):
    """Reads keyset chunks of a MySQL/MariaDB source's tables on its own connection (the
    snapshot worker's thread only)."""

    def __init__(self, source: Any) -> None:
        self.dsn = source.cfg.dsn
        self.display = source.dsn_display
        self.pipeline = source.ctx.name
        self.log = source.ctx.log
        self.exclude: dict[str, frozenset[str]] = dict(source.exclude)
        #: raises when columns.exclude names a column the table does not have
        self._check_excluded: Callable[[str, list[str]], None] = source.check_excluded
        self.bigint_as_string: bool = source.bigint_as_string
        self._conn: Any = None
        self._facts: catalog.ServerFacts | None = None
        self._user = "?"
        self._gtid_mode = False
        self._status_sql: str | None = None
        #: table -> (the catalog's answer, the table compiled from it)
        self._tables: dict[str, tuple[Any, _Table]] = {}
        #: binlog file -> (end of its header events, whether a transaction follows them)
        self._heads: dict[str, tuple[int, bool]] = {}
        self._warned_heads = False

    # -- connection -----------------------------------------------------------------------------

    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and conn.open:
            return conn
        self._conn = None
        pymysql = _pymysql()
        settings = catalog.connection_settings(self.dsn)
        conn = catalog.connect(settings, self.display)
        try:
            facts = catalog.server_facts(conn)
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute(
                    "SET SESSION time_zone = '+00:00', SESSION sql_mode = '', "
                    "SESSION character_set_results = NULL"
                )
                try:  # no statement time limit for the reads (MariaDB / MySQL)
                    cur.execute(
                        "SET SESSION max_statement_time = 0"
                        if facts.mariadb
                        else "SET SESSION max_execution_time = 0"
                    )
                except pymysql.err.MySQLError:
                    pass
                cur.execute("SELECT CURRENT_USER()")
                row = cur.fetchone()
        except pymysql.err.MySQLError as exc:
            _close(conn)
            raise self._error(exc, None, "setting up the snapshot connection") from exc
        self._user = _text(row[0]) if row else "?"
        self._facts = facts
        self._gtid_mode = not facts.mariadb and (facts.var("gtid_mode") or "").upper() == "ON"
        self._conn = conn
        return conn

    def close(self) -> None:
        conn = self._conn
        self._conn = None
        if conn is not None:
            _close(conn)

    # -- errors -----------------------------------------------------------------------------------

    def _error(self, exc: BaseException, table: str | None, doing: str) -> Exception:
        """A PyMySQL error as the snapshot's error: retriable when the connection or the
        server went away, fatal (``snapshot_refused``) for a table that cannot be read."""
        code = catalog.error_code(exc)
        text = catalog.error_text(exc)
        what = table or "the snapshot"
        pymysql = _pymysql()
        if (
            code in catalog.CLIENT_ERRORS
            or code in _GONE
            or code == 0
            or isinstance(exc, pymysql.err.InterfaceError)
        ):
            self.close()
            return RetriableSourceError(
                f"lost the snapshot connection to {self.display} while {doing}: {text}",
                table=table,
            )
        if code in (catalog.ER_NO_SUCH_TABLE, catalog.ER_BAD_DB):
            return FatalSourceError(
                f"cannot snapshot {what}: the table does not exist (or is not visible to {self._user})",
                kind=Kind.SNAPSHOT_REFUSED,
                table=table,
            )
        if code in (catalog.ER_TABLEACCESS_DENIED, catalog.ER_DBACCESS_DENIED, 1143):
            db, name = split_table_name(table) if table else ("", "")
            return FatalSourceError(
                f"cannot snapshot {what}: the user {self._user} lacks SELECT on it ({text}): GRANT "
                f"SELECT ON {catalog.quote_ident(db)}.{catalog.quote_ident(name)} TO {_account(self._user)}",
                kind=Kind.SNAPSHOT_REFUSED,
                table=table,
            )
        if code in (catalog.ER_ACCESS_DENIED, catalog.ER_SPECIFIC_ACCESS_DENIED):
            return FatalSourceError(
                f"the server refused the snapshot ({doing}): {text}",
                kind=Kind.SNAPSHOT_REFUSED,
                table=table,
            )
        if code in _AGAIN:
            return RetriableSourceError(
                f"the snapshot read of {what} failed ({doing}): {text}",
                kind=Kind.SOURCE_ERROR,
                table=table,
            )
        return FatalSourceError(
            f"the server refused a snapshot query of {what} ({doing}): {text}",
            table=table,
        )

    # -- describe -------------------------------------------------------------------------------

    def describe(self, table: str) -> TableInfo:
        pymysql = _pymysql()
        db, name = split_table_name(table)
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT 1 FROM {catalog.quote_ident(db)}.{catalog.quote_ident(name)} LIMIT 0"
                )
                cur.fetchall()
            compiled = self._table(conn, table)
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                    (db, name),
                )
                row = cur.fetchone()
        except pymysql.err.MySQLError as exc:
            raise self._error(exc, table, "describing the table") from exc
        estimate = int(row[0]) if row and row[0] is not None else 0
        return TableInfo(table, compiled.key_names, estimate)

    def _table(self, conn: Any, table: str) -> _Table:
        """The table's current definition, compiled (reused while the catalog says the same)."""
        assert self._facts is not None
        db, name = split_table_name(table)
        with conn.cursor() as cur:
            cur.execute(_COLUMNS_SQL, (db, name))
            columns = tuple(tuple(r) for r in cur.fetchall())
            if not columns:
                raise FatalSourceError(
                    f"cannot snapshot {table}: the table does not exist (or is not visible to {self._user})",
                    kind=Kind.SNAPSHOT_REFUSED,
                    table=table,
                )
            cur.execute(f"SHOW INDEX FROM {catalog.quote_ident(db)}.{catalog.quote_ident(name)}")
            names = [str(d[0]).lower() for d in cur.description or ()]
            index_rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        key = tuple(primary_key_from_index_rows(index_rows))
        json_columns: frozenset[str] = frozenset()
        if self._facts.mariadb and any(_text(c[1]).lower() == "longtext" for c in columns):
            json_columns = catalog.mariadb_json_columns(conn, db, name)
        answer = (columns, key, json_columns)
        cached = self._tables.get(table)
        if cached is not None and cached[0] == answer:
            return cached[1]
        compiled = self._compile_table(table, columns, key, json_columns)
        self._tables[table] = (answer, compiled)
        return compiled

    def _compile_table(
        self,
        table: str,
        columns: Sequence[Sequence[Any]],
        key: Sequence[str],
        json_columns: frozenset[str],
    ) -> _Table:
        assert self._facts is not None
        excluded = self.exclude.get(table, frozenset())
        self._check_excluded(table, [_text(row[0]) for row in columns])
        for k in key:
            if k in excluded:
                raise FatalError(
                    f"columns.exclude for {table} names the key column {k!r}; key columns cannot be excluded",
                    kind=Kind.CONFIG,
                    table=table,
                )
        cols: list[_Col] = []
        all_metas: list[R.ColumnMeta] = []
        for row in columns:
            if _text(row[0]) in excluded:
                continue
            col = _column(row, json_columns, self._facts.mariadb, self.bigint_as_string, table)
            all_metas.append(col.meta)
            cols.append(col)
        position = {c.meta.name: i for i, c in enumerate(cols)}
        key_idx = [position[k] for k in key]
        hidden: list[str] = []
        hidden_idx: dict[int, int] = {}
        for j, i in enumerate(key_idx):
            if cols[i].kind in ("enum", "set"):
                hidden_idx[j] = len(cols) + len(hidden)
                hidden.append(f"({catalog.quote_ident(cols[i].meta.name)}+0)")
            elif cols[i].kind == "json":
                raise FatalSourceError(
                    f"cannot snapshot {table}: a JSON key column",
                    kind=Kind.SNAPSHOT_REFUSED,
                    table=table,
                )
        schema = TableSchema(
            table,
            tuple(Column(m.name, R.type_name(m), m.nullable) for m in all_metas),
            tuple(key),
        )
        return _Table(table, cols, hidden, list(key), key_idx, hidden_idx, schema)

    # -- read_chunk -----------------------------------------------------------------------------

    def check_where(self, table: str, where: str) -> None:
        """``EXPLAIN`` the read with the condition in a read-only transaction that is rolled
        back: the server resolves its columns, types and functions without reading a row."""
        pymysql = _pymysql()
        conn = self._connection()
        try:
            compiled = self._table(conn, table)
            with conn.cursor() as cur:
                cur.execute("START TRANSACTION READ ONLY")
                try:
                    cur.execute(f"EXPLAIN {compiled.select_sql} WHERE ({where})")
                    cur.fetchall()
                finally:
                    _rollback(conn)
        except pymysql.err.MySQLError as exc:
            error = self._error(exc, table, "checking the condition")
            if isinstance(error, RetriableSourceError):
                raise error from exc
            raise FatalSourceError(
                f"the condition for {table} is refused by the database: {catalog.error_text(exc)}",
                kind=Kind.SNAPSHOT_REFUSED,
                table=table,
            ) from exc

    def read_chunk(self, table: str, cursor: Any, limit: int | None, *, where: str | None = None) -> Chunk:
        pymysql = _pymysql()
        attempt = 0
        while True:
            attempt += 1
            conn = self._connection()
            try:
                return self._read(conn, table, cursor, limit, where)
            except pymysql.err.MySQLError as exc:
                _rollback(conn)
                if catalog.error_code(exc) in _AGAIN and attempt < READ_ATTEMPTS:
                    continue
                raise self._error(exc, table, "reading a chunk") from exc
            except (OSError, EOFError) as exc:
                self.close()
                raise RetriableSourceError(
                    f"lost the snapshot connection to {self.display} while reading {table}: {exc}",
                    table=table,
                ) from exc
            except BaseException:
                _rollback(conn)
                raise

    def _read(
        self, conn: Any, table: str, cursor: Any, limit: int | None, where: str | None = None
    ) -> MySQLChunk:
        assert self._facts is not None
        mariadb = self._facts.mariadb
        low: tuple[str, int, str] | None = None
        if not mariadb:
            low = self._binlog_status(conn)
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            ts_ms = int(time.time() * 1000)
            if mariadb:
                cur.execute("SHOW SESSION STATUS LIKE 'binlog_snapshot_%'")
                status = {_text(k).lower(): _text(v) for k, v in cur.fetchall()}
                file = status.get("binlog_snapshot_file", "")
                pos = int(status.get("binlog_snapshot_position") or 0)
                if not file:
                    raise FatalSourceError(
                        "MariaDB reports no binlog snapshot position (is log_bin on?); snapshots "
                        "need the binlog",
                        kind=Kind.SNAPSHOT_REFUSED,
                        table=table,
                    )
            else:
                file, pos, _ = self._binlog_status(conn)
        # the metadata lock, held to the commit: the catalog below describes what we read
        with conn.cursor() as cur:
            cur.execute(_probe_sql(table))
            cur.fetchall()
        compiled = self._table(conn, table)
        keyless = not compiled.key_idx
        sql = compiled.select_sql
        if where:  # a partial snapshot's condition, checked by check_where before it began
            sql += f" WHERE ({where})"
        if not keyless:
            if cursor is not None:
                after = compiled.where(cursor)
                sql += f" AND ({after[len(' WHERE '):]})" if where else after
            if limit is not None:
                sql += compiled.order_sql + f" LIMIT {int(limit)}"
        rows: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []
        last = self._fetch(conn, sql, compiled, rows)
        with conn.cursor() as cur:
            cur.execute("COMMIT")
        if keyless or limit is None:
            done = True
        else:
            done = len(rows) < limit
        next_cursor = cursor
        if not keyless and limit is not None and last is not None:
            next_cursor = compiled.cursor_of(last)
        idx = _file_index(file)
        if mariadb:
            high = self._high(conn, file, pos)
            return MySQLChunk(
                compiled, rows, next_cursor, done, high, f"{idx}.{pos}",
                pipeline=self.pipeline, server_id=self._facts.server_id, ts_ms=ts_ms,
                mode=_BY_POSITION, snap=(idx, pos),
            )  # fmt: skip
        assert low is not None
        high = self._high(conn, file, pos)
        token = f"{idx}.{pos}.{uuid.uuid4().hex[:8]}"
        if self._gtid_mode:
            return MySQLChunk(
                compiled, rows, next_cursor, done, high, token,
                pipeline=self.pipeline, server_id=self._facts.server_id, ts_ms=ts_ms,
                mode=_BY_GTID, gtids=_gtid_index(low[2]),
            )  # fmt: skip
        return MySQLChunk(
            compiled, rows, next_cursor, done, high, token,
            pipeline=self.pipeline, server_id=self._facts.server_id, ts_ms=ts_ms, mode=_NEVER,
        )  # fmt: skip

    def _binlog_status(self, conn: Any) -> tuple[str, int, str]:
        """MySQL: the binlog file, position and executed GTID set now."""
        pymysql = _pymysql()
        statements = (
            [self._status_sql]
            if self._status_sql
            else ["SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"]
        )
        for statement in statements:
            assert statement is not None
            try:
                with conn.cursor() as cur:
                    cur.execute(statement)
                    row = cur.fetchone()
                    names = [str(d[0]).lower() for d in cur.description or ()]
            except pymysql.err.ProgrammingError:
                if statement == statements[-1]:
                    raise
                continue
            self._status_sql = statement
            if row is None:
                raise FatalSourceError(
                    "the server reports no binary log; snapshots need the binlog",
                    kind=Kind.SNAPSHOT_REFUSED,
                )
            gtids = (
                _text(row[names.index("executed_gtid_set")] or "")
                if "executed_gtid_set" in names
                else ""
            )
            return _text(row[0]), int(row[1]), gtids.replace("\n", "")
        raise AssertionError("unreachable")

    def _high(self, conn: Any, file: str, pos: int) -> BinlogPosition:
        """The high watermark for a read at ``file:pos``: that position, or the start of the file
        when only its header events (format description, GTID list, checkpoints) come before
        it: after a rotation the stream stands at the start of the new file until the next
        transaction, and every transaction the read saw is in the files before."""
        head_end, has_tx = self._heads.get(file, (4, False))
        if has_tx or pos <= 4:
            return BinlogPosition(file, pos)
        if pos > head_end:
            pymysql = _pymysql()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SHOW BINLOG EVENTS IN %s FROM {int(head_end)} LIMIT 16", (file,))
                    names = [str(d[0]).lower() for d in cur.description or ()]
                    events = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            except pymysql.err.MySQLError as exc:
                if not self._warned_heads:
                    self._warned_heads = True
                    self.log.warning(
                        "snapshot_binlog_events_unreadable",
                        error=catalog.error_text(exc),
                        note="a chunk read right after a binlog rotation waits for the next "
                        "transaction on the server",
                    )
                return BinlogPosition(file, pos)  # cannot tell (grants): the exact position
            for ev in events:
                if _text(ev.get("event_type", "")).lower() not in _HEADER_EVENTS:
                    has_tx = True
                    break
                head_end = int(ev.get("end_log_pos") or head_end)
                if head_end >= pos:
                    break
            if len(self._heads) > 64:
                self._heads.clear()
            self._heads[file] = (head_end, has_tx)
        if not has_tx and pos <= head_end:
            return BinlogPosition(file, 4)
        return BinlogPosition(file, pos)

    def _fetch(self, conn: Any, sql: str, table: _Table, out: list[Any]) -> bytes | None:
        """Run ``sql`` and decode its rows into ``out``; the last row's payload (or None)."""
        stream = _wire.start_query(conn, sql)  # the column definitions; raises the server's error
        if stream is None:
            return None
        try:
            if stream.field_count != table.nfields:
                raise FatalSourceError(
                    f"{table.name}: the server sent {stream.field_count} columns for {table.nfields}",
                    kind=Kind.PROTOCOL,
                    table=table.name,
                )
            parse = table.parse
            buf = b""
            p = 0
            last: bytes | None = None
            while True:
                try:
                    p, status, lr, lq = parse(buf, p, len(buf), out)
                except (IndexError, ValueError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
                    stream.abandon()
                    self._conn = None
                    raise FatalSourceError(
                        f"cannot decode a row of {table.name} read by the snapshot: {exc!r}",
                        kind=Kind.PROTOCOL,
                        table=table.name,
                    ) from exc
                if lr >= 0:
                    last = buf[lr:lq]
                if status == 1:
                    return last
                if status == 2:  # the server ended the result set with an error
                    stream.finish()
                    ln = buf[p] | buf[p + 1] << 8 | buf[p + 2] << 16
                    _wire.raise_error_packet(buf[p + 4 : p + 4 + ln])
                if status == 3:
                    payload, buf, p = _long_row(stream, buf, p)
                    out.append(table.parse_one(payload))
                    last = payload
                    continue
                # the next packet is incomplete: read on (a big one at once)
                buf = buf[p:]
                p = 0
                missing = READ_SIZE
                if len(buf) >= 4:
                    missing = max(4 + (buf[0] | buf[1] << 8 | buf[2] << 16) - len(buf), 1)
                data = stream.read(missing) if missing > READ_SIZE else stream.read1(READ_SIZE)
                if not data:
                    raise EOFError("the server closed the connection during a snapshot read")
                buf = buf + data if buf else data
        except BaseException:
            if stream.active:
                stream.abandon()  # the rest of the result set is still on its way
                self._conn = None
            raise
        finally:
            stream.finish()


def _long_row(rfile: Any, buf: bytes, p: int) -> tuple[bytes, bytes, int]:
    """A row split over packets of 16 MiB - 1 bytes: (its payload, the buffer, the position
    after its last packet)."""
    pieces: list[bytes] = []
    while True:
        buf, p = _ensure(rfile, buf, p, 4)
        ln = buf[p] | buf[p + 1] << 8 | buf[p + 2] << 16
        buf, p = _ensure(rfile, buf, p, 4 + ln)
        pieces.append(buf[p + 4 : p + 4 + ln])
        p += 4 + ln
        if ln < _MAX_PACKET:
            return b"".join(pieces), buf, p


def _ensure(rfile: Any, buf: bytes, p: int, n: int) -> tuple[bytes, int]:
    """At least ``n`` bytes in ``buf`` from ``p`` (reading as needed): (buffer, position)."""
    if len(buf) - p >= n:
        return buf, p
    buf = buf[p:]
    while len(buf) < n:
        data = rfile.read(max(n - len(buf), 1))
        if not data:
            raise EOFError("the server closed the connection during a snapshot read")
        buf += data
    return buf, 0


def _probe_sql(table: str) -> str:
    db, name = split_table_name(table)
    return f"SELECT 1 FROM {catalog.quote_ident(db)}.{catalog.quote_ident(name)} LIMIT 0"


def _account(user: str) -> str:
    name, _, host = user.rpartition("@")
    return f"'{name}'@'{host}'" if name else f"'{user}'"


def _pymysql() -> Any:
    return _wire.pymysql_module()


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        _wire.force_close(conn)


def _rollback(conn: Any) -> None:
    if conn is None or not getattr(conn, "open", False):
        return
    try:
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    except Exception:
        pass
