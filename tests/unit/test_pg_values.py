"""The PostgreSQL text-to-JSON value mapping (CONTRACT.md section 4, "Values").

Inputs are the text PostgreSQL writes under the service's session settings (TimeZone=UTC,
DateStyle=ISO, IntervalStyle=iso_8601, extra_float_digits=3, bytea_output=hex); the last tests
run the captured pgoutput rows through the converters and check orjson's output byte for byte.
"""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from sources.postgres import values as V
from sources.postgres.pgoutput import Insert, Relation, Type, decode
from sources.postgres.values import (
    ARRAY_ELEMENT_OIDS,
    BUILTIN_TYPE_OIDS,
    array_converter,
    converter_for,
)


def conv(oid: int, text: bytes, **kw: Any) -> Any:
    return converter_for(oid, **kw)(text)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("oid", [V.INT2, V.INT4, V.OID])
def test_small_integers_are_ints(oid: int) -> None:
    assert conv(oid, b"-32768") == -32768
    assert conv(oid, b"4294967295") == 4294967295
    assert type(conv(oid, b"0")) is int


def test_int8_is_an_exact_int_or_a_string_when_asked() -> None:
    assert conv(V.INT8, b"9223372036854775807") == 9223372036854775807
    assert dumps(conv(V.INT8, b"-9223372036854775808")) == b"-9223372036854775808"
    assert conv(V.INT8, b"9223372036854775807", bigint_as_string=True) == "9223372036854775807"
    # bigint_as_string is for int8 only
    assert conv(V.INT4, b"7", bigint_as_string=True) == 7
    assert converter_for(1016, bigint_as_string=True)(b"{1,NULL}") == ["1", None]


@pytest.mark.parametrize(
    "text",
    [b"19.90", b"NaN", b"Infinity", b"-Infinity", b"0.000", b"-0.0000001",
     b"123456789012345678901234567890.000000000000000000001"],
)  # fmt: skip
def test_numeric_is_its_exact_text(text: bytes) -> None:
    assert conv(V.NUMERIC, text) == text.decode()


@pytest.mark.parametrize("oid", [V.FLOAT4, V.FLOAT8])
def test_floats_are_numbers_and_specials_are_strings(oid: int) -> None:
    assert conv(oid, b"1.1") == 1.1
    assert conv(oid, b"0.1") == 0.1
    assert conv(oid, b"1e+100") == 1e100
    assert conv(oid, b"1.23e-05") == 1.23e-05
    assert conv(oid, b"3.4028235e+38") == 3.4028235e38
    neg_zero = conv(oid, b"-0")
    assert neg_zero == 0.0 and math.copysign(1.0, neg_zero) == -1.0
    assert dumps(neg_zero) == b"-0.0"
    assert dumps(conv(oid, b"1e+100")) == b"1e+100"
    assert conv(oid, b"NaN") == "NaN"
    assert conv(oid, b"Infinity") == "Infinity"
    assert conv(oid, b"-Infinity") == "-Infinity"


def test_float8_shortest_text_round_trips_exactly() -> None:
    rng = random.Random(5)
    for _ in range(1000):
        x = struct.unpack("<d", rng.randbytes(8))[0]
        if math.isfinite(x):
            text = repr(x).encode()  # same shortest-exact digits as extra_float_digits>0
            assert conv(V.FLOAT8, text) == x


# --- booleans, text, bytes, bits ----------------------------------------------------------------


def test_booleans() -> None:
    assert conv(V.BOOL, b"t") is True
    assert conv(V.BOOL, b"f") is False


@pytest.mark.parametrize(
    "oid",
    [V.TEXT, V.VARCHAR, V.BPCHAR, V.NAME, V.CHAR, V.UUID, V.INET, V.CIDR, V.MACADDR,
     V.MACADDR8, V.XML, V.BIT, V.VARBIT, V.DATE, V.INTERVAL, V.MONEY],
)  # fmt: skip
def test_text_like_types_are_strings(oid: int) -> None:
    assert conv(oid, "héllo ✓".encode()) == "héllo ✓"
    assert conv(oid, b"") == ""


def test_bpchar_keeps_its_padding() -> None:
    assert conv(V.BPCHAR, b"ab   ") == "ab   "


def test_bit_strings_are_kept_most_significant_first() -> None:
    assert conv(V.BIT, b"0000001011") == "0000001011"
    assert conv(V.VARBIT, b"") == ""


@pytest.mark.parametrize(
    ("text", "raw"),
    [(b"\\x", b""), (b"\\x00ff10", b"\x00\xff\x10"), (b"\\xDEADBEEF", b"\xde\xad\xbe\xef")],
)
def test_bytea_hex_becomes_base64(text: bytes, raw: bytes) -> None:
    out = conv(V.BYTEA, text)
    assert out == base64.b64encode(raw).decode() and base64.b64decode(out) == raw


def test_bytea_escape_output_is_understood_too() -> None:
    assert base64.b64decode(conv(V.BYTEA, b"a\\\\b\\000\\377")) == b"a\\b\x00\xff"


def test_unknown_and_other_types_are_their_text() -> None:
    for oid in (V.MONEY, 3904, 3910, 600, 603, 16_999, 0):  # money, ranges, geometry, user types
        assert conv(oid, b"[1,10)") == "[1,10)"
    assert conv(99_999, b'"a"=>"1"') == '"a"=>"1"'  # hstore


# --- dates and times ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [b"2026-11-28", b"infinity", b"-infinity", b"0044-03-15 BC", b"12345-01-01"]
)
def test_dates_are_their_iso_text(text: bytes) -> None:
    assert conv(V.DATE, text) == text.decode()


@pytest.mark.parametrize(
    ("text", "out"),
    [
        (b"13:45:01.123456", "13:45:01.123456"),
        (b"13:45:01.5", "13:45:01.500000"),
        (b"13:45:01.12345", "13:45:01.123450"),
        (b"13:45:01", "13:45:01.000000"),
        (b"00:00:00", "00:00:00.000000"),
        (b"24:00:00", "24:00:00.000000"),
    ],
)
def test_time_always_has_six_fractional_digits(text: bytes, out: str) -> None:
    assert conv(V.TIME, text) == out


@pytest.mark.parametrize(
    ("text", "out"),
    [
        (b"13:45:01.123456+02", "13:45:01.123456+02:00"),
        (b"13:45:01.5-07", "13:45:01.500000-07:00"),
        (b"13:45:01+05:30", "13:45:01.000000+05:30"),
        (b"13:45:01+00", "13:45:01.000000+00:00"),
        (b"00:00:00.000001-03:00:15", "00:00:00.000001-03:00:15"),
        (b"23:59:59.9+14", "23:59:59.900000+14:00"),
    ],
)
def test_timetz_normalises_the_offset(text: bytes, out: str) -> None:
    assert conv(V.TIMETZ, text) == out


@pytest.mark.parametrize(
    ("text", "out"),
    [
        (b"2026-11-28 13:45:01.123456", "2026-11-28T13:45:01.123456"),
        (b"2026-11-28 13:45:01.7", "2026-11-28T13:45:01.700000"),
        (b"2026-11-28 13:45:01", "2026-11-28T13:45:01.000000"),
        (b"0001-01-01 00:00:00", "0001-01-01T00:00:00.000000"),
        (b"infinity", "infinity"),
        (b"-infinity", "-infinity"),
        (b"0044-03-15 12:00:00 BC", "0044-03-15 12:00:00 BC"),
        (b"0044-03-15 12:00:00.5 BC", "0044-03-15 12:00:00.5 BC"),
    ],
)
def test_timestamp_is_iso_with_six_fractional_digits(text: bytes, out: str) -> None:
    assert conv(V.TIMESTAMP, text) == out


@pytest.mark.parametrize(
    ("text", "out"),
    [
        (b"2026-11-28 12:45:01.123+00", "2026-11-28T12:45:01.123000Z"),
        (b"2026-11-28 12:45:01.123456+00", "2026-11-28T12:45:01.123456Z"),
        (b"2026-11-28 12:45:01+00", "2026-11-28T12:45:01.000000Z"),
        (b"infinity", "infinity"),
        (b"-infinity", "-infinity"),
        (b"0044-03-15 12:00:00+00 BC", "0044-03-15 12:00:00+00 BC"),
        # A session not in UTC still yields UTC (slow path).
        (b"2026-11-28 13:45:01.5+01", "2026-11-28T12:45:01.500000Z"),
        (b"2026-11-28 05:15:01-07:30", "2026-11-28T12:45:01.000000Z"),
    ],
)
def test_timestamptz_is_utc_with_z(text: bytes, out: str) -> None:
    assert conv(V.TIMESTAMPTZ, text) == out


@pytest.mark.parametrize("text", [b"P1DT2H3M4.5S", b"P-1Y-2M3DT-4H", b"PT0S", b"P1Y"])
def test_interval_is_the_iso_8601_text(text: bytes) -> None:
    assert conv(V.INTERVAL, text) == text.decode()


# --- json ---------------------------------------------------------------------------------------


def test_json_is_embedded_verbatim_on_one_line() -> None:
    text = b'{\n  "a": 12345678901234567890.123456789,\n\t"b": [1, 2.50, -0, 1e400]\r\n}'
    out = dumps({"j": conv(V.JSON, text)})
    assert out == b'{"j":{   "a": 12345678901234567890.123456789,  "b": [1, 2.50, -0, 1e400]  }}'
    assert b"\n" not in out and b"\r" not in out and b"\t" not in out
    assert json.loads(out)["j"]["b"][1] == 2.5


def test_json_keeps_escaped_control_characters_in_strings() -> None:
    text = b'{"s": "line\\nbreak\\ttab"}'
    out = dumps(conv(V.JSON, text))
    assert out == text and json.loads(out) == {"s": "line\nbreak\ttab"}


def test_jsonb_is_embedded_verbatim() -> None:
    assert dumps(conv(V.JSONB, b'{"a": 1.50, "b": 123456789012345678901234567890}')) == (
        b'{"a": 1.50, "b": 123456789012345678901234567890}'
    )
    assert dumps([conv(V.JSONB, b"null"), conv(V.JSONB, b'"x"')]) == b'[null,"x"]'


# --- arrays -------------------------------------------------------------------------------------


def text_array(text: bytes) -> Any:
    return array_converter(bytes.decode)(text)


@pytest.mark.parametrize(
    ("text", "out"),
    [
        (b"{}", []),
        (b"{x}", ["x"]),
        (b"{a,b,c}", ["a", "b", "c"]),
        (b'{"a b","c\\"d",NULL,"NULL","",x}', ["a b", 'c"d', None, "NULL", "", "x"]),
        (b'{"back\\\\slash","{br,ace}"}', ["back\\slash", "{br,ace}"]),
        (b"{{a,b},{c,NULL}}", [["a", "b"], ["c", None]]),
        (b'{{"x,y"},{"}"}}', [["x,y"], ["}"]]),
        (b"{{{1,2}},{{3,4}}}", [[["1", "2"]], [["3", "4"]]]),
        (b"[0:1]={7,8}", ["7", "8"]),
        (b"[1:2][3:4]={{a,b},{c,d}}", [["a", "b"], ["c", "d"]]),
        (b'{"\xc3\xa9t\xc3\xa9",\xe2\x9c\x93}', ["été", "✓"]),
        (b"{null,Null}", ["null", "Null"]),  # only NULL is SQL NULL
    ],
)
def test_array_text_format(text: bytes, out: Any) -> None:
    assert text_array(text) == out


def test_arrays_apply_the_element_converter() -> None:
    assert conv(1007, b"{1,2,NULL}") == [1, 2, None]
    assert conv(1007, b"{{1,2},{3,NULL}}") == [[1, 2], [3, None]]
    assert conv(1000, b"{t,f}") == [True, False]
    assert conv(1022, b"{1.5,NaN,-Infinity}") == [1.5, "NaN", "-Infinity"]
    assert conv(1231, b"{1.50,NaN}") == ["1.50", "NaN"]
    assert conv(1185, b'{"2026-11-28 12:45:01.5+00",infinity}') == [
        "2026-11-28T12:45:01.500000Z",
        "infinity",
    ]
    assert conv(1001, b'{"\\\\x01ff","\\\\x",NULL}') == ["Af8=", "", None]
    assert dumps(conv(3807, b'{"{\\"k\\": [1, \\"v\\"]}",NULL}')) == b'[{"k": [1, "v"]},null]'
    assert dumps(conv(199, b'{"{\\"a\\":\n 1.10}"}')) == b'[{"a":  1.10}]'


def test_box_arrays_use_the_semicolon_delimiter() -> None:
    assert conv(1020, b"{(1,1),(0,0);(3,3),(2,2)}") == ["(1,1),(0,0)", "(3,3),(2,2)"]
    assert array_converter(bytes.decode, ";")(b'{"a;b";c}') == ["a;b", "c"]


def test_array_element_table_covers_common_types() -> None:
    assert ARRAY_ELEMENT_OIDS[1007] == V.INT4
    assert ARRAY_ELEMENT_OIDS[1016] == V.INT8
    assert ARRAY_ELEMENT_OIDS[3807] == V.JSONB
    assert ARRAY_ELEMENT_OIDS[2951] == V.UUID
    assert 22 not in ARRAY_ELEMENT_OIDS and 30 not in ARRAY_ELEMENT_OIDS  # int2vector, oidvector


def test_builtin_type_names_resolve_domains_from_type_messages() -> None:
    assert BUILTIN_TYPE_OIDS["int4"] == V.INT4
    assert BUILTIN_TYPE_OIDS["timestamptz"] == V.TIMESTAMPTZ
    assert BUILTIN_TYPE_OIDS["_int4"] == 1007
    assert BUILTIN_TYPE_OIDS["_jsonb"] == 3807
    assert len(BUILTIN_TYPE_OIDS) == 62


def _render(value: Any) -> bytes:
    """PostgreSQL's array_out for nested lists of str/None (a reference for the parser)."""
    if isinstance(value, list):
        return b"{" + b",".join(_render(v) for v in value) + b"}"
    if value is None:
        return b"NULL"
    raw: bytes = value.encode()
    if raw == b"" or raw.upper() == b"NULL" or any(c in raw for c in b'{},"\\ \t\n'):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return raw


def test_array_parser_round_trips_random_arrays() -> None:
    rng = random.Random(1)
    alphabet = ["a", "Z", " ", ",", '"', "\\", "{", "}", "é", "NULL", "", "1", "\n"]
    for _ in range(2000):
        dims = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]

        def build(level: int, dims: list[int] = dims) -> Any:
            if level == len(dims):
                if rng.random() < 0.15:
                    return None
                return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))
            return [build(level + 1) for _ in range(dims[level])]

        value = build(0)
        assert text_array(_render(value)) == value


def test_malformed_array_raises_value_error() -> None:
    for bad in (b"{a,b", b'{"a}', b"x", b"{{a}", b"[1:2]{a}"):
        with pytest.raises(ValueError):
            text_array(bad)


# --- end to end from captured pgoutput ---------------------------------------------------------

DATA = Path(__file__).resolve().parent.parent / "data" / "pgoutput"


def captured_types_rows() -> tuple[Relation, dict[int, Type], list[list[Any]]]:
    blob = (DATA / "messages.bin").read_bytes()
    msgs = []
    pos = 0
    while pos < len(blob):
        (size,) = struct.unpack_from(">I", blob, pos)
        msgs.append(decode(blob[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    rel = next(m for m in msgs if isinstance(m, Relation) and m.name == "cdc_types")
    types = {m.oid: m for m in msgs if isinstance(m, Type)}
    rows = [m.new for m in msgs if isinstance(m, Insert) and m.relid == rel.relid]
    return rel, types, rows


def column_converters(rel: Relation, types: dict[int, Type]) -> list[Any]:
    """What the I/O layer does, with the catalog facts of this capture spelled out."""
    out = []
    for col in rel.columns:
        t = types.get(col.type_oid)
        if t is None:
            out.append(converter_for(col.type_oid))
        elif t.namespace == "":  # a domain: its Type message names the built-in base type
            out.append(converter_for(BUILTIN_TYPE_OIDS[t.name]))
        elif t.name.startswith("_"):  # the enum's array type
            out.append(array_converter(converter_for(V.TEXT)))
        else:  # the enum
            out.append(converter_for(V.TEXT))
    return out


def convert_row(names: list[str], convs: list[Any], row: list[Any]) -> dict[str, Any]:
    return {n: (None if v is None else c(v)) for n, c, v in zip(names, convs, row, strict=True)}


EXPECTED_ROW_1 = (
    b'{"id":1,"c_int2":-32768,"c_int8":9223372036854775807,"c_oid":4294967295,'
    b'"c_num":"19.90","c_num_any":"123456789012345678901234567890.000000000000000000001",'
    b'"c_f4":1.1,"c_f8":0.1,"c_bool":true,'
    b'"c_text":"h\xc3\xa9llo, \\"world\\"","c_varchar":"varchar","c_bpchar":"ab   ",'
    b'"c_name":"a_name","c_char":"x","c_uuid":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",'
    b'"c_inet":"192.168.0.1/24","c_cidr":"10.0.0.0/8","c_mac":"08:00:2b:01:02:03",'
    b'"c_mac8":"08:00:2b:01:02:03:04:05","c_xml":"<a>x</a>",'
    b'"c_bytea":"AP8Q","c_bit":"0000001011","c_varbit":"101",'
    b'"c_date":"2026-11-28","c_time":"13:45:01.123456","c_time3":"13:45:01.500000",'
    b'"c_timetz":"13:45:01.123456+02:00",'
    b'"c_ts":"2026-11-28T13:45:01.123456","c_ts0":"2026-11-28T13:45:02.000000",'
    b'"c_tstz":"2026-11-28T12:45:01.123000Z","c_interval":"P1DT2H3M4.5S",'
    b'"c_json":{   "a": 12345678901234567890.123456789,  "b": [1, 2.50, -0]  },'
    b'"c_jsonb":{"a": [true, null], "b": 1.50},'
    b'"c_money":"$1,234.50","c_range":"[1,10)",'
    b'"c_tstzrange":"[\\"2026-01-01 00:00:00+00\\",\\"2027-01-01 00:00:00+00\\")",'
    b'"c_point":"(1.5,2)","c_box":"(1,1),(0,0)","c_mood":"happy","c_posint":42,'
    b'"c_int4arr":[1,2,3],"c_textarr":["a b","c\\"d",null,"NULL","","x"],'
    b'"c_int2d":[[1,2],[3,null]],"c_moodarr":["sad","happy"],'
    b'"c_boxarr":["(1,1),(0,0)","(3,3),(2,2)"],"c_bytea_arr":["Af8=",null],'
    b'"c_jsonb_arr":[{"k": [1, "v"]}]}'
)

EXPECTED_ROW_2 = (
    b'{"id":2,"c_int2":0,"c_int8":-9223372036854775808,"c_oid":0,'
    b'"c_num":"NaN","c_num_any":"Infinity","c_f4":"NaN","c_f8":"-Infinity","c_bool":false,'
    b'"c_text":"","c_varchar":"","c_bpchar":"     ","c_name":"","c_char":"","c_uuid":null,'
    b'"c_inet":"::1","c_cidr":"2001:db8::/32","c_mac":null,"c_mac8":null,"c_xml":null,'
    b'"c_bytea":"","c_bit":"0000000000","c_varbit":"",'
    b'"c_date":"0044-03-15 BC","c_time":"00:00:00.000000","c_time3":"23:59:59.000000",'
    b'"c_timetz":"13:45:01.000000+05:30",'
    b'"c_ts":"infinity","c_ts0":"0044-03-15 12:00:00 BC","c_tstz":"-infinity",'
    b'"c_interval":"P-1Y-2M3DT-4H","c_json":1e400,"c_jsonb":null,'
    b'"c_money":"-$0.01","c_range":"empty","c_tstzrange":null,"c_point":null,"c_box":null,'
    b'"c_mood":"sad","c_posint":null,"c_int4arr":[],"c_textarr":[],"c_int2d":[7,8],'
    b'"c_moodarr":null,"c_boxarr":null,"c_bytea_arr":[],"c_jsonb_arr":null}'
)


def test_captured_rows_convert_to_the_contract_json() -> None:
    rel, types, rows = captured_types_rows()
    names = [c.name for c in rel.columns]
    convs = column_converters(rel, types)
    assert orjson.dumps(convert_row(names, convs, rows[0])) == EXPECTED_ROW_1
    assert orjson.dumps(convert_row(names, convs, rows[1])) == EXPECTED_ROW_2


def test_captured_edge_row_converts() -> None:
    rel, types, rows = captured_types_rows()
    names = [c.name for c in rel.columns]
    row = convert_row(names, column_converters(rel, types), rows[2])
    set_cols = {k: v for k, v in row.items() if v is not None}
    assert set_cols == {
        "id": 3,
        "c_f4": -0.0,
        "c_f8": 1e100,
        "c_num_any": "0.000",
        "c_date": "infinity",
        "c_tstz": "0044-03-15 12:00:00+00 BC",
        "c_time": "24:00:00.000000",
        "c_timetz": "00:00:00.000001-03:00:15",
    }
    out = orjson.dumps(set_cols)
    assert b'"c_f4":-0.0,"c_f8":1e+100' in out
    all_null = convert_row(names, column_converters(rel, types), rows[3])
    assert orjson.dumps(all_null).count(b"null") == 46
