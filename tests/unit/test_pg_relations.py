"""A table's description plus catalog facts to its schema and row functions, without a server
(sources/postgres/relations.py and cdc/_codegen.py)."""

from __future__ import annotations

import traceback

import pytest

from cdc._codegen import make_function, source_of
from cdc.errors import FatalError
from cdc.schema import Column
from sources.postgres.pgoutput import UNCHANGED, Relation, RelationColumn
from sources.postgres.relations import (
    describe,
    describe_relation,
    snapshot_key,
    stream_key,
    typmods_wanted,
)

from .pg_layers import TYPES, TYPMODS, facts


def rel(identity: str, *cols: tuple[int, str, int, int]) -> Relation:
    return Relation(1, "public", "t", identity, tuple(RelationColumn(*c) for c in cols))


def test_types_with_modifiers_arrays_enums_and_domains() -> None:
    msg = rel(
        "d",
        (1, "id", 23, -1),
        (0, "name", 1043, 24),
        (0, "tags", 1015, 54),
        (0, "ids", 1007, -1),
        (0, "mood", 700, -1),
        (0, "n", 701, -1),
        (0, "odd", 99999, -1),
    )
    shape = describe_relation(msg, facts(["id"], ["id"]), {})
    assert shape.schema.columns == (
        Column("id", "int4", False),
        Column("name", "varchar(20)", True),
        Column("tags", "varchar(50)[]", True),
        Column("ids", "int4[]", True),
        Column("mood", "mood", True),
        Column("n", "posint", True),
        Column("odd", "oid:99999", True),
    )
    row = shape.fast_row([b"1", b"x", b"{a,b}", b"{1,NULL}", b"ok", b"7", b"?"])
    assert row == {
        "id": 1,
        "name": "x",
        "tags": ["a", "b"],
        "ids": [1, None],
        "mood": "ok",
        "n": 7,
        "odd": "?",
    }


def test_typmods_wanted_names_each_modified_type_once_per_column() -> None:
    wanted = typmods_wanted(TYPES, [(23, -1), (1043, 24), (1015, 54), (1043, -1)])
    assert [(t.oid, m) for t, m in wanted] == [(1043, 24), (1043, 54)]
    assert all((t.oid, m) in TYPMODS for t, m in wanted)


@pytest.mark.parametrize(
    ("identity", "flags", "catalog_key", "key", "absent"),
    [
        ("d", (1, 1, 0), ["b", "a"], ["b", "a"], []),  # the catalog's index order
        ("d", (1, 1, 0), ["c"], ["a", "b"], []),  # flagged columns win, in column order
        ("d", (1, 1, 0), None, ["a", "b"], []),
        ("d", (0, 0, 0), ["a"], [], []),
        ("i", (0, 1, 0), ["b"], ["b"], []),
        ("f", (1, 1, 1), ["c", "a"], ["c", "a"], []),
        ("f", (1, 1, 1), ["a", "z"], [], ["z"]),  # the key of that time cannot be known
        ("f", (1, 1, 1), None, [], []),
        ("n", (0, 0, 0), ["a"], [], []),
    ],
)
def test_stream_key(
    identity: str,
    flags: tuple[int, ...],
    catalog_key: list[str] | None,
    key: list[str],
    absent: list[str],
) -> None:
    msg = rel(identity, *((f, n, 23, -1) for f, n in zip(flags, "abc", strict=True)))
    assert stream_key(msg, catalog_key) == (key, absent)


def test_key_unknown_under_full() -> None:
    shape = describe_relation(rel("f", (1, "a", 23, -1)), facts(["a", "z"]), {})
    assert shape.key_unknown == (["a", "z"], ["z"])
    assert shape.schema.key == () and shape.key({"a": 1}) is None


def test_snapshot_key() -> None:
    assert snapshot_key("d", ["b", "a"]) == ["b", "a"]
    assert snapshot_key("f", ["a"]) == ["a"]
    assert snapshot_key("i", None) == []
    assert snapshot_key("n", ["a"]) == []


def test_exclusion_drops_the_column_from_schema_and_rows() -> None:
    shape = describe(
        "public.t",
        [("id", 23, -1), ("pw", 25, -1), ("x", 25, -1)],
        ["id"],
        facts(),
        {"public.t": {"pw"}},
    )
    assert [c.name for c in shape.schema.columns] == ["id", "x"]
    assert shape.fast_row([b"1", b"secret", b"y"]) == {"id": 1, "x": "y"}
    assert shape.row([b"1", UNCHANGED, UNCHANGED]) == ({"id": 1}, ["x"])


def test_exclusion_is_looked_up_under_the_listed_name() -> None:
    shape = describe(
        "public.new",
        [("id", 23, -1), ("pw", 25, -1)],
        ["id"],
        facts(),
        {"public.old": {"pw"}},
        listed="public.old",
    )
    assert [c.name for c in shape.schema.columns] == ["id"]


def test_excluded_column_the_table_lacks() -> None:
    with pytest.raises(FatalError) as err:
        describe(
            "public.new",
            [("id", 23, -1)],
            ["id"],
            facts(),
            {"public.old": {"pw"}},
            listed="public.old",
        )
    assert err.value.kind == "config"
    assert err.value.table == "public.old"
    assert str(err.value) == (
        "columns.exclude for public.old names 'pw', which the table does not have (its columns: "
        "id); correct the name in the pipeline file (an excluded column that does not exist would "
        "let the column meant to be hidden through)"
    )


def test_excluded_key_column() -> None:
    with pytest.raises(FatalError) as err:
        describe("public.t", [("id", 23, -1)], ["id"], facts(), {"public.t": {"id"}})
    assert err.value.kind == "config" and err.value.table == "public.t"
    assert (
        str(err.value)
        == "columns.exclude for public.t names the key column 'id'; key columns cannot be excluded"
    )


def test_key_row_of_an_old_key_tuple() -> None:
    shape = describe("public.t", [("a", 25, -1), ("id", 23, -1)], ["id", "a"], facts(), {})
    assert shape.key_row([b"x", b"2"]) == {"id": 2, "a": "x"}
    assert shape.key({"a": "x", "id": 2}) == {"id": 2, "a": "x"}


def test_generated_row_function_text() -> None:
    """The generated text for one fixed table (a golden test: change it knowingly)."""
    shape = describe("public.t", [("id", 23, -1), ("it's", 25, -1)], ["id"], facts(), {})
    assert source_of(shape.fast_row) == (
        "def row(values, _c0=_c0, _c1=_c1):\n"
        "    return {\n"
        "        'id': None if (v0 := values[0]) is None else _c0(v0),\n"
        '        "it\'s": None if (v1 := values[1]) is None else _c1(v1),\n'
        "    }\n"
    )
    assert (
        source_of(shape.key) == "def key(row):\n    get = row.get\n    return {'id': get('id')}\n"
    )
    assert shape.fast_row.__code__.co_filename.startswith("<pg row public.t #")


def test_generated_code_shows_in_tracebacks() -> None:
    shape = describe("public.t", [("id", 23, -1)], [], facts(), {})
    with pytest.raises(ValueError) as err:
        shape.fast_row([b"not a number"])
    text = "".join(traceback.format_exception(err.value))
    assert "'id': None if (v0 := values[0]) is None else _c0(v0)," in text


def test_make_function_binds_constants() -> None:
    f = make_function("add", ["x"], ["return x + k"], {"k": 2})
    assert f(1) == 3
    assert source_of(f) == "def add(x, k=k):\n    return x + k\n"
