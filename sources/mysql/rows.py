"""Row images of binlog row events, decoded straight into the event's JSON-ready values.

Theory of operation (pure: bytes in, values out; no socket, no query). A ``TABLE_MAP`` event
describes a table's columns as the server wrote them: a type code and per-type metadata
(lengths, precision, fractional digits, charset) and, with ``binlog_row_metadata=FULL``, the
names, signedness, ENUM/SET values and the primary key. The I/O layer turns it into a list of
:class:`ColumnMeta` (see :func:`columns_from_table_map`) and compiles a :class:`RowCodec` once
per distinct description. The codec generates, per *columns-present bitmap* (always all columns
under ``binlog_row_image=FULL``), one small Python function that decodes an image with straight
line code: struct unpacks and slices at running offsets, a null-bit test only for nullable
columns, and the result built as a dict literal (excluded columns are skipped over, not
decoded). This is several times faster than a generic per-column loop, and it is what lets the
service keep up with (and overtake) python-mysql-replication's own row parsing.

Values follow the contract's table (docs/events.md and docs/mysql.md, "Values"):

- integers exact (BIGINT UNSIGNED up to 2^64-1), strings with ``bigint_as_string`` for BIGINT;
- FLOAT as the shortest decimal that reads back as the same 32-bit float, DOUBLE as is;
- DECIMAL as its exact digits (``"19.90"``), never through a float;
- CHAR/VARCHAR/TEXT/ENUM decoded with the column's charset; BINARY/VARBINARY/BLOB/GEOMETRY
  as base64; SET as a list of its members (``[]`` when empty); BIT(n) as n ``0``/``1``;
- DATE ``"2026-11-28"``, TIME ``"-838:59:59.000000"``, DATETIME ``"2026-11-28T13:45:01.123456"``,
  TIMESTAMP in UTC with ``Z``, YEAR a number; a zero or partly zero date (``0000-00-00``,
  ``2026-00-15``) is the server's own text (``"0000-00-00 00:00:00"`` for DATETIME/TIMESTAMP,
  with the column's fractional digits), never a wrong date or a null;
- MySQL JSON decoded from its binary form; MariaDB JSON (LONGTEXT with a ``json_valid`` check,
  flagged by the I/O layer) spliced in as the stored JSON text (an :class:`orjson.Fragment`,
  so big numbers keep their digits).
"""

from __future__ import annotations

import binascii
import codecs
import dataclasses
import datetime as _dt
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from cdc._codegen import make_function

from .collations import CHARSET_OF
from .protocol import TableDescription

# Binlog column type codes (include/mysql_com.h: enum_field_types).
DECIMAL: Final = 0
TINY: Final = 1
SHORT: Final = 2
LONG: Final = 3
FLOAT: Final = 4
DOUBLE: Final = 5
NULL: Final = 6
TIMESTAMP: Final = 7
LONGLONG: Final = 8
INT24: Final = 9
DATE: Final = 10
TIME: Final = 11
DATETIME: Final = 12
YEAR: Final = 13
NEWDATE: Final = 14
VARCHAR: Final = 15
BIT: Final = 16
TIMESTAMP2: Final = 17
DATETIME2: Final = 18
TIME2: Final = 19
JSON: Final = 245
NEWDECIMAL: Final = 246
ENUM: Final = 247
SET: Final = 248
TINY_BLOB: Final = 249
MEDIUM_BLOB: Final = 250
LONG_BLOB: Final = 251
BLOB: Final = 252
VAR_STRING: Final = 253
STRING: Final = 254
GEOMETRY: Final = 255

_INT_NAMES: Final = {TINY: "tinyint", SHORT: "smallint", INT24: "mediumint", LONG: "int", LONGLONG: "bigint"}
_BLOB_PREFIX: Final = {1: "tiny", 2: "", 3: "medium", 4: "long"}
_GEOMETRY_NAMES: Final = {
    0: "geometry",
    1: "point",
    2: "linestring",
    3: "polygon",
    4: "multipoint",
    5: "multilinestring",
    6: "multipolygon",
    7: "geometrycollection",
}

#: MySQL charset name -> (bytes per character at most, Python codec; None: binary)
CHARSETS: Final[dict[str, tuple[int, str | None]]] = {
    "utf8mb4": (4, "utf-8"),
    "utf8mb3": (3, "utf-8"),
    "utf8": (3, "utf-8"),
    "binary": (1, None),
    "latin1": (1, "mysql-latin1"),
    "ascii": (1, "ascii"),
    "ucs2": (2, "utf-16-be"),
    "utf16": (4, "utf-16-be"),
    "utf16le": (4, "utf-16-le"),
    "utf32": (4, "utf-32-be"),
    "latin2": (1, "iso8859-2"),
    "latin5": (1, "iso8859-9"),
    "latin7": (1, "iso8859-13"),
    "cp1250": (1, "cp1250"),
    "cp1251": (1, "cp1251"),
    "cp1256": (1, "cp1256"),
    "cp1257": (1, "cp1257"),
    "cp850": (1, "cp850"),
    "cp852": (1, "cp852"),
    "cp866": (1, "cp866"),
    "koi8r": (1, "koi8-r"),
    "koi8u": (1, "koi8-u"),
    "greek": (1, "iso8859-7"),
    "hebrew": (1, "iso8859-8"),
    "tis620": (1, "tis-620"),
    "macroman": (1, "mac-roman"),
    "macce": (1, "mac-latin2"),
    "sjis": (2, "shift_jis"),
    "cp932": (2, "cp932"),
    "gbk": (2, "gbk"),
    "gb2312": (2, "gb2312"),
    "big5": (2, "big5"),
    "euckr": (2, "euc-kr"),
    "ujis": (3, "euc-jp"),
    "eucjpms": (3, "euc-jp"),
    "gb18030": (4, "gb18030"),
}

# MySQL's latin1 is cp1252 with the five bytes cp1252 leaves undefined mapped to C1 controls.
_LATIN1_TABLE: Final = "".join(
    bytes([i]).decode("cp1252", errors="replace") if i not in (0x81, 0x8D, 0x8F, 0x90, 0x9D) else chr(i)
    for i in range(256)
)


def _latin1_decode(data: bytes) -> str:
    return codecs.charmap_decode(data, "strict", _LATIN1_TABLE)[0]


class UnsupportedColumn(ValueError):
    """A column type this decoder cannot read (the message names it)."""


@dataclass(frozen=True, slots=True)
class ColumnMeta:
    """One column as a TABLE_MAP event describes it (after ENUM/SET real types are resolved)."""

    name: str
    type: int
    nullable: bool = True
    unsigned: bool = False
    charset: str | None = None  # MySQL charset name (utf8mb4, latin1, binary, ...)
    codec: str | None = None  # Python codec when the charset is not in CHARSETS
    max_length: int = 0  # VARCHAR / CHAR: bytes
    length_size: int = 0  # BLOB / TEXT / JSON / GEOMETRY: bytes of the length prefix
    precision: int = 0  # DECIMAL
    decimals: int = 0  # DECIMAL
    fsp: int = 0  # TIME2 / DATETIME2 / TIMESTAMP2 fractional digits
    bits: int = 0  # BIT(n)
    size: int = 0  # ENUM / SET: bytes of the stored value; FLOAT / DOUBLE: 4 / 8
    values: tuple[str, ...] = ()  # ENUM / SET members, in order
    geometry_type: int = 0
    json: bool = False  # MariaDB JSON: LONGTEXT with a json_valid CHECK (from the catalog)
    plugin: str | None = None  # MariaDB data type plugin on BINARY(n): uuid, inet4, inet6

    @property
    def binary(self) -> bool:
        return self.charset == "binary"


def charset_of_collation(collation: str | None) -> str | None:
    """``utf8mb4_general_ci`` -> ``utf8mb4``; ``binary`` -> ``binary``."""
    if not collation:
        return None
    return collation.split("_", 1)[0].lower()


def _mbmaxlen(col: ColumnMeta) -> int:
    found = CHARSETS.get(col.charset or "")
    return found[0] if found is not None else 1


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def type_name(col: ColumnMeta) -> str:
    """The column type as the server writes it (``int unsigned``, ``varchar(50)``), as far as
    the binlog metadata tells: display widths (``int(11)``, ``tinyint(1)``), ``ZEROFILL`` and
    the declared ``TEXT(n)`` length are not in it."""
    t = col.type
    if col.plugin is not None:
        return col.plugin
    if t in _INT_NAMES:
        return _INT_NAMES[t] + (" unsigned" if col.unsigned else "")
    if t == FLOAT:
        return "float"
    if t == DOUBLE:
        return "double"
    if t == NEWDECIMAL:
        return f"decimal({col.precision},{col.decimals})"
    if t in (VARCHAR, VAR_STRING):
        if col.binary:
            return f"varbinary({col.max_length})"
        return f"varchar({col.max_length // _mbmaxlen(col)})"
    if t == STRING:
        if col.binary:
            return f"binary({col.max_length})"
        return f"char({col.max_length // _mbmaxlen(col)})"
    if t in (BLOB, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB):
        if col.json:
            return "json"
        prefix = _BLOB_PREFIX.get(col.length_size, "")
        return prefix + ("blob" if col.binary else "text")
    if t == DATE or t == NEWDATE:
        return "date"
    if t in (TIME, TIME2):
        return f"time({col.fsp})" if col.fsp else "time"
    if t in (DATETIME, DATETIME2):
        return f"datetime({col.fsp})" if col.fsp else "datetime"
    if t in (TIMESTAMP, TIMESTAMP2):
        return f"timestamp({col.fsp})" if col.fsp else "timestamp"
    if t == YEAR:
        return "year"
    if t == ENUM:
        return "enum(" + ",".join(_quote(v) for v in col.values) + ")"
    if t == SET:
        return "set(" + ",".join(_quote(v) for v in col.values) + ")"
    if t == BIT:
        return f"bit({col.bits})"
    if t == JSON:
        return "json"
    if t == GEOMETRY:
        return _GEOMETRY_NAMES.get(col.geometry_type, "geometry")
    return f"type:{t}"


# -- value helpers (called from the generated code) ------------------------------------------

_i8 = struct.Struct("<b").unpack_from
_i16 = struct.Struct("<h").unpack_from
_u16 = struct.Struct("<H").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i64 = struct.Struct("<q").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_f32 = struct.Struct("<f").unpack_from
_f64 = struct.Struct("<d").unpack_from
_pack_f32 = struct.Struct("<f").pack
_b2a = binascii.b2a_base64
_from_bytes = int.from_bytes
_fromordinal = _dt.date.fromordinal
_EPOCH_ORDINAL: Final = _dt.date(1970, 1, 1).toordinal()
_DIG2BYTES: Final = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_JSON_SPACES: Final = bytes.maketrans(b"\n\r\t", b"   ")


def b64(data: bytes) -> str:
    return _b2a(data, newline=False).decode("ascii")


def float32(value: float) -> float:
    """The shortest decimal that reads back as the same 32-bit float (1.1, not 1.100000023841858)."""
    if value != value or value in (float("inf"), float("-inf")):
        return value
    bits = _pack_f32(value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        candidate = float(text)
        try:
            if _pack_f32(candidate) == bits:
                return candidate
        except OverflowError:  # rounded up past the largest float32
            continue
    return value


def decimal_size(precision: int, scale: int) -> int:
    intg = precision - scale
    return (intg // 9) * 4 + _DIG2BYTES[intg % 9] + (scale // 9) * 4 + _DIG2BYTES[scale % 9]


def decimal_decoder(precision: int, scale: int) -> Callable[[bytes, int], str]:
    """A function reading a DECIMAL(precision, scale) at an offset as its exact text.

    The stored form is big-endian groups of nine decimal digits (4 bytes each) with a shorter
    leading group for the integer part and a shorter trailing group for the fraction; the sign
    bit is flipped, and every bit of a negative value is inverted.
    """
    intg = precision - scale
    intg0, intg0x = divmod(intg, 9)
    frac0, frac0x = divmod(scale, 9)
    lead = _DIG2BYTES[intg0x]
    trail = _DIG2BYTES[frac0x]
    size = lead + intg0 * 4 + frac0 * 4 + trail
    sign_bit = 0x80 << (8 * (size - 1))
    all_bits = (1 << (8 * size)) - 1
    trail_bits = 8 * trail
    trail_mask = (1 << trail_bits) - 1
    # weights of the groups, least significant first
    frac_weights = [10 ** (frac0x + 9 * i) for i in range(frac0)]
    int_weights = [10 ** (9 * i) for i in range(intg0)]
    head_weight = 10 ** (9 * intg0)
    frac_format = f"0{scale}d"

    def dec(b: bytes, p: int) -> str:
        x = _from_bytes(b[p : p + size], "big")
        negative = not x & sign_bit
        x ^= sign_bit
        if negative:
            x ^= all_bits
        if not x:
            return f"0.{0:{frac_format}}" if scale else "0"
        frac = 0
        if scale:
            frac = x & trail_mask
            x >>= trail_bits
            for w in frac_weights:
                frac += (x & 0xFFFFFFFF) * w
                x >>= 32
        whole = 0
        for w in int_weights:
            whole += (x & 0xFFFFFFFF) * w
            x >>= 32
        whole += x * head_weight
        sign = "-" if negative else ""
        if scale:
            return f"{sign}{whole}.{frac:{frac_format}}"
        return f"{sign}{whole}"

    return dec


def _frac_text(us: int, fsp: int) -> str:
    return f".{us // 10 ** (6 - fsp):0{fsp}d}" if fsp else ""


def date_text(v: int) -> str:
    """DATE (3 bytes: day 5 bits, month 4 bits, year 15 bits); zero parts stay as written."""
    return f"{v >> 9:04d}-{(v >> 5) & 15:02d}-{v & 31:02d}"


def time2_decoder(fsp: int) -> tuple[Callable[[bytes, int], str], int]:
    """TIME(fsp) in MySQL 5.6's format: (function, size)."""
    size = 3 + (fsp + 1) // 2

    def dec(b: bytes, p: int) -> str:
        if size == 6:
            packed = _from_bytes(b[p : p + 6], "big") - 0x800000000000
        else:
            intpart = _from_bytes(b[p : p + 3], "big") - 0x800000
            if size == 3:
                packed = intpart << 24
            else:
                if size == 4:
                    frac = b[p + 3]
                    if intpart < 0 and frac:
                        intpart += 1
                        frac -= 0x100
                    frac *= 10000
                else:
                    frac = _from_bytes(b[p + 3 : p + 5], "big")
                    if intpart < 0 and frac:
                        intpart += 1
                        frac -= 0x10000
                    frac *= 100
                packed = (intpart << 24) + frac
        sign = ""
        if packed < 0:
            sign = "-"
            packed = -packed
        hms = packed >> 24
        us = packed & 0xFFFFFF
        return f"{sign}{(hms >> 12) & 0x3FF:02d}:{(hms >> 6) & 0x3F:02d}:{hms & 0x3F:02d}.{us:06d}"

    return dec, size


def datetime2_decoder(fsp: int) -> tuple[Callable[[bytes, int], str], int]:
    """DATETIME(fsp) in MySQL 5.6's format: (function, size)."""
    size = 5 + (fsp + 1) // 2
    days: dict[int, str] = {}  # valid dates already formatted (rows often share a day)

    def dec(b: bytes, p: int) -> str:
        intpart = _from_bytes(b[p : p + 5], "big") - 0x8000000000
        if size == 5:
            us = 0
        elif size == 6:
            us = _i8(b, p + 5)[0] * 10000
        elif size == 7:
            us = _from_bytes(b[p + 5 : p + 7], "big", signed=True) * 100
        else:
            us = _from_bytes(b[p + 5 : p + 8], "big", signed=True)
        ymd = intpart >> 17
        hms = intpart & 0x1FFFF
        day_text = days.get(ymd)
        if day_text is None:
            ym = ymd >> 5
            day = ymd & 31
            month = ym % 13
            day_text = f"{ym // 13:04d}-{month:02d}-{day:02d}"
            if month == 0 or day == 0:
                return f"{day_text} {hms >> 12:02d}:{(hms >> 6) & 63:02d}:{hms & 63:02d}{_frac_text(us, fsp)}"
            if len(days) > 4096:
                days.clear()
            days[ymd] = day_text
        return f"{day_text}T{hms >> 12:02d}:{(hms >> 6) & 63:02d}:{hms & 63:02d}.{us:06d}"

    return dec, size


def timestamp2_decoder(fsp: int) -> tuple[Callable[[bytes, int], str], int]:
    """TIMESTAMP(fsp) in MySQL 5.6's format (UTC seconds, big-endian): (function, size)."""
    size = 4 + (fsp + 1) // 2

    def dec(b: bytes, p: int) -> str:
        seconds = _from_bytes(b[p : p + 4], "big")
        if size == 4:
            us = 0
        elif size == 5:
            us = b[p + 4] * 10000
        elif size == 6:
            us = _from_bytes(b[p + 4 : p + 6], "big") * 100
        else:
            us = _from_bytes(b[p + 4 : p + 7], "big")
        return timestamp_text(seconds, us, fsp)

    return dec, size


def timestamp_text(seconds: int, us: int, fsp: int) -> str:
    if seconds == 0 and us == 0:
        return "0000-00-00 00:00:00" + _frac_text(0, fsp)
    days, rest = divmod(seconds, 86400)
    day = _fromordinal(_EPOCH_ORDINAL + days)
    return f"{day.isoformat()}T{rest // 3600:02d}:{(rest // 60) % 60:02d}:{rest % 60:02d}.{us:06d}Z"


def old_time_text(v: int) -> str:
    """Pre-5.6 TIME: a signed HHMMSS integer."""
    sign = "-" if v < 0 else ""
    v = abs(v)
    return f"{sign}{v // 10000:02d}:{(v // 100) % 100:02d}:{v % 100:02d}.000000"


def old_datetime_text(v: int) -> str:
    """Pre-5.6 DATETIME: the integer YYYYMMDDhhmmss."""
    d, t = divmod(v, 1000000)
    year, md = divmod(d, 10000)
    month, day = divmod(md, 100)
    hour, ms = divmod(t, 10000)
    minute, second = divmod(ms, 100)
    if month == 0 or day == 0:
        return f"{year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.000000"


def mariadb_json(raw: bytes) -> Any:
    """A MariaDB JSON (LONGTEXT) value: the stored text spliced in verbatim when it is valid
    JSON (raw newlines/tabs, which can only be whitespace in valid JSON, become spaces so the
    event stays one line); text that is not valid JSON (the CHECK was bypassed) stays a string."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError):
            return raw.decode("utf-8", errors="replace")
    return orjson.Fragment(raw.translate(_JSON_SPACES))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: MariaDB data type plugins stored as BINARY(n): name -> n
PLUGIN_SIZES: Final = {"uuid": 16, "inet6": 16, "inet4": 4}


def uuid_text(raw: bytes) -> str:
    """A MariaDB UUID (its 16 bytes in text order, as the binlog and ``CAST(... AS
    BINARY(16))`` carry them) as the server prints it: ``123e4567-e89b-12d3-a456-426614174000``."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def inet4_text(raw: bytes) -> str:
    """A MariaDB INET4 (4 bytes) as dotted decimal: ``192.0.2.1``."""
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


def inet6_text(raw: bytes) -> str:
    """A MariaDB INET6 (16 bytes) as the server prints it: lower-case hex words without leading
    zeros, the first longest run of zero words (even a single one) as ``::``, and an
    IPv4-compatible (``::1.2.3.4``) or IPv4-mapped (``::ffff:1.2.3.4``) address with its last
    32 bits in dotted decimal. (Not quite RFC 5952, which leaves a single zero word alone, nor
    Python's ``ipaddress``.)"""
    words = [raw[i] << 8 | raw[i + 1] for i in range(0, 16, 2)]
    gap_pos, gap_len = -1, 0
    run_pos, run_len = -1, 0
    for i, w in enumerate(words + [1]):  # a sentinel closes a trailing run
        if w == 0:
            if run_pos < 0:
                run_pos, run_len = i, 0
            run_len += 1
        elif run_pos >= 0:
            if run_len > gap_len:
                gap_pos, gap_len = run_pos, run_len
            run_pos = -1
    if gap_pos == 0 and (gap_len == 6 or (gap_len == 5 and words[5] == 0xFFFF)):
        return ("::ffff:" if gap_len == 5 else "::") + inet4_text(raw[12:])
    parts: list[str] = []
    i = 0
    while i < 8:
        if i == gap_pos:
            parts.append("")
            if i == 0:
                parts.append("")
            i += gap_len
            if i == 8:
                parts.append("")
            continue
        parts.append(f"{words[i]:x}")
        i += 1
    return ":".join(parts)


PLUGIN_TEXT: Final[dict[str, Callable[[bytes], str]]] = {
    "uuid": uuid_text,
    "inet4": inet4_text,
    "inet6": inet6_text,
}


def mysql_json(raw: bytes) -> Any:
    """A MySQL JSON value from its binary form (MySQL's ``json_binary`` format): objects,
    arrays, literals, integers, doubles, strings, and *opaque* values (DECIMAL as its exact
    digits, DATE/DATETIME/TIMESTAMP as ``"YYYY-MM-DD hh:mm:ss.ffffff"``, TIME as
    ``"hh:mm:ss[.ffffff]"``, anything else as its bytes' text)."""
    if not raw:
        return None
    return _jb_value(raw[0], raw, 1)


# binary JSON type bytes
_JB_SMALL_OBJECT, _JB_LARGE_OBJECT, _JB_SMALL_ARRAY, _JB_LARGE_ARRAY = 0, 1, 2, 3
_JB_LITERAL, _JB_INT16, _JB_UINT16, _JB_INT32, _JB_UINT32 = 4, 5, 6, 7, 8
_JB_INT64, _JB_UINT64, _JB_DOUBLE, _JB_STRING, _JB_OPAQUE = 9, 10, 11, 12, 15


def _jb_varlen(b: bytes, p: int) -> tuple[int, int]:
    """A variable-length length (7 bits a byte, low first): (value, offset after it)."""
    value = 0
    shift = 0
    while True:
        byte = b[p]
        p += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, p
        shift += 7
        if shift > 28:
            raise ValueError("JSON length too long")


def _jb_scalar(t: int, b: bytes, p: int) -> Any:
    if t == _JB_LITERAL:
        lit = b[p]
        if lit > 2:
            raise ValueError(f"unknown JSON literal {lit}")
        return (None, True, False)[lit]
    if t == _JB_INT16:
        return _i16(b, p)[0]
    if t == _JB_UINT16:
        return _u16(b, p)[0]
    if t == _JB_INT32:
        return _i32(b, p)[0]
    if t == _JB_UINT32:
        return _u32(b, p)[0]
    if t == _JB_INT64:
        return _i64(b, p)[0]
    if t == _JB_UINT64:
        return _u64(b, p)[0]
    if t == _JB_DOUBLE:
        return _f64(b, p)[0]
    if t == _JB_STRING:
        n, q = _jb_varlen(b, p)
        if q + n > len(b):
            raise ValueError("JSON string past the end of the value")
        return b[q : q + n].decode("utf-8", errors="replace")
    if t == _JB_OPAQUE:
        field_type = b[p]
        n, q = _jb_varlen(b, p + 1)
        return _jb_opaque(field_type, b[q : q + n])
    raise ValueError(f"unknown JSON value type {t}")


def _jb_value(t: int, b: bytes, p: int) -> Any:
    """The value of type ``t`` whose bytes start at ``p`` (offsets inside a container count
    from its start)."""
    if t > _JB_LARGE_ARRAY:
        return _jb_scalar(t, b, p)
    small = t in (_JB_SMALL_OBJECT, _JB_SMALL_ARRAY)
    is_object = t in (_JB_SMALL_OBJECT, _JB_LARGE_OBJECT)
    read = _u16 if small else _u32
    osz = 2 if small else 4
    count = read(b, p)[0]
    size = read(b, p + osz)[0]
    if p + size > len(b):
        raise ValueError("JSON container past the end of the value")
    key_entry = osz + 2
    value_entry = 1 + osz
    entries = p + 2 * osz
    values_at = entries + (count * key_entry if is_object else 0)
    out_values = []
    for i in range(count):
        e = values_at + i * value_entry
        vt = b[e]
        if vt in (_JB_LITERAL, _JB_INT16, _JB_UINT16) or (not small and vt in (_JB_INT32, _JB_UINT32)):
            out_values.append(_jb_scalar(vt, b, e + 1))
        else:
            offset = read(b, e + 1)[0]
            if offset >= size:
                raise ValueError("JSON value offset past its container")
            out_values.append(_jb_value(vt, b, p + offset))
    if not is_object:
        return out_values
    obj = {}
    for i in range(count):
        e = entries + i * key_entry
        ko = read(b, e)[0]
        kl = _u16(b, e + osz)[0]
        obj[b[p + ko : p + ko + kl].decode("utf-8", errors="replace")] = out_values[i]
    return obj


def _jb_opaque(field_type: int, data: bytes) -> Any:
    if field_type in (NEWDECIMAL, DECIMAL):
        precision, scale = data[0], data[1]
        return orjson.Fragment(decimal_decoder(precision, scale)(data, 2))
    if field_type in (TIME, TIME2):
        v = _i64(data, 0)[0]
        sign = "-" if v < 0 else ""
        v = abs(v)
        whole, frac = v >> 24, v & 0xFFFFFF
        text = f"{sign}{(whole >> 12) & 0x3FF:02d}:{(whole >> 6) & 0x3F:02d}:{whole & 0x3F:02d}"
        return text + (f".{frac:06d}" if frac else "")
    if field_type in (DATE, NEWDATE, DATETIME, DATETIME2, TIMESTAMP, TIMESTAMP2):
        v = abs(_i64(data, 0)[0])
        if v == 0:
            return "0000-00-00 00:00:00"
        whole, frac = v >> 24, v & 0xFFFFFF
        ymd, hms = whole >> 17, whole & 0x1FFFF
        ym = ymd >> 5
        return (
            f"{ym // 13:04d}-{ym % 13:02d}-{ymd & 0x1F:02d} "
            f"{hms >> 12:02d}:{(hms >> 6) & 0x3F:02d}:{hms & 0x3F:02d}.{frac:06d}"
        )
    return data.decode("utf-8", errors="ignore")


def _codec_decoder(col: ColumnMeta) -> Callable[[bytes], Any] | None:
    """How text of this column is decoded (None: binary, base64)."""
    found = CHARSETS.get(col.charset or "")
    codec = found[1] if found is not None else (col.codec or "utf-8")
    if found is not None and codec is None:
        return None
    if codec == "mysql-latin1":
        return _latin1_decode
    assert codec is not None
    try:
        codecs.lookup(codec)
    except LookupError as exc:
        raise UnsupportedColumn(
            f"column {col.name!r} uses charset {col.charset!r}, which Python cannot decode"
        ) from exc

    def decode(data: bytes, _codec: str = codec) -> str:
        return data.decode(_codec)

    return decode


# -- code generation -------------------------------------------------------------------------


class _Gen:
    """Collects the generated source and the constants it refers to."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {
            "_i8": _i8,
            "_i16": _i16,
            "_u16": _u16,
            "_i32": _i32,
            "_u32": _u32,
            "_i64": _i64,
            "_u64": _u64,
            "_f32": _f32,
            "_f64": _f64,
            "_fb": _from_bytes,
            "_b64": b64,
            "_float32": float32,
            "_date": date_text,
            "_mariadb_json": mariadb_json,
            "_mysql_json": mysql_json,
            "_old_time": old_time_text,
            "_old_datetime": old_datetime_text,
            "_timestamp": timestamp_text,
        }
        self._n = 0

    def const(self, value: Any) -> str:
        self._n += 1
        name = f"_k{self._n}"
        self.ns[name] = value
        return name


def _length_code(size: int) -> str:
    if size == 1:
        return "b[p]"
    if size == 2:
        return "(b[p] | b[p + 1] << 8)"
    return f"_fb(b[p:p + {size}], 'little')"


def _value_code(col: ColumnMeta, target: str, gen: _Gen, keep: bool, bigint_as_string: bool) -> list[str]:
    """Lines that read one non-null value at ``p`` into ``target`` and advance ``p``."""
    t = col.type
    if t in _INT_NAMES:
        if t == INT24:
            expr = f"_fb(b[p:p + 3], 'little', signed={not col.unsigned})"
            size = 3
        else:
            fn, size = {
                TINY: ("_i8", 1),
                SHORT: ("_i16", 2),
                LONG: ("_i32", 4),
                LONGLONG: ("_i64", 8),
            }[t]
            if t == TINY and col.unsigned:
                expr = "b[p]"
            else:
                if col.unsigned:
                    fn = {"_i16": "_u16", "_i32": "_u32", "_i64": "_u64"}[fn]
                expr = f"{fn}(b, p)[0]"
        if t == LONGLONG and bigint_as_string:
            expr = f"str({expr})"
        if not keep:
            return [f"p += {size}"]
        return [f"{target} = {expr}", f"p += {size}"]
    if t == FLOAT:
        return ([f"{target} = _float32(_f32(b, p)[0])"] if keep else []) + ["p += 4"]
    if t == DOUBLE:
        return ([f"{target} = _f64(b, p)[0]"] if keep else []) + ["p += 8"]
    if t == NEWDECIMAL:
        size = decimal_size(col.precision, col.decimals)
        if not keep:
            return [f"p += {size}"]
        fn = gen.const(decimal_decoder(col.precision, col.decimals))
        return [f"{target} = {fn}(b, p)", f"p += {size}"]
    if t in (VARCHAR, VAR_STRING, STRING):
        prefix = 2 if col.max_length > 255 else 1
        lines = [f"n_ = {_length_code(prefix)}", f"p += {prefix}"]
        if keep:
            raw = "b[p:p + n_]"
            if t == STRING and col.binary:
                # BINARY(n) is stored padded with zero bytes, which the binlog leaves out
                raw = f"b[p:p + n_].ljust({col.max_length}, b'\\0')"
            if col.plugin is not None:
                lines.append(f"{target} = {gen.const(PLUGIN_TEXT[col.plugin])}({raw})")
            else:
                lines.append(f"{target} = {_text_expr(col, gen, raw)}")
        lines.append("p += n_")
        return lines
    if t in (BLOB, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, JSON, GEOMETRY):
        size = col.length_size or 4
        lines = [f"n_ = {_length_code(size)}", f"p += {size}"]
        if keep:
            raw = "b[p:p + n_]"
            if t == JSON:
                expr = f"_mysql_json({raw})"
            elif t == GEOMETRY:
                expr = f"_b64({raw})"
            elif col.json:
                decoder = _codec_decoder(col)
                if decoder is None or CHARSETS.get(col.charset or "", (0, ""))[1] == "utf-8":
                    expr = f"_mariadb_json({raw})"
                else:
                    fn = gen.const(decoder)
                    expr = f"_mariadb_json({fn}({raw}).encode())"
            else:
                expr = _text_expr(col, gen, raw)
            lines.append(f"{target} = {expr}")
        lines.append("p += n_")
        return lines
    if t == DATE or t == NEWDATE:
        return ([f"{target} = _date(b[p] | b[p + 1] << 8 | b[p + 2] << 16)"] if keep else []) + ["p += 3"]
    if t == TIME2:
        conv, size = time2_decoder(col.fsp)
        return ([f"{target} = {gen.const(conv)}(b, p)"] if keep else []) + [f"p += {size}"]
    if t == DATETIME2:
        conv, size = datetime2_decoder(col.fsp)
        return ([f"{target} = {gen.const(conv)}(b, p)"] if keep else []) + [f"p += {size}"]
    if t == TIMESTAMP2:
        conv, size = timestamp2_decoder(col.fsp)
        return ([f"{target} = {gen.const(conv)}(b, p)"] if keep else []) + [f"p += {size}"]
    if t == TIME:
        return ([f"{target} = _old_time(_fb(b[p:p + 3], 'little', signed=True))"] if keep else []) + ["p += 3"]
    if t == DATETIME:
        return ([f"{target} = _old_datetime(_u64(b, p)[0])"] if keep else []) + ["p += 8"]
    if t == TIMESTAMP:
        return ([f"{target} = _timestamp(_u32(b, p)[0], 0, 0)"] if keep else []) + ["p += 4"]
    if t == YEAR:
        return ([f"{target} = b[p] + 1900 if b[p] else 0"] if keep else []) + ["p += 1"]
    if t == ENUM:
        size = col.size or 1
        if not keep:
            return [f"p += {size}"]
        members = gen.const(("",) + tuple(col.values))
        index = "b[p]" if size == 1 else "_u16(b, p)[0]"
        return [f"{target} = {members}[{index}]", f"p += {size}"]
    if t == SET:
        size = col.size or 1
        if not keep:
            return [f"p += {size}"]
        members = gen.const(tuple((1 << i, v) for i, v in enumerate(col.values)))
        mask = "b[p]" if size == 1 else f"_fb(b[p:p + {size}], 'little')"
        return [f"m_ = {mask}", f"{target} = [v_ for k_, v_ in {members} if m_ & k_]", f"p += {size}"]
    if t == BIT:
        size = (col.bits + 7) // 8
        if not keep:
            return [f"p += {size}"]
        fmt = gen.const(f"0{col.bits}b")
        return [f"{target} = format(_fb(b[p:p + {size}], 'big'), {fmt})", f"p += {size}"]
    raise UnsupportedColumn(f"column {col.name!r} has binlog type {t} ({type_name(col)}), which cdc cannot decode")


def _text_expr(col: ColumnMeta, gen: _Gen, raw: str) -> str:
    decoder = _codec_decoder(col)
    if decoder is None:
        return f"_b64({raw})"
    found = CHARSETS.get(col.charset or "")
    if found is not None and found[1] == "utf-8":
        return f"{raw}.decode('utf-8')"
    return f"{gen.const(decoder)}({raw})"


ImageDecoder = Callable[[bytes, int], tuple[dict[str, Any], dict[str, Any] | None, int]]


def compile_image(
    columns: Sequence[ColumnMeta],
    present: Sequence[bool],
    keep: Sequence[bool],
    key: Sequence[int],
    *,
    bigint_as_string: bool = False,
) -> ImageDecoder:
    """Generate ``decode(b, p) -> (row, key, p)`` for one row image.

    ``present[i]``: column i is in the image (the event's columns-present bitmap); ``keep[i]``:
    it goes into the row (not excluded). ``key``: indexes of the key columns, in key order.
    Columns not present are left out of the row (never null); ``key`` is None for a keyless
    table or when the image lacks a key column.
    """
    gen = _Gen()
    shown = [i for i, on in enumerate(present) if on]
    nbytes = (len(shown) + 7) // 8
    body: list[str] = []
    nullable = any(columns[i].nullable for i in shown)
    if nullable:
        body.append(f"n = {_length_code(nbytes)}" if nbytes <= 2 else f"n = _fb(b[p:p + {nbytes}], 'little')")
    body.append(f"p += {nbytes}")
    for j, i in enumerate(shown):
        col = columns[i]
        code = _value_code(col, f"v{i}", gen, keep[i], bigint_as_string)
        if col.nullable:
            body.append(f"if n & {1 << j}:")
            body.append(f"    v{i} = None" if keep[i] else "    pass")
            body.append("else:")
            body.extend("    " + line for line in code)
        else:
            body.extend(code)
    row = "{" + ", ".join(f"{columns[i].name!r}: v{i}" for i in shown if keep[i]) + "}"
    if key and all(present[i] for i in key):
        key_expr = "{" + ", ".join(f"{columns[i].name!r}: v{i}" for i in key) + "}"
    else:
        key_expr = "None"
    body.append(f"return {row}, {key_expr}, p")
    names = ", ".join(columns[i].name for i in shown)
    fn: ImageDecoder = make_function("decode", ["b", "p"], body, gen.ns, f"mysql row image ({names})")
    return fn


def bitmap_flags(bitmap: bytes, count: int) -> tuple[bool, ...]:
    return tuple(bool(bitmap[i >> 3] & (1 << (i & 7))) for i in range(count))


class RowCodec:
    """Decodes the row images of one table description (one per distinct TABLE_MAP)."""

    def __init__(
        self,
        columns: Sequence[ColumnMeta],
        key: Sequence[int],
        excluded: frozenset[str] = frozenset(),
        *,
        bigint_as_string: bool = False,
    ) -> None:
        self.columns = tuple(columns)
        self.key = tuple(key)
        self.keep = tuple(c.name not in excluded for c in columns)
        self.bigint_as_string = bigint_as_string
        self._images: dict[bytes, ImageDecoder] = {}
        # fail at compile time, not on the first row
        self.image(b"\xff" * ((len(self.columns) + 7) // 8))

    def image(self, bitmap: bytes) -> ImageDecoder:
        fn = self._images.get(bitmap)
        if fn is None:
            present = bitmap_flags(bitmap, len(self.columns))
            fn = self._images[bytes(bitmap)] = compile_image(
                self.columns, present, self.keep, self.key, bigint_as_string=self.bigint_as_string
            )
        return fn

    def rows(self, b: bytes, p: int, end: int, bitmap: bytes) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Rows of a WRITE_ROWS / DELETE_ROWS body: ``[(row, key), ...]``."""
        img = self.image(bitmap)
        out = []
        while p < end:
            row, key, p = img(b, p)
            out.append((row, key))
        if p != end:
            raise ValueError(f"row image overran the event by {p - end} bytes")
        return out

    def updates(
        self, b: bytes, p: int, end: int, before_bitmap: bytes, after_bitmap: bytes
    ) -> list[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any], dict[str, Any] | None]]:
        """Rows of an UPDATE_ROWS body: ``[(before, before_key, after, after_key), ...]``."""
        img1 = self.image(before_bitmap)
        img2 = self.image(after_bitmap)
        out = []
        while p < end:
            before, bkey, p = img1(b, p)
            after, akey, p = img2(b, p)
            out.append((before, bkey, after, akey))
        if p != end:
            raise ValueError(f"row image overran the event by {p - end} bytes")
        return out


def _lenenc(b: bytes, p: int) -> tuple[int, int]:
    """A length-encoded integer at ``p``: (value, offset after it)."""
    first = b[p]
    if first < 0xFB:
        return first, p + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None:
        raise ValueError(f"bad length-encoded integer 0x{first:02x} at {p}")
    return int.from_bytes(b[p + 1 : p + 1 + size], "little"), p + 1 + size


#: TABLE_MAP optional metadata field types holding SET / ENUM member names
_SET_STR_VALUE: Final = 5
_ENUM_STR_VALUE: Final = 6


def table_map_members(body: bytes) -> tuple[list[tuple[bytes, ...]], list[tuple[bytes, ...]]]:
    """The ENUM and SET member names of a TABLE_MAP event as the bytes the server wrote (in the
    column's charset), in column order: ``(enums, sets)``.

    ``body`` is the event's post-header from the 2 flag bytes after the table id up to, not
    including, the checksum. python-mysql-replication decodes these names as UTF-8 and blanks
    the ones that are not, so they are read here again from the bytes (pure; no I/O)."""
    p = 2  # flags
    p += 1 + body[p] + 1  # schema name, NUL
    p += 1 + body[p] + 1  # table name, NUL
    count, p = _lenenc(body, p)
    p += count  # column types
    meta_len, p = _lenenc(body, p)
    p += meta_len + (count + 7) // 8  # per-type metadata, null bitmap
    enums: list[tuple[bytes, ...]] = []
    sets: list[tuple[bytes, ...]] = []
    end = len(body)
    while p < end:
        field = body[p]
        size, p = _lenenc(body, p + 1)
        stop = p + size
        if field in (_SET_STR_VALUE, _ENUM_STR_VALUE):
            target = sets if field == _SET_STR_VALUE else enums
            q = p
            while q < stop:
                n, q = _lenenc(body, q)
                members = []
                for _ in range(n):
                    length, q = _lenenc(body, q)
                    members.append(bytes(body[q : q + length]))
                    q += length
                target.append(tuple(members))
        p = stop
    return enums, sets


def _members_text(col: ColumnMeta, raw: Sequence[bytes]) -> tuple[str, ...]:
    """ENUM / SET member names decoded with the column's charset (``CHARACTER SET binary``: as
    UTF-8, the text the statement that defined them wrote and ``COLUMN_TYPE`` shows)."""
    decoder = _codec_decoder(col)
    if decoder is None:
        return tuple(m.decode("utf-8", "replace") for m in raw)
    return tuple(decoder(m) for m in raw)


def columns_from_description(
    desc: TableDescription,
    json_columns: frozenset[str] = frozenset(),
    plugins: dict[str, str] | None = None,
) -> list[ColumnMeta]:
    """ColumnMeta for each column of a TABLE_MAP's description (:func:`.protocol.table_map_columns`).

    ``json_columns``: MariaDB JSON columns; ``plugins``: column name -> MariaDB type plugin
    (``uuid``, ``inet4``, ``inet6``; applied only to a ``binary(n)`` of the plugin's size).
    Text is decoded with the column's character set (from its collation id); ENUM/SET member
    names too (they are the bytes the server wrote, in the column's charset)."""
    out = []
    for c in desc.columns:
        t = c.type
        name = c.name
        if not name:
            raise UnsupportedColumn(
                f"the binlog's TABLE_MAP for {desc.schema}.{desc.table} has no column names: "
                "set binlog_row_metadata=FULL on the server"
            )
        charset = CHARSET_OF.get(c.collation) if c.collation is not None else None
        plugin = (plugins or {}).get(name)
        if plugin is not None and not (
            t == STRING and charset == "binary" and PLUGIN_SIZES.get(plugin) == c.max_length
        ):
            plugin = None  # the catalog's column of that name is not this one (an old event)
        col = ColumnMeta(
            name=name,
            type=t,
            nullable=c.nullable,
            unsigned=c.unsigned,
            charset=charset,
            codec=charset if charset is not None else ("utf8" if c.collation is not None else None),
            max_length=c.max_length,
            length_size=c.length_size,
            precision=c.precision,
            decimals=c.decimals,
            fsp=c.fsp,
            bits=c.bits,
            size=c.size,
            geometry_type=c.geometry_type,
            json=name in json_columns,
            plugin=plugin,
        )
        if t in (ENUM, SET) and c.members:
            col = dataclasses.replace(col, values=_members_text(col, c.members))
        out.append(col)
    return out
