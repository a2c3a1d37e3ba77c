"""Schema versions: what makes a version, and replay after a crash keeping old versions."""

from pathlib import Path

from cdc.schema import Column, SchemaRegistry, TableSchema
from cdc.state import SQLiteStore


def _t(*cols: tuple[str, str], key: tuple[str, ...] = ("id",), nullable: bool = True) -> TableSchema:
    return TableSchema("public.orders", tuple(Column(n, t, nullable) for n, t in cols), key)


V1 = _t(("id", "int4"), ("status", "varchar(20)"))
V2 = _t(("id", "int4"), ("status", "varchar(50)"))


def test_identical_description_records_no_new_version(tmp_path: Path) -> None:
    reg = SchemaRegistry(SQLiteStore(tmp_path / "s.sqlite"), "p")
    a = reg.resolve(V1, (100, 0))
    b = reg.resolve(V1, (200, 0))
    c = reg.resolve(_t(("id", "int4"), ("status", "varchar(20)"), nullable=False), (300, 0))
    assert a.version == b.version == c.version == 1  # nullable is informational


def test_type_modifier_key_and_order_make_versions(tmp_path: Path) -> None:
    reg = SchemaRegistry(SQLiteStore(tmp_path / "s.sqlite"), "p")
    assert reg.resolve(V1, (1, 0)).version == 1
    assert reg.resolve(V2, (2, 0)).version == 2
    assert reg.resolve(_t(("status", "varchar(50)"), ("id", "int4")), (3, 0)).version == 3
    assert reg.resolve(_t(("status", "varchar(50)"), ("id", "int4"), key=()), (4, 0)).version == 4


def test_replay_from_before_an_alter_keeps_the_old_version(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    reg = SchemaRegistry(store, "p")
    assert reg.resolve(V1, (100, 0)).version == 1
    assert reg.resolve(V2, (300, 0)).version == 2
    # crash; the restarted service replays from a checkpoint at 150 and describes the table
    # again, first as it was before the ALTER, then after it
    again = SchemaRegistry(store, "p")
    assert again.resolve(V1, (200, 0)).version == 1
    assert again.resolve(V2, (300, 0)).version == 2
    assert [v.version for v in store.schema_versions("p")] == [1, 2]


def test_versions_survive_restart_and_definitions_are_complete(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    SchemaRegistry(store, "p").resolve(V1, (1, 0))
    sv = SchemaRegistry(SQLiteStore(tmp_path / "s.sqlite"), "p").resolve(V1, (5, 0))
    assert sv.version == 1
    assert sv.definition == {
        "name": "public.orders",
        "version": 1,
        "columns": [
            {"name": "id", "type": "int4", "nullable": True},
            {"name": "status", "type": "varchar(20)", "nullable": True},
        ],
        "key": ["id"],
    }
    assert sv.ref == {"name": "public.orders", "version": 1}


def test_seed_from_sink_continues_numbering(tmp_path: Path) -> None:
    reg = SchemaRegistry(SQLiteStore(tmp_path / "s.sqlite"), "p")
    held = [
        {"name": "public.orders", "version": 1, "columns": [{"name": "id", "type": "int4"}], "key": ["id"]},
        {"name": "public.orders", "version": 2, "columns": [{"name": "id", "type": "int8"}], "key": ["id"]},
    ]
    assert reg.seed(held) == 2
    same_as_latest = _t(("id", "int8"))
    assert reg.resolve(same_as_latest, (10, 0)).version == 2
    assert reg.resolve(V1, (20, 0)).version == 3
