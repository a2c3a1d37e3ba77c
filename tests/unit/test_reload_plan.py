"""What a reload changes (cdc.reload.plan), from two real pipeline files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.config import ServiceConfig
from cdc.config_loader import load_config
from cdc.errors import Refused
from cdc.reload import plan

DSN = "postgresql://cdc:secret@db:5432/shop"


def _pipeline(name: str, tables: list[str], **source: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"type": "postgres", "dsn": DSN, "tables": tables, **source},
        "sink": {"type": "file", "path": f"out_{name}"},
    }


def _load(tmp_path: Path, pipelines: list[dict[str, Any]], port: int = 8080) -> ServiceConfig:
    path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.yaml"
    doc = {"api": {"listen": f"127.0.0.1:{port}"}, "pipelines": pipelines}
    path.write_text(yaml.safe_dump(doc))
    return load_config(str(path), environ={})


def test_added_removed_changed_grown_and_unchanged(tmp_path: Path) -> None:
    old = _load(tmp_path, [_pipeline("a", ["public.a"]), _pipeline("b", ["public.b", "public.b2"]),
                           _pipeline("c", ["public.c"]), _pipeline("g", ["public.g"])])
    new = _load(tmp_path, [_pipeline("a", ["public.a"]), _pipeline("b", ["public.b"]),
                           _pipeline("g", ["public.g2", "public.g"]), _pipeline("d", ["public.d"])],
                port=8081)
    doc = plan(old, new).as_dict()
    assert doc["unchanged"] == ["a"]
    assert doc["restarted"] == ["b"] and doc["tables_removed"] == {"b": ["public.b2"]}
    assert doc["tables_added_in_place"] == ["g"] and doc["tables_added"] == {"g": ["public.g2"]}
    assert doc["added"] == ["d"] and doc["removed"] == ["c"]
    assert doc["not_applied"] == ["api"]


def test_tables_and_another_setting_is_a_restart(tmp_path: Path) -> None:
    old = _load(tmp_path, [_pipeline("g", ["public.g"])])
    new = _load(tmp_path, [_pipeline("g", ["public.g", "public.h"], heartbeat_s=3)])
    doc = plan(old, new).as_dict()
    assert doc["restarted"] == ["g"] and doc["tables_added_in_place"] == []
    assert doc["tables_added"] == {"g": ["public.h"]}


def test_a_new_password_is_the_same_pipeline(tmp_path: Path) -> None:
    old = _load(tmp_path, [_pipeline("a", ["public.a"])])
    new = _load(tmp_path, [_pipeline("a", ["public.a"], dsn=DSN.replace("secret", "other"))])
    assert plan(old, new).as_dict()["restarted"] == ["a"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"slot": "renamed"}, "replication slot is renamed from cdc_a to renamed"),
        ({"dsn": DSN.replace("/shop", "/other")}, "another server or database"),
        ({"dsn": DSN.replace("db:5432", "db2:5432")}, "another server or database"),
    ],
)
def test_another_slot_or_database_is_refused(tmp_path: Path, change: dict[str, str], needle: str) -> None:
    old = _load(tmp_path, [_pipeline("a", ["public.a"])])
    new = _load(tmp_path, [_pipeline("a", ["public.a"], **change)])
    with pytest.raises(Refused) as info:
        plan(old, new, "shop.yaml")
    assert needle in str(info.value) and "cdc drop shop.yaml a --yes" in str(info.value)
