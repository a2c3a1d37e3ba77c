"""The Debezium encoder (cdc/debezium.py) on hand-made events: the record sequence Debezium
writes (tombstones, skipped operations, key-change headers, transaction records), the TOAST
placeholder, the JsonConverter envelope, and the pipeline-file checks of `format: debezium`.
Value mappings are judged by real Debezium in tests/integration/test_debezium_*.py."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.config_loader import load_config
from cdc.debezium import DebeziumEncoder, Record
from cdc.errors import ConfigError
from cdc.events import ChangeEvent
from cdc.schema import Column, SchemaVersion, TableSchema

SV = SchemaVersion.build(
    TableSchema(
        "public.items",
        (Column("id", "int4", False), Column("big", "text"), Column("at", "timestamp(3)")),
        ("id",),
    ),
    1,
)
SRC = {"connector": "postgres", "pipeline": "shop", "db": "shop", "schema": "public", "table": "items",
       "ts_ms": 1000, "tx": "42", "lsn": "0/100", "snapshot": False}  # fmt: skip


def _event(op: str, seq: int, key: Any, before: Any, after: Any, last: bool = False, **kw: Any) -> ChangeEvent:
    return ChangeEvent(f"pg:0/100:{seq}", op, 2000, SRC, ("0/100", seq, last), SV, key, before, after,
                       kw.get("unchanged"), kw.get("key_change"), 200 + seq)  # fmt: skip


def _value(r: Record) -> Any:
    assert r.value is not None
    return orjson.loads(r.value)


def test_insert_is_one_record_with_the_connectors_shape() -> None:
    enc = DebeziumEncoder({}, "shop", "postgres")
    (r,) = enc.records([_event("c", 0, {"id": 1}, None, {"id": 1, "big": "x", "at": "2026-11-28T13:45:01.123000"})])
    assert r.topic == "shop.public.items" and r.key == b'{"id":1}' and r.headers is None
    v = _value(r)
    assert v["after"] == {"id": 1, "big": "x", "at": 1795873501123}
    assert v["source"]["connector"] == "postgresql" and v["source"]["lsn"] == 200
    assert v["source"]["txId"] == 42 and v["op"] == "c" and v["transaction"] is None
    assert list(v) == ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]


def test_delete_is_followed_by_a_tombstone_unless_turned_off() -> None:
    d = _event("d", 0, {"id": 1}, {"id": 1}, None, True)
    on = DebeziumEncoder({}, "shop", "postgres").records([d])
    assert [(r.key, r.value is None) for r in on] == [(b'{"id":1}', False), (b'{"id":1}', True)]
    assert _value(on[0])["before"] == {"id": 1, "big": None, "at": None}
    off = DebeziumEncoder({"tombstones.on.delete": False}, "shop", "postgres").records([d])
    assert len(off) == 1


def test_truncates_are_skipped_by_default_and_kept_with_none() -> None:
    t = _event("t", 0, None, None, None, True)
    assert DebeziumEncoder({}, "shop", "postgres").records([t]) == []
    (r,) = DebeziumEncoder({"skipped.operations": "none"}, "shop", "postgres").records([t])
    assert r.key is None and _value(r)["op"] == "t"
    assert DebeziumEncoder({"skipped.operations": "c,u"}, "shop", "postgres").records(
        [_event("c", 0, {"id": 1}, None, {"id": 1})]
    ) == []


def test_key_change_carries_the_other_key_in_headers() -> None:
    enc = DebeziumEncoder({}, "shop", "postgres")
    d = _event("d", 0, {"id": 1}, {"id": 1}, None, key_change={"to": {"id": 2}})
    c = _event("c", 1, {"id": 2}, None, {"id": 2}, True, key_change={"from": {"id": 1}}, unchanged=["big"])
    delete, tombstone, create = enc.records([d, c])
    assert delete.headers == [("__debezium.newkey", b'{"id":2}')]
    assert tombstone.value is None and tombstone.headers == delete.headers
    assert create.headers == [("__debezium.oldkey", b'{"id":1}')]
    assert _value(create)["after"]["big"] == "__debezium_unavailable_value"


def test_unchanged_toast_value_is_the_placeholder() -> None:
    enc = DebeziumEncoder({"unavailable.value.placeholder": "??"}, "shop", "postgres")
    (r,) = enc.records([_event("u", 0, {"id": 1}, None, {"id": 1, "at": None}, True, unchanged=["big"])])
    assert _value(r)["after"] == {"id": 1, "big": "??", "at": None}


def test_transaction_metadata_begin_blocks_and_end() -> None:
    enc = DebeziumEncoder({"provide.transaction.metadata": True}, "shop", "postgres")
    events = [_event("c", 0, {"id": 1}, None, {"id": 1}), _event("c", 1, {"id": 2}, None, {"id": 2}, True)]
    events[1].pos = (201, 300)  # (change LSN, Commit LSN) on a transaction's last event
    begin, one, two, end = enc.records(events)
    assert begin.topic == end.topic == "shop.transaction"
    assert _value(begin)["status"] == "BEGIN" and begin.key == b'{"id":"42:200"}'
    assert _value(one)["transaction"] == {"id": "42:200", "total_order": 1, "data_collection_order": 1}
    assert _value(two)["transaction"]["total_order"] == 2
    e = _value(end)
    assert e["status"] == "END" and e["id"] == "42:300" and e["event_count"] == 2
    assert e["data_collections"] == [{"data_collection": "public.items", "event_count": 2}]


def test_schemas_enable_wraps_key_and_value_as_jsonconverter() -> None:
    enc = DebeziumEncoder({"schemas.enable": True}, "shop", "postgres")
    (r,) = enc.records([_event("c", 0, {"id": 1}, None, {"id": 1})])
    assert r.key is not None
    key = orjson.loads(r.key)
    assert key["payload"] == {"id": 1}
    assert key["schema"] == {"type": "struct", "fields": [{"type": "int32", "optional": False, "field": "id"}],
                             "optional": False, "name": "shop.public.items.Key"}  # fmt: skip
    value = _value(r)
    assert value["schema"]["name"] == "shop.public.items.Envelope"
    at = value["schema"]["fields"][1]["fields"][2]
    assert at == {"type": "int64", "optional": True, "name": "io.debezium.time.Timestamp", "version": 1, "field": "at"}
    assert value["payload"]["after"]["id"] == 1


def test_value_only_sinks_get_no_tombstones_and_no_transaction_records() -> None:
    enc = DebeziumEncoder({"provide.transaction.metadata": True}, "shop", "postgres")
    values = enc.values([_event("d", 0, {"id": 1}, {"id": 1}, None, True)])
    assert len(values) == 1 and orjson.loads(values[0])["op"] == "d"
    assert DebeziumEncoder({}, "shop", "postgres").message(_event("t", 0, None, None, None, True)) is None


def _load(tmp_path: Path, source: str, sink: str) -> Any:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(f"""
        pipelines:
          - name: shop
            source: {source}
            sink: {sink}
        """))  # fmt: skip
    return load_config(str(path), environ={})


def test_the_postgres_sink_refuses_format_debezium(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "{type: postgres, dsn: 'postgresql://x@h/d', tables: [public.t]}",
              "{type: postgres, dsn: 'postgresql://x@h/m', format: debezium}")  # fmt: skip
    assert any(p.path == "pipelines[0].sink.format" and "does not take `format: debezium`" in p.message
               for p in info.value.problems)  # fmt: skip


def test_adaptive_time_precision_is_refused_for_mysql_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "{type: mysql, dsn: 'mysql://x@h:3306', tables: [shop.t]}",
              "{type: file, path: ./out, format: debezium, debezium: {time.precision.mode: adaptive}}")  # fmt: skip
    assert any("not supported by Debezium's MySQL connector" in p.message for p in info.value.problems)
    cfg = _load(tmp_path, "{type: postgres, dsn: 'postgresql://x@h/d', tables: [public.t]}",
                "{type: file, path: ./out, format: debezium, debezium: {time.precision.mode: adaptive}}")  # fmt: skip
    assert cfg.pipelines[0].sink_format == "debezium"


@pytest.mark.parametrize("transform", ["unwrap: {}", "outbox: {table: public.outbox, to: x}"])
def test_unwrap_and_outbox_do_not_combine_with_format_debezium(tmp_path: Path, transform: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(f"""
        pipelines:
          - name: shop
            source: {{type: postgres, dsn: 'postgresql://x@h/d', tables: [public.t, public.outbox]}}
            transforms:
              - {transform}
            sink: {{type: file, path: ./out, format: debezium}}
        """))  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={})
    assert any(p.path == "pipelines[0].transforms" and "cannot take" in p.message for p in info.value.problems)


@pytest.mark.parametrize("value", ["x", "c,z", "", "none,c"])
def test_skipped_operations_takes_debeziums_words_only(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "{type: postgres, dsn: 'postgresql://x@h/d', tables: [public.t]}",
              f"{{type: file, path: ./out, format: debezium, debezium: {{skipped.operations: '{value}'}}}}")  # fmt: skip
    assert any("skipped.operations is `none`" in p.message for p in info.value.problems)
