"""Debezium-compatible records (``format: debezium``): cdc events in, Debezium's key and value out.

Theory of operation
-------------------
A sink with ``format: debezium`` asks :class:`DebeziumEncoder` for the records of a batch of
events. The encoder works from the event alone (values already in the ``cdc`` JSON form of
section 4, the schema version's column types) and writes what Debezium 3.6's PostgreSQL or
MySQL connector writes through Kafka Connect's ``JsonConverter``:

* per schema version, once (:class:`_Table`): the topic ``<topic.prefix>.<schema>.<table>``,
  the Connect schemas of key and value (the JSON text ``schemas.enable: true`` puts in front of
  every record), and one converter per column from the cdc value to Debezium's (days since the
  epoch for dates, epoch micro/milliseconds for timestamps, the unscaled bytes of a decimal,
  …), chosen by the mapping properties. Columns whose cdc value is already Debezium's have no
  converter, so a row of ints and strings is copied as is;
* per event: the ``source`` block of the connector's shape, ``op``, the time fields, the
  ``transaction`` block when ``provide.transaction.metadata`` is on, then the records Debezium
  writes for it: a delete is followed by a tombstone (``tombstones.on.delete``), a key change
  (cdc's ``d`` + ``c`` with ``key_change``) carries the headers ``__debezium.newkey`` /
  ``__debezium.oldkey``, skipped operations write nothing, and transaction metadata adds
  ``BEGIN`` / ``END`` records on ``<topic.prefix>.transaction``.

The encoder is pure (no I/O, no client library): a sink turns its :class:`Record` list into
messages. Unchanged TOAST values (named in the event's ``unchanged``) become
``unavailable.value.placeholder``, as Debezium writes them — only in this format.

What cannot be reproduced from a cdc event (docs/debezium.md lists it): the per-change LSN of a
PostgreSQL change when the source did not record it (the commit LSN is used then), the
``first``/``last`` marks of ``source.snapshot`` (every snapshot read says ``true``), a snapshot
read's ``txId``, the ``allowed`` values of an enum's schema.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import orjson

from cdc._codegen import make_function
from cdc.events import ChangeEvent
from cdc.schema import SchemaVersion

#: the ``source.version`` cdc writes (an exempt field: Debezium writes its own release)
VERSION: Final = "cdc"

Converter = Callable[[Any], Any]

#: Debezium's defaults for the ``debezium:`` block (time.precision.mode: PostgreSQL's; MySQL's
#: default is ``adaptive_time_microseconds``)
DEFAULTS: Final[dict[str, Any]] = {
    "schemas.enable": False,
    "decimal.handling.mode": "precise",
    "binary.handling.mode": "bytes",
    "interval.handling.mode": "numeric",
    "bigint.unsigned.handling.mode": "long",
    "tombstones.on.delete": True,
    "skipped.operations": "t",
    "provide.transaction.metadata": False,
    "unavailable.value.placeholder": "__debezium_unavailable_value",
}

_EPOCH: Final = date(1970, 1, 1).toordinal()
_MONTH_DAYS: Final = 30.4375  # Debezium's average month in MicroDuration
_DAY_US: Final = 86_400_000_000


class Record:
    """One message: topic, key and value as JSON bytes (``None``: no key / a tombstone),
    headers as (name, JSON bytes) pairs."""

    __slots__ = ("topic", "key", "value", "headers", "event")

    def __init__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        event: ChangeEvent | None,
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.event = event

    def __repr__(self) -> str:
        return f"Record({self.topic!r}, {self.key!r}, {self.value!r})"


def settings_of(block: dict[str, Any], pipeline: str, connector: str) -> dict[str, Any]:
    """The effective properties: Debezium's defaults (per connector) under the file's block."""
    out = dict(DEFAULTS)
    out["topic.prefix"] = pipeline
    out["time.precision.mode"] = "adaptive" if connector == "postgres" else "adaptive_time_microseconds"
    out.update(block)
    return out


def skipped_ops(value: str) -> frozenset[str]:
    """``skipped.operations``: comma-separated op codes, or ``none``."""
    words = {w.strip() for w in value.split(",") if w.strip()}
    return frozenset() if words <= {"none"} else frozenset(words)


# --- value converters ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def _unscaled(d: Decimal, scale: int) -> bytes:
    """Big-endian two's complement of ``d * 10**scale`` (exact: no decimal context)."""
    sign, digits, exp = d.as_tuple()
    n = int("".join(map(str, digits)) or "0")
    shift = scale + int(exp)
    n = n * 10**shift if shift >= 0 else n // 10**-shift
    if sign:
        n = -n
    out: bytes = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return out


def _decimal_precise(scale: int) -> Converter:
    def conv(v: Any) -> Any:
        try:
            d = Decimal(v)
        except (InvalidOperation, TypeError):
            return None
        if not d.is_finite():
            return None
        return _b64(_unscaled(d, scale))

    return conv


def _variable_precise(v: Any) -> Any:
    try:
        d = Decimal(v)
    except (InvalidOperation, TypeError):
        return None
    if not d.is_finite():
        return None
    exp = d.as_tuple().exponent
    scale = -exp if isinstance(exp, int) and exp < 0 else 0
    return {"scale": scale, "value": _b64(_unscaled(d, scale))}


#: non-finite doubles: JsonConverter writes them as strings
_SPECIAL_FLOATS: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def _decimal_double(v: Any) -> Any:
    if v in _SPECIAL_FLOATS:
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _numeric_string(v: Any) -> Any:
    """``decimal.handling.mode: string``: Debezium writes a NaN numeric as ``NAN``."""
    return "NAN" if v == "NaN" else v


def _numeric_array(element: Converter | None) -> Converter:
    """numeric[]: an array holding NaN is a whole-array ``null`` (seen from Debezium 3.6.3)."""

    def conv(v: Any) -> Any:
        if "NaN" in v:
            return None
        return v if element is None else [None if x is None else element(x) for x in v]

    return conv


def _money_text(v: Any) -> str:
    s = str(v)
    neg = "-" in s or "(" in s
    digits = re.sub(r"[^0-9.]", "", s)
    return "-" + digits if neg else digits


def _date(v: Any) -> Any:
    if isinstance(v, str) and len(v) == 10 and v[4] == "-":
        try:
            return date.fromisoformat(v).toordinal() - _EPOCH
        except ValueError:
            return None
    if v == "infinity":  # as Debezium streams it (its snapshot reads write -622191234)
        return -2147472692
    return None


def _time_us(v: Any) -> Any:
    """``HH:MM:SS.ffffff`` (hours may exceed 24 or be negative on MySQL) -> microseconds."""
    s = str(v)
    neg = s.startswith("-")
    if neg:
        s = s[1:]
    h, m, rest = s.split(":")
    sec, _, frac = rest.partition(".")
    us = ((int(h) * 60 + int(m)) * 60 + int(sec)) * 1_000_000 + int((frac + "000000")[:6])
    return -us if neg else us


def _time_ms(v: Any) -> Any:
    us = _time_us(v)
    return us // 1000 if us >= 0 else -((-us) // 1000)


def _time_ms_connect(v: Any) -> Any:
    us = _time_us(v)
    return us // 1000 if 0 <= us <= _DAY_US else None


def _ts_us(v: Any) -> Any:
    s = str(v)
    try:
        dt = datetime.fromisoformat(s.removesuffix("Z")).replace(tzinfo=UTC)
    except ValueError:
        return None
    delta = dt - _EPOCH_DT
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH_DT: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _ts_ms(v: Any) -> Any:
    us = _ts_us(v)
    return None if us is None else us // 1000


def _zoned_ts(precision: int) -> Converter:
    """``2026-11-28T12:45:01.500000Z`` -> Debezium's ZonedTimestamp: the fraction padded to the
    column's precision (none for 0)."""

    if precision == 6:
        return _zoned_ts6

    def conv(v: Any) -> Any:
        s = str(v)
        if not s.endswith("Z") or len(s) < 20:
            return s
        head, _, frac = s[:-1].partition(".")
        if precision == 0:
            return head + "Z"
        return f"{head}.{(frac + '000000')[:precision]}Z"

    return conv


def _zoned_ts6(v: Any) -> Any:
    """Precision 6: cdc's form (six digits, ``Z``) is already Debezium's."""
    return v


def _zoned_time(v: Any) -> Any:
    """``13:45:01.500000+02:00`` -> ``11:45:01.5Z`` (UTC; the fraction without trailing zeros)."""
    s = str(v)
    k = max(s.rfind("+"), s.rfind("-"))
    t, off = s[:k], s[k:]
    us = _time_us(t)
    sign = 1 if off[0] == "+" else -1
    parts = [int(p) for p in off[1:].split(":")]
    off_s = parts[0] * 3600 + (parts[1] if len(parts) > 1 else 0) * 60 + (parts[2] if len(parts) > 2 else 0)
    us = (us - sign * off_s * 1_000_000) % _DAY_US
    sec, micro = divmod(us, 1_000_000)
    hh, rem = divmod(sec, 3600)
    mm, ss = divmod(rem, 60)
    out = f"{hh:02d}:{mm:02d}:{ss:02d}"
    if micro:
        out += "." + f"{micro:06d}".rstrip("0")
    return out + "Z"


_ISO_DUR: Final = re.compile(
    r"^P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)D)?(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?[\d.]+)S)?)?$"
)


def _interval_parts(v: Any) -> tuple[int, int, int, int, int, Decimal] | None:
    m = _ISO_DUR.match(str(v))
    if m is None:
        return None
    y, mo, d, h, mi, s = m.groups()
    return (int(y or 0), int(mo or 0), int(d or 0), int(h or 0), int(mi or 0), Decimal(s or 0))


def _interval_us(v: Any) -> Any:
    p = _interval_parts(v)
    if p is None:
        return None
    y, mo, d, h, mi, s = p
    days = _MONTH_DAYS * (y * 12 + mo) + d
    us = days * _DAY_US + (h * 3600 + mi * 60) * 1_000_000 + int(s * 1_000_000)
    return int(round(us))


def _interval_text(v: Any) -> Any:
    p = _interval_parts(v)
    if p is None:
        return None
    y, mo, d, h, mi, s = p
    sec = format(s.normalize(), "f") if s != 0 else "0"
    return f"P{y}Y{mo}M{d}DT{h}H{mi}M{sec}S"


def _bits(v: Any) -> Any:
    n = int(v, 2) if v else 0
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "little"))


def _bits_fixed(n: int) -> Converter:
    """MySQL BIT(n): little-endian, always (n + 7) // 8 bytes."""
    size = (n + 7) // 8

    def conv(v: Any) -> Any:
        return _b64((int(v, 2) if v else 0).to_bytes(size, "little"))

    return conv


def _bit1(v: Any) -> Any:
    return v == "1"


def _json_text(v: Any) -> Any:
    return orjson.dumps(v).decode()


def _to_int(v: Any) -> Any:
    return int(v)


def _binary(mode: str) -> Converter | None:
    if mode in ("bytes", "base64"):
        return None
    if mode == "hex":
        return lambda v: binascii.a2b_base64(v).hex()
    return lambda v: base64.urlsafe_b64encode(binascii.a2b_base64(v)).decode()


def _array(element: Converter | None, all_or_nothing: bool = False) -> Converter:
    if element is None:
        return lambda v: v

    def conv(v: Any) -> Any:
        out = [None if x is None else element(x) for x in v]
        if all_or_nothing and any(x is None for x in out) and not any(x is None for x in v):
            return None
        return out

    return conv


# --- schema of a column --------------------------------------------------------------------------

_TYPE_RE: Final = re.compile(r"^([a-z0-9_ .\"]+?)(?:\((\d+)(?:,\s*(\d+))?\))?( unsigned)?( zerofill)?(\[\])?$")


class _Column:
    __slots__ = ("name", "schema", "conv")

    def __init__(self, name: str, schema: dict[str, Any], conv: Converter | None) -> None:
        self.name = name
        self.schema = schema
        self.conv = conv


def _named(t: str, name: str, **params: str) -> dict[str, Any]:
    d: dict[str, Any] = {"type": t, "name": name, "version": 1}
    if params:
        d["parameters"] = params
    return d


def _pg_column(type_name: str, s: dict[str, Any], bigint_string: bool) -> tuple[dict[str, Any], Converter | None]:
    """Connect schema and converter of a PostgreSQL column type (cdc's type name)."""
    m = _TYPE_RE.match(type_name)
    if m is None:
        return {"type": "string"}, None
    base, p1, p2, _, _, arr = m.groups()
    if arr:
        schema, conv = _pg_column(type_name[:-2], s, bigint_string)
        item = dict(schema)
        item["optional"] = True
        if base == "numeric":
            return {"type": "array", "items": item}, _numeric_array(conv)
        return {"type": "array", "items": item}, None if conv is None else _array(conv)
    dec = s["decimal.handling.mode"]
    tpm = s["time.precision.mode"]
    prec = int(p1) if p1 is not None else None
    if base in ("int2", "smallint"):
        return {"type": "int16"}, None
    if base in ("int4", "integer", "oid"):
        return {"type": "int32" if base != "oid" else "int64"}, None
    if base in ("int8", "bigint"):
        return {"type": "int64"}, _to_int if bigint_string else None
    if base == "bool":
        return {"type": "boolean"}, None
    if base == "float4":  # NaN and the infinities: strings, in cdc's form and JsonConverter's
        return {"type": "float"}, None
    if base == "float8":
        return {"type": "double"}, None
    if base in ("numeric", "money"):
        scale = int(p2) if p2 is not None else (0 if prec is not None else None)
        conv_text: Converter | None = _money_text if base == "money" else None
        if base == "money":
            scale = 2
        if dec == "string":
            return {"type": "string"}, conv_text or _numeric_string
        if dec == "double":
            if conv_text is not None:
                return {"type": "double"}, lambda v: _decimal_double(_money_text(v))
            return {"type": "double"}, _decimal_double
        if scale is None:
            return (
                {
                    "type": "struct",
                    "fields": [
                        {"type": "int32", "optional": False, "field": "scale"},
                        {"type": "bytes", "optional": False, "field": "value"},
                    ],
                    "name": "io.debezium.data.VariableScaleDecimal",
                    "version": 1,
                    "doc": "Variable scaled decimal",
                },
                _variable_precise,
            )
        params = {"scale": str(scale)}
        if prec is not None and base == "numeric":
            params["connect.decimal.precision"] = str(prec)
        enc = _decimal_precise(scale)
        if conv_text is not None:
            return _named("bytes", "org.apache.kafka.connect.data.Decimal", **params), lambda v: enc(_money_text(v))
        return _named("bytes", "org.apache.kafka.connect.data.Decimal", **params), enc
    if base == "bytea":
        mode = s["binary.handling.mode"]
        return ({"type": "bytes"} if mode == "bytes" else {"type": "string"}), _binary(mode)
    if base == "date":
        if tpm == "connect":
            return _named("int32", "org.apache.kafka.connect.data.Date"), _date
        return _named("int32", "io.debezium.time.Date"), _date
    if base == "time":
        p = 6 if prec is None else prec
        if tpm == "connect":
            return _named("int64", "org.apache.kafka.connect.data.Time"), _time_ms_connect
        if tpm == "adaptive" and p <= 3:
            return _named("int32", "io.debezium.time.Time"), _time_ms
        return _named("int64", "io.debezium.time.MicroTime"), _time_us
    if base == "timetz":
        return _named("string", "io.debezium.time.ZonedTime"), _zoned_time
    if base == "timestamp":
        p = 6 if prec is None else prec
        if tpm == "connect":
            return _named("int64", "org.apache.kafka.connect.data.Timestamp"), _ts_ms
        if p <= 3:
            return _named("int64", "io.debezium.time.Timestamp"), _ts_ms
        return _named("int64", "io.debezium.time.MicroTimestamp"), _ts_us
    if base == "timestamptz":
        p = 6 if prec is None else prec
        return _named("string", "io.debezium.time.ZonedTimestamp"), _zoned_ts(p)
    if base == "interval":
        if s["interval.handling.mode"] == "string":
            return _named("string", "io.debezium.time.Interval"), _interval_text
        return _named("int64", "io.debezium.time.MicroDuration"), _interval_us
    if base in ("json", "jsonb"):
        return _named("string", "io.debezium.data.Json"), _json_text
    if base == "uuid":
        return _named("string", "io.debezium.data.Uuid"), None
    if base == "xml":
        return _named("string", "io.debezium.data.Xml"), None
    if base == "bit" and (prec is None or prec == 1):
        return {"type": "boolean"}, _bit1
    if base in ("bit", "varbit"):
        return _named("bytes", "io.debezium.data.Bits", length=str(prec if prec is not None else 2147483647)), _bits
    return {"type": "string"}, None


_MY_INTS: Final = {"tinyint": "int16", "smallint": "int16", "mediumint": "int32", "int": "int32", "integer": "int32"}


def _my_column(type_name: str, s: dict[str, Any], bigint_string: bool) -> tuple[dict[str, Any], Converter | None]:
    """Connect schema and converter of a MySQL/MariaDB column type (as the server writes it)."""
    t = type_name.lower()
    m = _TYPE_RE.match(t)
    base = t.split("(")[0].split(" ")[0]
    p1 = m.group(1 + 1) if m else None
    p2 = m.group(3) if m else None
    unsigned = " unsigned" in t
    dec = s["decimal.handling.mode"]
    tpm = s["time.precision.mode"]
    if base == "tinyint" and p1 == "1" and not unsigned:
        return {"type": "int16"}, None
    if base in _MY_INTS:
        if unsigned:
            return {"type": {"tinyint": "int16", "smallint": "int32", "mediumint": "int32"}.get(base, "int64")}, None
        return {"type": _MY_INTS[base]}, None
    if base == "bigint":
        if unsigned and s["bigint.unsigned.handling.mode"] == "precise":
            enc = _decimal_precise(0)
            return _named("bytes", "org.apache.kafka.connect.data.Decimal", scale="0"), enc
        if unsigned:
            return {"type": "int64"}, lambda v: (int(v) - (1 << 64)) if int(v) >= (1 << 63) else int(v)
        return {"type": "int64"}, _to_int if bigint_string else None
    if base == "year":
        return _named("int32", "io.debezium.time.Year"), lambda v: 1900 if int(v) == 0 else int(v)
    if base in ("float",):
        return {"type": "float"}, None
    if base in ("double", "real"):
        return {"type": "double"}, None
    if base in ("decimal", "numeric"):
        scale = int(p2) if p2 is not None else 0
        if dec == "string":
            return {"type": "string"}, None
        if dec == "double":
            return {"type": "double"}, _decimal_double
        params = {"scale": str(scale)}
        if p1 is not None:
            params["connect.decimal.precision"] = p1
        return _named("bytes", "org.apache.kafka.connect.data.Decimal", **params), _decimal_precise(scale)
    if base == "bit":
        n = int(p1) if p1 is not None else 1
        if n == 1:
            return {"type": "boolean"}, _bit1
        return _named("bytes", "io.debezium.data.Bits", length=str(n)), _bits_fixed(n)
    if base in ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"):
        mode = s["binary.handling.mode"]
        return ({"type": "bytes"} if mode == "bytes" else {"type": "string"}), _binary(mode)
    if base == "date":
        name = "org.apache.kafka.connect.data.Date" if tpm == "connect" else "io.debezium.time.Date"
        return _named("int32", name), _date
    if base == "time":
        p = int(p1) if p1 is not None else 0
        if tpm == "connect":
            return _named("int64", "org.apache.kafka.connect.data.Time"), _time_ms_connect
        if tpm == "adaptive" and p <= 3:
            return _named("int32", "io.debezium.time.Time"), _time_ms
        return _named("int64", "io.debezium.time.MicroTime"), _time_us
    if base == "datetime":
        p = int(p1) if p1 is not None else 0
        if tpm == "connect":
            return _named("int64", "org.apache.kafka.connect.data.Timestamp"), _ts_ms
        if p <= 3:
            return _named("int64", "io.debezium.time.Timestamp"), _ts_ms
        return _named("int64", "io.debezium.time.MicroTimestamp"), _ts_us
    if base == "timestamp":
        p = int(p1) if p1 is not None else 0
        return _named("string", "io.debezium.time.ZonedTimestamp"), _zoned_ts(p)
    if base == "json":
        return _named("string", "io.debezium.data.Json"), _json_text
    if base == "enum":
        return _named("string", "io.debezium.data.Enum"), None
    if base == "set":
        labels = _labels(type_name)
        if labels is None:
            return _named("string", "io.debezium.data.EnumSet"), _join_set
        return _named("string", "io.debezium.data.EnumSet", allowed=",".join(labels)), _join_set
    return {"type": "string"}, None


def _join_set(v: Any) -> Any:
    return ",".join(v)


_LABEL_RE: Final = re.compile(r"'((?:[^']|'')*)'")


def _labels(type_name: str) -> list[str] | None:
    """The labels of ``enum('a','b')`` / ``set('x','y')`` as the server writes the type."""
    inner = type_name[type_name.find("(") + 1 : type_name.rfind(")")]
    if not inner:
        return None
    return [m.replace("''", "'") for m in _LABEL_RE.findall(inner)]


# --- per schema version ----------------------------------------------------------------------------

_PG_SOURCE_SCHEMA: Final[list[dict[str, Any]]] = [
    {"type": "string", "optional": False, "field": "version"},
    {"type": "string", "optional": False, "field": "connector"},
    {"type": "string", "optional": False, "field": "name"},
    {"type": "int64", "optional": False, "field": "ts_ms"},
    {
        "type": "string",
        "optional": True,
        "name": "io.debezium.data.Enum",
        "version": 1,
        "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
        "default": "false",
        "field": "snapshot",
    },
    {"type": "string", "optional": False, "field": "db"},
    {"type": "string", "optional": True, "field": "sequence"},
    {"type": "int64", "optional": True, "field": "ts_us"},
    {"type": "int64", "optional": True, "field": "ts_ns"},
    {"type": "string", "optional": False, "field": "schema"},
    {"type": "string", "optional": False, "field": "table"},
    {"type": "int64", "optional": True, "field": "txId"},
    {"type": "int64", "optional": True, "field": "lsn"},
    {"type": "int64", "optional": True, "field": "xmin"},
    {"type": "string", "optional": True, "field": "origin"},
    {"type": "int64", "optional": True, "field": "origin_lsn"},
]

_MY_SOURCE_SCHEMA: Final[list[dict[str, Any]]] = [
    *_PG_SOURCE_SCHEMA[:9],
    {"type": "string", "optional": True, "field": "table"},
    {"type": "int64", "optional": False, "field": "server_id"},
    {"type": "string", "optional": True, "field": "gtid"},
    {"type": "string", "optional": False, "field": "file"},
    {"type": "int64", "optional": False, "field": "pos"},
    {"type": "int32", "optional": False, "field": "row"},
    {"type": "int64", "optional": True, "field": "thread"},
    {"type": "string", "optional": True, "field": "query"},
]

_TX_BLOCK_SCHEMA: Final[dict[str, Any]] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": False, "field": "total_order"},
        {"type": "int64", "optional": False, "field": "data_collection_order"},
    ],
    "optional": True,
    "name": "event.block",
    "version": 1,
    "field": "transaction",
}

_TX_VALUE_SCHEMA: Final[dict[str, Any]] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "status"},
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": True, "field": "event_count"},
        {
            "type": "array",
            "items": {
                "type": "struct",
                "fields": [
                    {"type": "string", "optional": False, "field": "data_collection"},
                    {"type": "int64", "optional": False, "field": "event_count"},
                ],
                "optional": True,
                "name": "event.collection",
                "version": 1,
            },
            "optional": True,
            "field": "data_collections",
        },
        {"type": "int64", "optional": False, "field": "ts_ms"},
    ],
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataValue",
    "version": 1,
}


def _compile_row(names: list[str], convs: list[Converter | None], table: str) -> Any:
    """``convert(row) -> dict``: every column in order, converted; a row holding every column
    of a table without converters is returned as is (cdc rows are in column order)."""
    if all(c is None for c in convs):
        n = len(names)
        items = [f"    {name!r}: get({name!r})," for name in names]
        return make_function(
            "convert",
            ["row"],
            [f"if len(row) == {n}:", "    return row", "get = row.get", "return {", *items, "}"],
            None,
            f"debezium row {table}",
        )
    consts = {f"_c{j}": c for j, c in enumerate(convs) if c is not None}
    items = []
    for j, (name, conv) in enumerate(zip(names, convs, strict=True)):
        if conv is None:
            items.append(f"    {name!r}: get({name!r}),")
        else:
            items.append(f"    {name!r}: None if (v{j} := get({name!r})) is None else _c{j}(v{j}),")
    return make_function(
        "convert", ["row"], ["get = row.get", "return {", *items, "}"], consts, f"debezium row {table}"
    )


def _with_schema(schema: dict[str, Any]) -> tuple[bytes, bytes]:
    """The bytes before and after a payload in ``{"schema": ..., "payload": ...}``."""
    return b'{"schema":' + orjson.dumps(schema) + b',"payload":', b"}"


def _field(name: str, schema: dict[str, Any], optional: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": schema["type"]}
    if "items" in schema:
        out["items"] = schema["items"]
    if "fields" in schema:
        out["fields"] = schema["fields"]
    out["optional"] = optional
    for k in ("name", "version", "doc", "parameters"):
        if k in schema:
            out[k] = schema[k]
    out["field"] = name
    return out


class _Table:
    """What is fixed for one schema version: topic, converters, schema texts."""

    __slots__ = (
        "topic",
        "names",
        "convs",
        "key_names",
        "key_convs",
        "key_wrap",
        "value_wrap",
        "collection",
        "db",
        "schema_name",
        "table",
        "convert",
        "key_plain",
    )

    def __init__(
        self, sv: SchemaVersion, connector: str, s: dict[str, Any], bigint_string: bool, mariadb: bool = False
    ) -> None:
        db, _, table = sv.name.partition(".")
        self.collection = sv.name
        self.schema_name = db
        self.table = table
        prefix = s["topic.prefix"]
        self.topic = f"{prefix}.{db}.{table}"
        column_of = _pg_column if connector == "postgres" else _my_column
        key = set(sv.key)
        cols: list[_Column] = []
        for c in sv.columns:
            schema, conv = column_of(c.type, s, bigint_string)
            if mariadb and c.type == "json":  # MariaDB's JSON is LONGTEXT to Debezium
                schema = {"type": "string"}
            cols.append(_Column(c.name, _field(c.name, schema, c.name not in key and c.nullable), conv))
        self.names = [c.name for c in cols]
        self.convs = [None if c.conv is _zoned_ts6 else c.conv for c in cols]
        self.convert = _compile_row(self.names, self.convs, sv.name)
        by_name = {c.name: c for c in cols}
        self.key_names = list(sv.key)
        self.key_convs = [by_name[k].conv if k in by_name else None for k in sv.key]
        #: no key column needs converting: cdc's key (columns in key order) is Debezium's
        self.key_plain = all(c is None or c is _zoned_ts6 for c in self.key_convs)
        self.key_wrap: tuple[bytes, bytes] | None = None
        self.value_wrap: tuple[bytes, bytes] | None = None
        if s["schemas.enable"]:
            base = f"{prefix}.{db}.{table}"
            key_fields = [dict(by_name[k].schema, optional=False) for k in sv.key if k in by_name]
            self.key_wrap = _with_schema(
                {"type": "struct", "fields": key_fields, "optional": False, "name": f"{base}.Key"}
            )
            row = {"type": "struct", "fields": [c.schema for c in cols], "optional": True, "name": f"{base}.Value"}
            source_fields = _PG_SOURCE_SCHEMA if connector == "postgres" else _MY_SOURCE_SCHEMA
            source_name = (
                "io.debezium.connector.postgresql.Source"
                if connector == "postgres"
                else "io.debezium.connector.mysql.Source"
            )
            self.value_wrap = _with_schema(
                {
                    "type": "struct",
                    "fields": [
                        {**row, "field": "before"},
                        {**row, "field": "after"},
                        {
                            "type": "struct",
                            "fields": source_fields,
                            "optional": False,
                            "name": source_name,
                            "version": 1,
                            "field": "source",
                        },
                        _TX_BLOCK_SCHEMA,
                        {"type": "string", "optional": False, "field": "op"},
                        {"type": "int64", "optional": True, "field": "ts_ms"},
                        {"type": "int64", "optional": True, "field": "ts_us"},
                        {"type": "int64", "optional": True, "field": "ts_ns"},
                    ],
                    "optional": False,
                    "name": f"{base}.Envelope",
                    "version": 2,
                }
            )

    def row(self, values: dict[str, Any] | None, unchanged: Sequence[str] | None, placeholder: Any) -> dict[str, Any] | None:
        if values is None:
            return None
        out: dict[str, Any] = self.convert(values)
        if unchanged:
            if out is values:
                out = dict(values)
            for name in unchanged:
                if name in out:
                    out[name] = placeholder
        return out

    def key(self, key: dict[str, Any] | None) -> dict[str, Any] | None:
        if key is None:
            return None
        out = {}
        for name, conv in zip(self.key_names, self.key_convs, strict=True):
            v = key.get(name)
            out[name] = conv(v) if v is not None and conv is not None else v
        return out


class DebeziumEncoder:
    """Turns cdc events into Debezium records (see the module docstring). One per sink; not
    thread-safe (a sink is called from one thread)."""

    def __init__(
        self,
        block: dict[str, Any],
        pipeline: str,
        connector: str,
        bigint_string: bool = False,
        facts: dict[str, Any] | None = None,
    ) -> None:
        """``facts``: what the service shares with plugins; the MySQL source puts its server's
        flavor there (``source_flavor:<pipeline>``), read when a table is first seen."""
        self._facts = facts if facts is not None else {}
        self._pipeline = pipeline
        self.connector = "postgres" if connector.startswith("postg") else "mysql"
        self.settings = s = settings_of(block, pipeline, self.connector)
        self.prefix: str = s["topic.prefix"]
        self.schemas_enable: bool = bool(s["schemas.enable"])
        self.tombstones: bool = bool(s["tombstones.on.delete"])
        self.skipped = skipped_ops(str(s["skipped.operations"]))
        self.tx_metadata: bool = bool(s["provide.transaction.metadata"])
        self.placeholder: Any = s["unavailable.value.placeholder"]
        self._bigint_string = bigint_string
        self._tables: dict[SchemaVersion, _Table] = {}
        #: id(cdc source block) -> (the block, JSON pieces around the LSN); see _source_bytes
        self._src_cache: dict[int, tuple[dict[str, Any], list[bytes]]] = {}
        #: (op, ts_ms) -> the value's JSON after ``source`` (no transaction block)
        self._tails: dict[tuple[str, int], bytes] = {}
        self.tx_topic = f"{self.prefix}.transaction"
        # the open transaction when metadata is on: id, counts per collection, total
        self._tx: str | None = None
        self._tx_counts: dict[str, int] = {}
        self._tx_total = 0
        self._tx_wrap = _with_schema(_TX_VALUE_SCHEMA) if self.schemas_enable else None
        self._tx_key_wrap = (
            _with_schema(
                {
                    "type": "struct",
                    "fields": [{"type": "string", "optional": False, "field": "id"}],
                    "optional": False,
                    "name": "io.debezium.connector.common.TransactionMetadataKey",
                    "version": 1,
                }
            )
            if self.schemas_enable
            else None
        )

    def table(self, sv: SchemaVersion) -> _Table:
        t = self._tables.get(sv)
        if t is None:
            mariadb = self._facts.get(f"source_flavor:{self._pipeline}") == "mariadb"
            t = self._tables[sv] = _Table(sv, self.connector, self.settings, self._bigint_string, mariadb)
        return t

    def topic(self, e: ChangeEvent) -> str:
        return self.table(e.schema).topic

    # -- pieces ----------------------------------------------------------------------------

    def _source(self, e: ChangeEvent, t: _Table) -> dict[str, Any]:
        src = e.source
        ts_ms = int(src.get("ts_ms") or 0)
        # a snapshot read's first/last marks travel in ``pos`` (cdc.snapshot._mark_ends)
        snap = (e.pos if isinstance(e.pos, str) else "true") if src.get("snapshot") else "false"
        if self.connector == "postgres":
            lsn = _change_lsn(e)
            tx = src.get("tx")
            return {
                "version": VERSION,
                "connector": "postgresql",
                "name": self.prefix,
                "ts_ms": ts_ms,
                "snapshot": snap,
                "db": src.get("db"),
                "sequence": f'[null,"{lsn}"]' if lsn is not None else None,
                "ts_us": ts_ms * 1000,
                "ts_ns": ts_ms * 1_000_000,
                "schema": t.schema_name,
                "table": t.table,
                "txId": int(tx) if tx not in (None, "") else None,
                "lsn": lsn,
                "xmin": None,
                "origin": None,
                "origin_lsn": None,
            }
        snapshot = bool(src.get("snapshot"))
        pos = e.pos if isinstance(e.pos, tuple) and not snapshot else (src.get("pos"), 0)
        gtid = src.get("gtid")
        return {
            "version": VERSION,
            "connector": "mysql",
            "name": self.prefix,
            "ts_ms": ts_ms,
            "snapshot": snap,
            "db": t.schema_name,
            "sequence": None,
            "ts_us": ts_ms * 1000,
            "ts_ns": ts_ms * 1_000_000,
            "table": t.table,
            "server_id": 0 if snapshot else src.get("server_id") or 0,
            # MariaDB GTIDs (domain-server-sequence) are not written by the MySQL connector
            "gtid": gtid if isinstance(gtid, str) and ":" in gtid else None,
            "file": src.get("file") or "",
            "pos": pos[0] or 0,
            "row": pos[1],
            "thread": None,
            "query": None,
        }

    def _source_bytes(self, e: ChangeEvent, t: _Table) -> bytes:
        """The ``source`` block's JSON. PostgreSQL blocks differ per change only by the LSN: the
        text around it is cached per cdc source block (shared by a transaction's events of one
        table) and the LSN spliced in."""
        if self.connector != "postgres":
            return orjson.dumps(self._source(e, t))
        if isinstance(e.pos, str):  # a marked snapshot read (first/last): rare
            return orjson.dumps(self._source(e, t))
        lsn = _change_lsn(e)
        src = e.source
        cache = self._src_cache
        entry = cache.get(id(src))
        if entry is None or entry[0] is not src:
            if len(cache) > 256:
                cache.clear()
            e_probe = ChangeEvent(e.id, e.op, e.ts_ms, src, e.transaction, e.schema, None, None, None, None, None, _SENTINEL)
            parts = orjson.dumps(self._source(e_probe, t)).split(_SENTINEL_B)
            entry = cache[id(src)] = (src, parts)
        if lsn is None or len(entry[1]) != 3:
            return orjson.dumps(self._source(e, t))
        lsn_b = b"%d" % lsn
        parts = entry[1]
        return parts[0] + lsn_b + parts[1] + lsn_b + parts[2]

    def _tx_id(self, e: ChangeEvent) -> str:
        src = e.source
        if self.connector == "postgres":
            return f"{src.get('tx')}:{_change_lsn(e)}"
        gtid = src.get("gtid")
        return str(gtid) if gtid else f"file={src.get('file')},pos={src.get('pos')}"

    def _has_tx(self, e: ChangeEvent) -> bool:
        """Debezium's MySQL connector writes transaction metadata only with MySQL GTIDs."""
        if self.connector == "postgres":
            return True
        gtid = e.source.get("gtid")
        return isinstance(gtid, str) and ":" in gtid

    def _tx_end_id(self, e: ChangeEvent) -> str:
        """Debezium's END id: PostgreSQL names it by the commit's LSN (cdc's transaction id)."""
        if self.connector == "postgres" and isinstance(e.pos, tuple):
            return f"{e.source.get('tx')}:{e.pos[1]}"
        return self._tx_id(e)

    def _wrap(self, payload: Any, wrap: tuple[bytes, bytes] | None) -> bytes:
        body = orjson.dumps(payload)
        return body if wrap is None else wrap[0] + body + wrap[1]

    def _tx_record(self, status: str, tx_id: str, ts_ms: int, event: ChangeEvent) -> Record:
        payload: dict[str, Any]
        if status == "BEGIN":
            payload = {"status": "BEGIN", "id": tx_id, "event_count": None, "data_collections": None, "ts_ms": ts_ms}
        else:
            payload = {
                "status": "END",
                "id": tx_id,
                "event_count": self._tx_total,
                "data_collections": [
                    {"data_collection": k, "event_count": v} for k, v in self._tx_counts.items()
                ],
                "ts_ms": ts_ms,
            }
        return Record(
            self.tx_topic,
            self._wrap({"id": tx_id}, self._tx_key_wrap),
            self._wrap(payload, self._tx_wrap),
            None,
            event,
        )

    # -- the records of events ----------------------------------------------------------------

    def records(self, events: Sequence[ChangeEvent]) -> list[Record]:
        """The records of ``events`` in order (possibly none for an event: skipped ops)."""
        out: list[Record] = []
        append = out.append
        placeholder = self.placeholder
        tails = self._tails
        dumps = orjson.dumps
        for e in events:
            op = e.op
            t = self._tables.get(e.schema) or self.table(e.schema)
            txn = e.transaction
            tx_block = None
            if self.tx_metadata and txn is not None and self._has_tx(e):
                if self._tx != txn[0] or txn[1] == 0:
                    self._tx = txn[0]
                    self._tx_counts = {}
                    self._tx_total = 0
                    append(self._tx_record("BEGIN", self._tx_id(e), int(e.source.get("ts_ms") or 0), e))
                if op not in self.skipped:
                    self._tx_total += 1
                    n = self._tx_counts.get(t.collection, 0) + 1
                    self._tx_counts[t.collection] = n
                    tx_block = {"id": self._tx_id(e), "total_order": self._tx_total, "data_collection_order": n}
            if op not in self.skipped:
                if op == "t":
                    key = None
                else:
                    key_doc = e.key if t.key_plain else t.key(e.key)
                    key = None if key_doc is None else self._wrap(key_doc, t.key_wrap)
                ts = e.ts_ms
                if tx_block is None:
                    tail = tails.get((op, ts))
                    if tail is None:
                        if len(tails) > 64:
                            tails.clear()
                        tail = tails[(op, ts)] = _tail(None, op, ts)
                else:
                    tail = _tail(tx_block, op, ts)
                before = e.before
                after = e.after
                body = b"".join(
                    (
                        b'{"before":',
                        b"null" if before is None else dumps(t.row(before, None, placeholder)),
                        b',"after":',
                        b"null" if after is None else dumps(t.row(after, e.unchanged, placeholder)),
                        b',"source":',
                        self._source_bytes(e, t),
                        tail,
                    )
                )
                wrap = t.value_wrap
                value = body if wrap is None else wrap[0] + body + wrap[1]
                headers: list[tuple[str, bytes]] | None = None
                kc = e.key_change
                if kc is not None:
                    if op == "d" and "to" in kc:
                        headers = [("__debezium.newkey", self._wrap(t.key(kc["to"]), t.key_wrap))]
                    elif op == "c" and "from" in kc:
                        headers = [("__debezium.oldkey", self._wrap(t.key(kc["from"]), t.key_wrap))]
                append(Record(t.topic, key, value, headers, e))
                if op == "d" and self.tombstones:  # a key change's tombstone keeps its header
                    append(Record(t.topic, key, None, headers, e))
            if self.tx_metadata and txn is not None and txn[2] and self._has_tx(e):
                append(self._tx_record("END", self._tx_end_id(e), int(e.source.get("ts_ms") or 0), e))
                self._tx = None
        return out


    def values(self, events: Sequence[ChangeEvent]) -> list[bytes]:
        """The record values of ``events`` for sinks that carry values only (file lines,
        webhook items): no tombstones, no transaction records."""
        tx_topic = self.tx_topic
        return [r.value for r in self.records(events) if r.value is not None and r.topic != tx_topic]


    def message(self, e: ChangeEvent) -> tuple[bytes, bytes | None] | None:
        """(value, key) of an event's own record, for message sinks that carry one message
        per event (nats, redis, rabbitmq: no tombstones there); ``None`` for a skipped op."""
        tx_topic = self.tx_topic
        for r in self.records((e,)):
            if r.value is not None and r.topic != tx_topic:
                return r.value, r.key
        return None


_SENTINEL: Final = 987654321987654321
_SENTINEL_B: Final = b"987654321987654321"


def _tail(tx_block: dict[str, Any] | None, op: str, ts: int) -> bytes:
    """The value's JSON after ``source``, closing brace included."""
    return b',"transaction":' + orjson.dumps(tx_block) + b',"op":%s,"ts_ms":%d,"ts_us":%d,"ts_ns":%d}' % (
        orjson.dumps(op),
        ts,
        ts * 1000,
        ts * 1_000_000,
    )


def _change_lsn(e: ChangeEvent) -> int | None:
    """A PostgreSQL change's own LSN: ``pos`` (an int, or (change, commit) on a
    transaction's last event), else the source block's LSN."""
    pos = e.pos
    if isinstance(pos, tuple):
        pos = pos[0]
    return pos if isinstance(pos, int) else _lsn_int(e.source.get("lsn"))


def _lsn_int(text: Any) -> int | None:
    if not text or not isinstance(text, str) or "/" not in text:
        return None
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)
