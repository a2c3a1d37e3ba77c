"""Converters from pgoutput's text values to the JSON-ready values of the change event.

Theory of operation: pgoutput (text mode) sends every column value as its type's text output
function renders it in the *replication session's* settings. The service's replication
connection runs with ``TimeZone=UTC``, ``DateStyle=ISO``, ``IntervalStyle=iso_8601``,
``extra_float_digits=3`` and ``bytea_output=hex`` on a UTF-8 database, and the converters here
rely on exactly that rendering:

- timestamps arrive as ``2026-11-28 12:45:01.123+00`` and only need a ``T``, six fractional
  digits and ``Z``, so no date parsing happens on the hot path;
- floats arrive in shortest round-trip form, so ``float(text)`` is exact, and numerics arrive
  with their stored digits, so they are passed through as strings;
- json/jsonb text is handed to orjson as a :class:`orjson.Fragment`, written verbatim, so big
  or precise numbers keep their digits.

The mapping is the contract's "Values" table (docs/events.md, "Values"). A value the JSON form
cannot hold (``infinity``, BC dates) stays the source's own text.

:func:`converter_for` is called once per column when a Relation message is resolved (domains
resolved to their base type first, enums passed as ``text``) and returns a small function that
is then called for every value: those are tight (``int``, a bound method, a few slices), with
no per-call dict lookups or regular expressions. None of them sees SQL NULL or pgoutput's
unchanged-TOAST marker: the caller handles those before converting.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

Converter = Callable[[bytes], Any]

# Built-in type OIDs (pg_type.dat; stable across PostgreSQL versions).
BOOL: Final = 16
BYTEA: Final = 17
CHAR: Final = 18
NAME: Final = 19
INT8: Final = 20
INT2: Final = 21
INT4: Final = 23
TEXT: Final = 25
OID: Final = 26
JSON: Final = 114
XML: Final = 142
CIDR: Final = 650
FLOAT4: Final = 700
FLOAT8: Final = 701
MACADDR8: Final = 774
MONEY: Final = 790
MACADDR: Final = 829
INET: Final = 869
BPCHAR: Final = 1042
VARCHAR: Final = 1043
DATE: Final = 1082
TIME: Final = 1083
TIMESTAMP: Final = 1114
TIMESTAMPTZ: Final = 1184
INTERVAL: Final = 1186
TIMETZ: Final = 1266
BIT: Final = 1560
VARBIT: Final = 1562
NUMERIC: Final = 1700
UUID: Final = 2950
JSONB: Final = 3802

#: Built-in array type OID -> element type OID (every ``typcategory 'A'`` array type of
#: PostgreSQL 15 below OID 10000, except ``int2vector``/``oidvector`` which print space-separated).
ARRAY_ELEMENT_OIDS: Final[dict[int, int]] = {
    143: 142,  # xml[]
    199: 114,  # json[]
    210: 71,  # pg_type[]
    270: 75,  # pg_attribute[]
    271: 5069,  # xid8[]
    272: 81,  # pg_proc[]
    273: 83,  # pg_class[]
    629: 628,  # line[]
    651: 650,  # cidr[]
    719: 718,  # circle[]
    775: 774,  # macaddr8[]
    791: 790,  # money[]
    1000: 16,  # bool[]
    1001: 17,  # bytea[]
    1002: 18,  # char[]
    1003: 19,  # name[]
    1005: 21,  # int2[]
    1006: 22,  # int2vector[]
    1007: 23,  # int4[]
    1008: 24,  # regproc[]
    1009: 25,  # text[]
    1010: 27,  # tid[]
    1011: 28,  # xid[]
    1012: 29,  # cid[]
    1013: 30,  # oidvector[]
    1014: 1042,  # bpchar[]
    1015: 1043,  # varchar[]
    1016: 20,  # int8[]
    1017: 600,  # point[]
    1018: 601,  # lseg[]
    1019: 602,  # path[]
    1020: 603,  # box[]
    1021: 700,  # float4[]
    1022: 701,  # float8[]
    1027: 604,  # polygon[]
    1028: 26,  # oid[]
    1034: 1033,  # aclitem[]
    1040: 829,  # macaddr[]
    1041: 869,  # inet[]
    1115: 1114,  # timestamp[]
    1182: 1082,  # date[]
    1183: 1083,  # time[]
    1185: 1184,  # timestamptz[]
    1187: 1186,  # interval[]
    1231: 1700,  # numeric[]
    1263: 2275,  # cstring[]
    1270: 1266,  # timetz[]
    1561: 1560,  # bit[]
    1563: 1562,  # varbit[]
    2201: 1790,  # refcursor[]
    2207: 2202,  # regprocedure[]
    2208: 2203,  # regoper[]
    2209: 2204,  # regoperator[]
    2210: 2205,  # regclass[]
    2211: 2206,  # regtype[]
    2949: 2970,  # txid_snapshot[]
    2951: 2950,  # uuid[]
    3221: 3220,  # pg_lsn[]
    3643: 3614,  # tsvector[]
    3644: 3642,  # gtsvector[]
    3645: 3615,  # tsquery[]
    3735: 3734,  # regconfig[]
    3770: 3769,  # regdictionary[]
    3807: 3802,  # jsonb[]
    3905: 3904,  # int4range[]
    3907: 3906,  # numrange[]
    3909: 3908,  # tsrange[]
    3911: 3910,  # tstzrange[]
    3913: 3912,  # daterange[]
    3927: 3926,  # int8range[]
    4073: 4072,  # jsonpath[]
    4090: 4089,  # regnamespace[]
    4097: 4096,  # regrole[]
    4192: 4191,  # regcollation[]
    5039: 5038,  # pg_snapshot[]
    6150: 4451,  # int4multirange[]
    6151: 4532,  # nummultirange[]
    6152: 4533,  # tsmultirange[]
    6153: 4534,  # tstzmultirange[]
    6155: 4535,  # datemultirange[]
    6157: 4536,  # int8multirange[]
}

#: Array types whose elements are not separated by ``,`` (``typdelim`` of the element type).
ARRAY_DELIMITERS: Final[dict[int, str]] = {1020: ";"}  # box[]


# --- scalar converters ------------------------------------------------------------------------

#: text-like types, numeric, date, interval, bit strings and everything unknown: the text itself
_text: Final[Converter] = bytes.decode

#: ``t`` / ``f``
_bool: Final[Converter] = b"t".__eq__


def _float(text: bytes) -> float | str:
    """``float4``/``float8``: a number; ``NaN``, ``Infinity`` and ``-Infinity`` as strings."""
    # A finite float's text always ends in a digit ("1.5", "-0", "1e+100"); the specials do not.
    if text[-1] < 0x3A:
        return float(text)
    return text.decode()


def _bytea(text: bytes) -> str:
    """``bytea`` (hex output ``\\x0aff``) -> base64."""
    if text[:2] == b"\\x":
        return binascii.b2a_base64(binascii.a2b_hex(text[2:]), newline=False).decode()
    return binascii.b2a_base64(_unescape_bytea(text), newline=False).decode()


_BYTEA_ESCAPE: Final = re.compile(rb"\\(\\|[0-3][0-7]{2})")


def _unescape_bytea(text: bytes) -> bytes:
    """``bytea_output=escape`` form, in case a session did not get ``hex``: ``\\\\`` and ``\\ooo``."""
    return _BYTEA_ESCAPE.sub(
        lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1), 8)]), text
    )


def _time(text: bytes) -> str:
    """``13:45:01.5`` -> ``13:45:01.500000`` (always six fractional digits)."""
    s = text.decode()
    n = len(s)
    if n == 8:  # no fraction
        return s + ".000000"
    return s + "000000"[n - 9 :]


def _timetz(text: bytes) -> str:
    """``13:45:01.5+02`` -> ``13:45:01.500000+02:00``; ``+05:30`` and ``-03:00:15`` kept."""
    s = text.decode()
    k = s.rfind("+")
    if k < 0:
        k = s.rfind("-")
    # k is also the length of the time part: 8 without a fraction, up to 15 with six digits
    t = s[:k] + ".000000" if k == 8 else s[:k] + "000000"[k - 9 :]
    off = s[k:]
    return t + off + ":00" if len(off) == 3 else t + off


def _timestamp(text: bytes) -> str:
    """``2026-11-28 13:45:01.5`` -> ``2026-11-28T13:45:01.500000``; infinity and BC as text."""
    s = text.decode()
    if s[-1] > "9":  # "infinity", "-infinity", "... BC"
        return s
    s = s.replace(" ", "T", 1)
    n = len(s) - s.rfind(":")  # ":SS" or ":SS.f" .. ":SS.ffffff"
    return s + ".000000" if n == 3 else s + "000000"[n - 4 :]


def _timestamptz(text: bytes) -> str:
    """``2026-11-28 12:45:01.5+00`` -> ``2026-11-28T12:45:01.500000Z``; infinity and BC as text."""
    s = text.decode()
    if len(s) == 29 and s[10] == " " and s[-3:] == "+00":  # the common case: µs, 4-digit year
        return f"{s[:10]}T{s[11:26]}Z"
    if s[-3:] == "+00":  # always so with TimeZone=UTC
        s = s[:-3].replace(" ", "T", 1)
        n = len(s) - s.rfind(":")
        return s + ".000000Z" if n == 3 else s + "000000Z"[n - 4 :]
    if s[-1] > "9":
        return s
    return _timestamptz_offset(s)


def _timestamptz_offset(s: str) -> str:
    """Slow path for a session whose TimeZone was not UTC: convert the offset away."""
    try:
        dt = datetime.fromisoformat(s).astimezone(UTC)
    except ValueError:  # years beyond 9999 and other forms datetime cannot hold
        return s
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_JSON_SPACES: Final = bytes.maketrans(b"\n\r\t", b"   ")


def _json(text: bytes) -> orjson.Fragment:
    """``json``: the exact text (digits untouched) on one line, embedded as is by orjson.

    ``json`` keeps its input verbatim, whitespace included. PostgreSQL accepted it as valid
    JSON, which never has a raw control character inside a string, so every raw newline, CR or
    tab is insignificant whitespace and becomes a space (keeping JSON-lines output on one line).
    """
    return orjson.Fragment(text.translate(_JSON_SPACES))


#: ``jsonb``: already normalised on one line by PostgreSQL
_jsonb: Final[Converter] = orjson.Fragment

_SCALARS: Final[dict[int, Converter]] = {
    BOOL: _bool,
    BYTEA: _bytea,
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    FLOAT4: _float,
    FLOAT8: _float,
    TIME: _time,
    TIMETZ: _timetz,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
    JSON: _json,
    JSONB: _jsonb,
}

#: pg_catalog names of the built-in types named above and of their array types (``_int4``). A
#: pgoutput ``Type`` message for a domain over a built-in type carries the base type's name
#: with an empty namespace (``Type(oid=<domain>, namespace='', name='int4')``), so this
#: resolves such a domain without a catalog query.
BUILTIN_TYPE_OIDS: Final[dict[str, int]] = {
    "bool": BOOL, "bytea": BYTEA, "char": CHAR, "name": NAME, "int8": INT8, "int2": INT2,
    "int4": INT4, "text": TEXT, "oid": OID, "json": JSON, "xml": XML, "cidr": CIDR,
    "float4": FLOAT4, "float8": FLOAT8, "macaddr8": MACADDR8, "money": MONEY,
    "macaddr": MACADDR, "inet": INET, "bpchar": BPCHAR, "varchar": VARCHAR, "date": DATE,
    "time": TIME, "timestamp": TIMESTAMP, "timestamptz": TIMESTAMPTZ, "interval": INTERVAL,
    "timetz": TIMETZ, "bit": BIT, "varbit": VARBIT, "numeric": NUMERIC, "uuid": UUID,
    "jsonb": JSONB,
}  # fmt: skip
BUILTIN_TYPE_OIDS.update(
    {
        "_" + name: array_oid
        for name, oid in list(BUILTIN_TYPE_OIDS.items())
        for array_oid, element_oid in ARRAY_ELEMENT_OIDS.items()
        if element_oid == oid
    }
)


def converter_for(base_oid: int, *, bigint_as_string: bool = False) -> Converter:
    """The converter for a column of built-in type ``base_oid``.

    Called once per column when a Relation is resolved; the caller resolves domains to their
    base type first. Built-in array types get an :func:`array_converter` of their element's
    converter; any OID this module does not know (enums, hstore, citext, ranges, money,
    geometry, ...) gets the text converter. ``bigint_as_string`` writes ``int8`` as a string.
    """
    if base_oid == INT8 and bigint_as_string:
        return _text
    conv = _SCALARS.get(base_oid)
    if conv is not None:
        return conv
    element = ARRAY_ELEMENT_OIDS.get(base_oid)
    if element is not None:
        return array_converter(
            converter_for(element, bigint_as_string=bigint_as_string),
            ARRAY_DELIMITERS.get(base_oid, ","),
        )
    return _text


# --- arrays -----------------------------------------------------------------------------------


def array_converter(element: Converter, delim: str = ",") -> Converter:
    """A converter for PostgreSQL's array text format, applying ``element`` to each element.

    ``{1,2}``, ``{{1,2},{3,4}}``, ``{"a b","c\\"d",NULL,"NULL"}``, ``[0:1]={7,8}`` (the bounds
    are dropped). Unquoted ``NULL`` is SQL NULL (``None``); a quoted one is the string. Elements
    reach ``element`` as ``bytes`` with quotes and backslash escapes removed. ``delim`` is the
    element type's ``typdelim`` (``;`` for ``box``).
    """
    d = delim.encode()
    if len(d) != 1:
        raise ValueError(f"array delimiter must be one byte, got {delim!r}")
    d_byte = d[0]

    def convert(text: bytes) -> list[Any]:
        if text[0] == 0x5B:  # '[': explicit bounds, "[1:2][0:1]={...}"
            text = text[text.index(b"=") + 1 :]
        if text[0] != 0x7B or text[-1] != 0x7D:
            raise ValueError(f"not an array literal: {text[:40]!r}")
        if b'"' not in text and text.find(b"{", 1) < 0:
            # One dimension, nothing quoted: split (elements cannot contain the delimiter).
            if len(text) == 2:
                return []
            return [None if e == b"NULL" else element(e) for e in text[1:-1].split(d)]
        return _parse_array(text, d, d_byte, element)

    return convert


def _parse_array(text: bytes, d: bytes, d_byte: int, element: Converter) -> list[Any]:
    """General case: nested dimensions and quoted elements."""
    if text[:1] != b"{":
        raise ValueError(f"not an array literal: {text[:40]!r}")
    root: list[Any] = []
    stack: list[list[Any]] = []
    cur = root
    pos = 1
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == 0x7B:  # '{'
            sub: list[Any] = []
            cur.append(sub)
            stack.append(cur)
            cur = sub
            pos += 1
        elif c == 0x7D:  # '}'
            if not stack:
                return root
            cur = stack.pop()
            pos += 1
        elif c == d_byte:
            pos += 1
        elif c == 0x22:  # '"': quoted, with \" and \\ escapes
            pos += 1
            parts = []
            while True:
                q = text.index(b'"', pos)
                b = text.find(b"\\", pos, q)
                if b < 0:
                    parts.append(text[pos:q])
                    pos = q + 1
                    break
                parts.append(text[pos:b])
                parts.append(text[b + 1 : b + 2])
                pos = b + 2
            cur.append(element(b"".join(parts)))
        else:  # unquoted: up to the next delimiter or '}'
            end = text.find(b"}", pos)
            e = text.find(d, pos, end)
            if e >= 0:
                end = e
            if end < 0:
                raise ValueError(f"unterminated array literal: {text[:40]!r}")
            token = text[pos:end]
            cur.append(None if token == b"NULL" else element(token))
            pos = end
    raise ValueError(f"unterminated array literal: {text[:40]!r}")
