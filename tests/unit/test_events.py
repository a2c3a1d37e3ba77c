"""Event encoding: the spliced encoding of snapshot reads is byte-identical to the plain one."""

from __future__ import annotations

import orjson

from cdc.events import ChangeEvent, encode_event, encode_line_chunks, encode_lines
from cdc.schema import Column, SchemaVersion, TableSchema

SV = SchemaVersion.build(TableSchema("public.t", (Column("id", "int4"), Column("v", "text")), ("id",)), 3)


def _events() -> list[ChangeEvent]:
    block_a = {"connector": "postgres", "tx": None, "lsn": "0/1", "snapshot": True, "snapshot_id": "s1"}
    block_b = {"connector": "postgres", "tx": None, "lsn": "0/2", "snapshot": True, "snapshot_id": "s1"}
    stream = {"connector": "postgres", "tx": "7", "lsn": "0/3", "snapshot": False}
    out = [ChangeEvent(f"s1:0:t:{i}", "r", 5, block_a, None, SV, {"id": i}, None, {"id": i, "v": 'é"\\\n'}) for i in range(300)]
    out += [ChangeEvent(f"s1:1:t:{i}", "r", 6, block_b, None, SV, None, None, {"id": i, "v": None}) for i in range(3)]
    out.append(ChangeEvent("pg:0/3:0", "u", 6, stream, ("0/3", 0, False), SV, {"id": 1}, {"id": 1}, {"id": 1, "v": "x"}, ["v"]))
    out.append(ChangeEvent("pg:0/3:1", "d", 6, stream, ("0/3", 1, True), SV, {"id": 2}, {"id": 2}, None, None, {"to": {"id": 3}}))
    out += [ChangeEvent(f"s1:2:t:{i}", "r", 7, block_b, None, SV, {"id": i}, None, {"id": i, "v": "z"}) for i in range(2)]
    return out


def test_spliced_snapshot_encoding_is_the_plain_encoding() -> None:
    events = _events()
    plain = b"\n".join(encode_event(e) for e in events)
    assert encode_lines(events) == plain
    assert b"".join(encode_line_chunks(events)) == plain + b"\n"
    assert encode_lines(events[290:310], b",") == b",".join(encode_event(e) for e in events[290:310])
    first = orjson.loads(plain.split(b"\n")[0])
    assert list(first) == ["id", "op", "ts_ms", "source", "transaction", "schema", "key", "before", "after"]
