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


def test_spliced_stream_encoding_is_the_plain_encoding() -> None:
    """Streamed events (two transactions, two tables, keyless, unchanged, key changes, a
    transform's record, JSON fragments) encode in chunks exactly as one by one."""
    from cdc.events import TransformedEvent

    other = SchemaVersion.build(TableSchema("public.u", (Column("id", "int4"),), ()), 1)
    tx1 = {"connector": "postgres", "tx": "7", "lsn": "0/3", "snapshot": False}
    tx1u = {"connector": "postgres", "tx": "7", "lsn": "0/3", "snapshot": False, "table": "u"}
    tx2 = {"connector": "postgres", "tx": "8", "lsn": "0/9", "snapshot": False}
    out: list[ChangeEvent] = []
    for i in range(600):
        src, sv = (tx1, SV) if i < 250 else (tx1u, other) if i < 300 else (tx2, SV)
        tx = ("0/3" if i < 300 else "0/9", i, i in (299, 599))
        after = {"id": i, "v": orjson.Fragment(b'{"a": [1, 2.50]}') if i % 7 == 0 else 'é"\\\n'}
        key = None if sv is other else {"id": i}
        out.append(ChangeEvent(f"pg:{tx[0]}:{i}", "cu"[i % 2], 5 + i, src, tx, sv, key, None if i % 2 == 0 else {"id": i}, after))
    out[10] = ChangeEvent("pg:0/3:10", "u", 6, tx1, ("0/3", 10, False), SV, {"id": 1}, {"id": 1}, {"id": 1, "v": "x"}, ["v"])
    out[11] = ChangeEvent("pg:0/3:11", "d", 6, tx1, ("0/3", 11, False), SV, {"id": 2}, {"id": 2}, None, None, {"to": {"id": 3}})
    t = TransformedEvent("pg:0/3:12", "c", 6, tx1, ("0/3", 12, False), SV, {"id": 4}, None, {"id": 4})
    t.value = {"only": "the record"}
    out[12] = t
    t2 = TransformedEvent("pg:0/3:13", "c", 6, tx1, ("0/3", 13, False), SV, {"id": 5}, None, {"id": 5})
    t2.dest = "elsewhere"
    out[13] = t2
    plain = b"\n".join(encode_event(e) for e in out)
    assert encode_lines(out) == plain
    assert b"".join(encode_line_chunks(out)) == plain + b"\n"
    assert encode_lines(out[240:320], b",") == b",".join(encode_event(e) for e in out[240:320])
