"""A pipeline file using every key that contract version 3 added (the Debezium format,
transforms, dead letters, the postgres sink) loads with the values given, and each of those keys
is still checked (a typo in one is a validation error naming it)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cdc.config_loader import load_config
from cdc.errors import ConfigError

V3 = """
api:
  listen: 127.0.0.1:{port}
state:
  path: {state}
log:
  format: json
pipelines:
  - name: shop
    source:
      type: postgres
      dsn: postgresql://cdc@127.0.0.1:1/shop
      tables: [public.orders, public.customers]
    transforms:
      - filter:
          tables: [public.orders]
          when: 'after.status != "draft"'
      - mask:
          key: mask-key-0123456789
          columns:
            public.customers: {{email: hash}}
      - route:        # (unwrap and outbox do not combine with format: debezium)
          rules: [{{when: 'true', to: "shop.orders"}}]
    dead_letter: {{type: file, path: ./dead}}
    sink:
      type: kafka
      bootstrap_servers: 127.0.0.1:1
      format: debezium
      debezium:
        topic.prefix: shop
        schemas.enable: true
        decimal.handling.mode: string
        time.precision.mode: connect
  - name: model
    source:
      type: postgres
      dsn: postgresql://cdc@127.0.0.1:1/shop
      tables: [public.orders]
    sink:
      type: postgres
      dsn: postgresql://cdc@127.0.0.1:1/model
      deletes: soft
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cdc.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _v3(tmp_path: Path, port: int = 18999) -> Path:
    return _write(tmp_path, V3.format(port=port, state=tmp_path / "state.sqlite"))


def test_a_file_using_later_features_is_valid(tmp_path: Path) -> None:
    cfg = load_config(str(_v3(tmp_path)), environ={})
    shop, model = cfg.pipelines
    assert shop.sink_format == "debezium" and shop.debezium["topic.prefix"] == "shop"
    assert [next(iter(t)) for t in shop.transforms] == ["filter", "mask", "route"]
    assert shop.dead_letter_type == "file"
    assert shop.dead_letter.path == str(tmp_path / "dead")  # a sink section like `sink:`
    assert model.sink_type == "postgres" and model.sink_format == "cdc"


@pytest.mark.parametrize(
    ("change", "path", "needle"),
    [
        ("topic.prefix: shop", "pipelines[0].sink.debezium", "unknown Debezium property 'topic.prefx'"),
        ("decimal.handling.mode: string", "pipelines[0].sink.debezium", "decimal.handling.mode must be one of precise, string, double"),
        ("format: debezium", "pipelines[0].sink.format", "debezum"),
        ("- route:", "pipelines[0].transforms", "unknown transform 'rout'"),
    ],
)
def test_later_keys_are_still_checked(tmp_path: Path, change: str, path: str, needle: str) -> None:
    bad = {
        "topic.prefix: shop": "topic.prefx: shop",
        "decimal.handling.mode: string": "decimal.handling.mode: exact",
        "format: debezium": "format: debezum",
        "- route:": "- rout:",
    }[change]
    text = V3.replace(change, bad).format(port=1, state=tmp_path / "s.sqlite")
    with pytest.raises(ConfigError) as info:
        load_config(str(_write(tmp_path, text)), environ={})
    found = [(p.path, p.message) for p in info.value.problems]
    assert any(p == path and needle in m for p, m in found), found
