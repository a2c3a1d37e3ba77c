"""Transforms, one by one and chained: CEL compile-time checks and both evaluation paths,
filter, mask (HMAC, redact, truncate, schema versions), route, unwrap, outbox, stable ids,
validation messages with file lines."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc import transforms
from cdc.config_loader import load_config
from cdc.errors import ConfigError, FatalError
from cdc.events import ChangeEvent, encode_event, encode_lines
from cdc.schema import Column, SchemaRegistry, SchemaVersion, TableSchema
from cdc.state import SQLiteStore
from cdc.transforms.cel import CelCompileError, CelRuntimeError, Expression

ORDERS = SchemaVersion.build(
    TableSchema("public.orders", (Column("id", "int4"), Column("status", "text")), ("id",)), 1
)
CUSTOMERS = SchemaVersion.build(
    TableSchema(
        "public.customers",
        (Column("id", "int4"), Column("email", "text"), Column("name", "text")),
        ("id",),
    ),
    1,
)
OUTBOX = SchemaVersion.build(
    TableSchema(
        "public.outbox",
        tuple(
            Column(c, "text")
            for c in ("id", "aggregatetype", "aggregateid", "type", "payload")
        ),
        ("id",),
    ),
    1,
)
SRC = {"connector": "postgres", "pipeline": "p", "ts_ms": 1700000000000}


def ev(
    op: str = "c",
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    schema: SchemaVersion = ORDERS,
    id: str = "pg:0/1:0",
) -> ChangeEvent:
    row = after if after is not None else before
    key = {"id": row["id"]} if row and "id" in row else None
    return ChangeEvent(id, op, 1, SRC, ("0/1", 0, True), schema, key, before, after)


ARGS_U = ("u", "public.orders", {"id": 1}, None, {"id": 1, "status": "paid", "n": 3}, {}, 1)
ARGS_D = ("d", "public.orders", {"id": 1}, {"id": 1}, None, {}, 1)


# ---- CEL


@pytest.mark.parametrize(
    "text, message",
    [
        ('op in ["d"', "Syntax error"),
        ("nope == 1", "undeclared reference to 'nope'"),
        ("op == 1", "no matching overload"),
        ("ts_ms", "must be true or false"),
    ],
)
def test_cel_compile_errors(text: str, message: str) -> None:
    with pytest.raises(CelCompileError, match=message):
        Expression(text)


CASES = [
    'op in ["d","t"] || after.status != "draft"',
    'op == "u" && after.status == "paid"',
    "after.n > 2",
    "after.n > 2.5",
    "after.n == 3.0",
    "after.n == 3",
    "after.n in [1, 2, 3]",
    'after.status in ["paid", "new"]',
    'key in ["a"]',
    "!(after.n < 3)",
    "has(after.status)",
    "has(after.nothing)",
    'after.status == null || op == "d"',
    'table == "public.orders" && ts_ms >= 1',
    "key.id == 1",
    "after.n + 1 == 4",  # outside the subset: the C++ library evaluates it
    'after.status.startsWith("pa")',
]


@pytest.mark.parametrize("text", CASES)
@pytest.mark.parametrize("args", [ARGS_U, ARGS_D])
def test_cel_fast_path_agrees_with_the_reference(text: str, args: tuple[Any, ...]) -> None:
    expr = Expression(text)

    def outcome(fn: Any) -> Any:
        try:
            return fn(*args)
        except CelRuntimeError:
            return "error"

    assert outcome(expr) == outcome(expr.slow)


def test_cel_subset_is_translated_and_a_null_map_is_an_error() -> None:
    expr = Expression('op in ["d","t"] || after.status != "draft"')
    assert expr.fast is not None
    assert expr(*ARGS_D) is True  # the guard decides; after is never read
    with pytest.raises(CelRuntimeError, match="null"):
        Expression('after.status == "x"')(*ARGS_D)
    # an error on the left of || is absorbed when the right side is true
    assert Expression('after.status == "x" || op == "d"')(*ARGS_D) is True


def test_cel_json_columns_and_bool_vs_int() -> None:
    args = ("c", "t", None, None, {"doc": orjson.Fragment(b'{"a": 1}'), "b": True}, {}, 1)
    assert Expression("after.doc.a == 1")(*args) is True
    assert Expression("after.b == true")(*args) is True
    assert Expression("after.b == 1")(*args) is False  # CEL: a bool never equals an int


# ---- transforms


def chain(items: list[dict[str, Any]]) -> transforms.Chain:
    built = transforms.build(items, "p")
    assert built is not None
    return built


def test_filter_drops_and_keeps() -> None:
    c = chain([{"filter": {"tables": ["public.orders"], "when": 'after.status != "draft"'}}])
    out = c.apply(
        [
            ev(after={"id": 1, "status": "draft"}),
            ev(after={"id": 2, "status": "paid"}),
            ev(after={"id": 3, "email": "a@b"}, schema=CUSTOMERS),  # out of scope: kept
        ]
    )
    assert [e.after["id"] for e in out if e.after] == [2, 3]


def test_filter_runtime_error_names_the_event_and_no_value() -> None:
    c = chain([{"filter": {"when": 'after.status == "secret-value"'}}])
    with pytest.raises(transforms.TransformFailed) as info:
        c.apply([ev("d", before={"id": 1, "status": "secret-value"}, id="pg:0/9:1")])
    assert "pg:0/9:1" in str(info.value)
    assert "secret-value" not in str(info.value)


def test_mask_hash_redact_truncate() -> None:
    c = chain(
        [
            {
                "mask": {
                    "key": "k3y",
                    "columns": {
                        "public.customers": {"email": "hash", "id": "redact", "name": "truncate(2)"}
                    },
                }
            }
        ]
    )
    (out,) = c.apply([ev(after={"id": 7, "email": "ü@x.org", "name": "Ñandú"}, schema=CUSTOMERS)])
    expected = hmac.new(b"k3y", '"ü@x.org"'.encode(), hashlib.sha256).hexdigest()
    assert out.after == {"id": None, "email": expected, "name": "Ña"}
    assert out.key == {"id": None}
    assert b"x.org" not in out.json
    (nulls,) = c.apply([ev(after={"id": 7, "email": None, "name": None}, schema=CUSTOMERS)])
    assert nulls.after == {"id": None, "email": None, "name": None}
    # JSON values are hashed by their compact JSON
    (doc,) = c.apply(
        [ev(after={"id": 1, "email": orjson.Fragment(b'{"a": [1, 2]}')}, schema=CUSTOMERS)]
    )
    assert doc.after is not None
    assert doc.after["email"] == hmac.new(b"k3y", b'{"a":[1,2]}', hashlib.sha256).hexdigest()
    assert c.masks == {"public.customers": {"email": "hash", "id": "redact", "name": "truncate(2)"}}


def test_mask_makes_a_schema_version_and_names_the_mask(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    table = TableSchema("public.customers", (Column("id", "int4"), Column("email", "text")), ("id",))
    plain = SchemaRegistry(store, "p").resolve(table, (1, 0))
    masked = SchemaRegistry(store, "p", {"public.customers": {"email": "hash"}}).resolve(
        table, (2, 0)
    )
    assert (plain.version, masked.version) == (1, 2)
    assert masked.definition["columns"][1] == {
        "name": "email", "type": "text", "nullable": True, "masked": "hash"
    }
    again = SchemaRegistry(store, "p", {"public.customers": {"email": "hash"}})
    assert again.resolve(table, (3, 0)).version == 2
    assert again.latest("public.customers").definition["columns"][1]["masked"] == "hash"  # type: ignore[union-attr]
    with pytest.raises(FatalError, match="'mail' of table public.customers"):
        SchemaRegistry(store, "p", {"public.customers": {"mail": "hash"}}).resolve(table, (4, 0))


def test_route_first_match_wins() -> None:
    c = chain(
        [
            {
                "route": {
                    "tables": ["public.orders"],
                    "rules": [
                        {"when": 'after.status == "paid"', "to": "orders.paid"},
                        {"when": "true", "to": "orders.other"},
                    ],
                }
            }
        ]
    )
    paid, other, cust = c.apply(
        [
            ev(after={"id": 1, "status": "paid"}),
            ev(after={"id": 2, "status": "new"}),
            ev(after={"id": 3}, schema=CUSTOMERS),
        ]
    )
    assert (paid.dest, other.dest, cust.dest) == ("orders.paid", "orders.other", None)
    assert paid.json == ev(after={"id": 1, "status": "paid"}).json  # the record is unchanged


def test_unwrap_gives_the_row() -> None:
    c = chain([{"unwrap": {}}])
    ins, dele = c.apply([ev(after={"id": 1, "status": "x"}), ev("d", before={"id": 1})])
    assert orjson.loads(ins.json) == {
        "id": 1, "status": "x", "__op": "c", "__table": "public.orders",
        "__source_ts_ms": 1700000000000, "__id": "pg:0/1:0",
    }
    assert orjson.loads(dele.json)["__deleted"] is True
    # snapshot-read runs take the same path when encoded together
    lines = encode_lines(c.apply([ev("r", after={"id": 5, "status": "y"})]))
    assert orjson.loads(lines)["__op"] == "r"


def test_outbox_routes_inserted_rows_and_drops_the_rest() -> None:
    c = chain([{"outbox": {"table": "public.outbox", "to": "outbox.event.{aggregatetype}"}}])
    row = {
        "id": "e1", "aggregatetype": "order", "aggregateid": "42", "type": "OrderPaid",
        "payload": orjson.Fragment(b'{"total": "9.90"}'),
    }
    out = c.apply(
        [
            ev(after=row, schema=OUTBOX),
            ev("u", after=row, before=row, schema=OUTBOX),
            ev("d", before=row, schema=OUTBOX),
            ev(after={"id": 1, "status": "x"}),
        ]
    )
    assert len(out) == 2
    msg, order = out
    assert orjson.loads(encode_event(msg)) == {"total": "9.90"}
    assert msg.key_json == b"42"
    assert msg.dest == "outbox.event.order"
    assert msg.headers == (("id", "e1"), ("type", "OrderPaid"))
    assert order.dest is None


def test_outbox_row_missing_a_column_fails_the_event() -> None:
    c = chain([{"outbox": {"table": "public.outbox"}}])
    with pytest.raises(transforms.TransformFailed, match="no column 'payload'"):
        c.apply([ev(after={"id": "e1", "aggregatetype": "a", "aggregateid": "1", "type": "t"},
                    schema=OUTBOX)])


class Split:
    """A transform that turns each event into two (ids become <id>#1, <id>#2)."""

    def apply(self, e: ChangeEvent) -> list[ChangeEvent]:
        return [e, e]


def test_one_event_becoming_several_gets_stable_ids() -> None:
    c = transforms.Chain([transforms.Step("split", Split().apply, None)], {}, None)
    out = c.apply([ev(id="pg:0/5:3")])
    assert [e.id for e in out] == ["pg:0/5:3#1", "pg:0/5:3#2"]
    assert [e.id for e in c.apply([ev(id="pg:0/5:3")])] == [e.id for e in out]


def test_no_transforms_builds_no_chain() -> None:
    assert transforms.build([], "p") is None


# ---- validation


def write(tmp_path: Path, transforms_yaml: str, sink: str = "{type: file, path: ./out}") -> Path:
    path = tmp_path / "cdc.yaml"
    path.write_text(
        "pipelines:\n"
        "  - name: shop\n"
        "    source: {type: postgres, dsn: 'postgresql://u@h/db', tables: [public.orders]}\n"
        "    transforms:\n"
        f"{transforms_yaml}"
        f"    sink: {sink}\n"
    )
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    return [f"{p.line}: {p.path}: {p.message}" for p in info.value.problems]


def test_validation_reports_cel_errors_with_their_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "      - filter:\n"
        "          when: 'op == 1'\n"
        "      - filter:\n"
        "          when: 'after.x == nope'\n"
        "      - filter:\n"
        "          when: 'op in ['\n",
    )
    found = problems(path)
    assert any(p.startswith("6: pipelines[0].transforms[0].filter.when: CEL:") for p in found), found
    assert any("8: pipelines[0].transforms[1].filter.when" in p and "nope" in p for p in found)
    assert any("10: pipelines[0].transforms[2].filter.when" in p and "Syntax" in p for p in found)


def test_route_is_refused_on_a_sink_without_destinations(tmp_path: Path) -> None:
    path = write(tmp_path, "      - route: {rules: [{when: 'true', to: x}]}\n")
    assert any("file sink does not take per-event destinations" in p for p in problems(path))
    ok = write(
        tmp_path,
        "      - route: {rules: [{when: 'true', to: x}]}\n",
        sink="{type: kafka, bootstrap_servers: 'localhost:9092'}",
    )
    load_config(str(ok))


def test_mask_validation_and_the_key_is_a_secret(tmp_path: Path) -> None:
    bad = write(tmp_path, "      - mask: {key: k, columns: {public.orders: {status: blur}}}\n")
    assert any("unknown mask 'blur'" in p for p in problems(bad))
    missing = write(tmp_path, "      - mask: {columns: {public.orders: {status: hash}}}\n")
    assert any("mask needs 'key'" in p for p in problems(missing))
    good = write(tmp_path, "      - mask: {key: s3cr3tkey, columns: {public.orders: {status: hash}}}\n")
    assert "s3cr3tkey" in load_config(str(good)).secrets


def test_no_env_still_checks_expressions_and_tables(tmp_path: Path) -> None:
    """`cdc validate --no-env` (CI): a mask key from an unset variable does not hide the CEL
    and table checks; a `when` that is itself an unset variable is not checked."""
    path = write(
        tmp_path,
        "      - filter: {when: 'op == 1'}\n"
        "      - filter: {when: '${WHEN}'}\n"
        "      - mask: {key: '${MASK_KEY}', columns: {public.other: {email: hash}}}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path), no_env=True, environ={})
    found = [f"{p.line}: {p.path}: {p.message}" for p in info.value.problems]
    assert len(found) == 2, found
    assert found[0].startswith("5: pipelines[0].transforms[0].filter.when: CEL:")
    assert found[1] == (
        '7: pipelines[0].transforms[2].mask.columns["public.other"]: '
        "table 'public.other' is not in this pipeline's source.tables"
    )


def test_transformed_events_keep_their_log_position() -> None:
    """`pos` (the Debezium format's per-change position) survives a mask and a derived copy."""
    c = chain([{"mask": {"key": "k", "columns": {"public.customers": {"email": "hash"}}}}])
    e = ev(after={"id": 1, "email": "a@b"}, schema=CUSTOMERS)
    e.pos = (0x16B3728, 0x16B3800)
    (out,) = c.apply([e])
    assert out.pos == (0x16B3728, 0x16B3800) and out.after["email"] != "a@b"  # type: ignore[index]
    assert transforms.derive(e, id="x#1").pos == e.pos
