"""The pipeline file loader (contract section 2): values, defaults, and every kind of problem
with its exact YAML path and line."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from cdc import registry
from cdc.config import ServiceConfig
from cdc.config_loader import MISSING, iter_settings, load_config, substitute
from cdc.errors import ConfigError, FatalError

ROOT = Path(__file__).resolve().parents[2]

# The built-in postgres source and file sink are being built alongside the loader; when their
# package cannot be imported yet, their Config dataclasses (which are all the loader needs) are
# registered from their own files so these tests exercise the real settings either way.
_BUILTINS = [
    ("source", "postgres", "sources/postgres/config.py", "PostgresConfig"),
    ("sink", "file", "sinks/file/config.py", "FileConfig"),
]


def ensure_builtin_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    for kind, name, rel, cls_name in _BUILTINS:
        try:
            registry.load(kind, name)
            continue
        except Exception:
            pass
        module_name = f"_cdc_test_{kind}_{name}_config"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, ROOT / rel)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        stub = type(f"{name.title()}PluginStub", (), {"Config": getattr(module, cls_name)})
        monkeypatch.setitem(registry._cache, (kind, name), stub)


@pytest.fixture(autouse=True)
def _plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_builtin_plugins(monkeypatch)


def write(tmp_path: Path, text: str, name: str = "cdc.yaml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def problems(path: str, **kwargs: Any) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    assert info.value.problems, "a ConfigError always lists at least one problem"
    return [(p.path, p.line, p.message) for p in info.value.problems]


def one_problem(path: str, **kwargs: Any) -> tuple[str, int | None, str]:
    found = problems(path, **kwargs)
    assert len(found) == 1, found
    return found[0]


# The contract's example, with a postgres source and a file sink.
EXAMPLE = """
state:                      # checkpoints, schema history, snapshot progress
  path: ./cdc-state.sqlite  # the default: an embedded SQLite file
api:
  listen: 127.0.0.1:8080    # admin HTTP API; default 127.0.0.1:8080
log:
  level: info               # debug | info | warning | error
  format: json              # json | console
pipelines:
  - name: shop              # [a-z0-9_]{1,48}, unique (it names slots, which allow no '-')
    source:
      type: postgres
      dsn: postgresql://cdc:${PGPASSWORD}@db:5432/shop
      tables: [public.orders, public.customers]   # schema.table
      slot: cdc_shop        # default cdc_<name>
      publication: cdc_shop # default cdc_<name>
      heartbeat_s: 10
      max_retained_wal_mb: 10240
    snapshot:
      mode: initial         # initial | never | initial_only (see section 5)
      chunk_rows: 10000
    columns:                # optional; per table; applied inside the service
      exclude: {public.customers: [ssn]}
    values:
      bigint: number        # number | string
    sink:
      type: file            # file | kafka | webhook | a plugin's name
      path: ./out/shop      # a folder
      rotate_mb: 128
"""

MINIMAL = """
pipelines:
  - name: shop
    source:
      type: postgres
      dsn: postgresql://cdc@db/shop
      tables: [public.orders]
    sink:
      type: file
      path: out
"""

ENV = {"PGPASSWORD": "s3cret"}


# ------------------------------------------------------------------ valid files


def test_contract_example_loads_with_its_values(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    cfg = load_config(path, environ=ENV)
    assert isinstance(cfg, ServiceConfig)
    assert cfg.file == str(tmp_path / "cdc.yaml")
    assert cfg.config_dir == str(tmp_path)
    assert cfg.state.path == str(tmp_path / "cdc-state.sqlite")
    assert cfg.state.dsn is None
    assert cfg.api.listen == "127.0.0.1:8080"
    assert cfg.api.token is None
    assert cfg.api.public_metrics is False
    assert (cfg.log.level, cfg.log.format) == ("info", "json")
    assert len(cfg.pipelines) == 1
    p = cfg.pipelines[0]
    assert p.name == "shop"
    assert (p.source_type, p.sink_type) == ("postgres", "file")
    assert type(p.source).__name__ == "PostgresConfig"
    assert p.source.dsn == "postgresql://cdc:s3cret@db:5432/shop"
    assert p.source.tables == ["public.orders", "public.customers"]
    assert (p.source.slot, p.source.publication) == ("cdc_shop", "cdc_shop")
    assert p.source.heartbeat_s == 10.0 and isinstance(p.source.heartbeat_s, float)
    assert p.source.max_retained_wal_mb == 10240
    assert (p.snapshot.mode, p.snapshot.chunk_rows) == ("initial", 10000)
    assert p.columns.exclude == {"public.customers": ["ssn"]}
    assert p.values.bigint == "number"
    assert type(p.sink).__name__ == "FileConfig"
    assert p.sink.path == str(tmp_path / "out" / "shop")
    assert p.sink.rotate_mb == 128
    assert cfg.secrets == ["s3cret"]  # a DSN's password, not the whole DSN
    assert cfg.pipeline("shop") is p


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), environ={})
    assert cfg.state.path == str(tmp_path / "cdc-state.sqlite")  # the default, resolved
    assert cfg.api.listen == "127.0.0.1:8080" and cfg.api.token is None
    assert (cfg.log.level, cfg.log.format) == ("info", "auto")  # console on a terminal, JSON otherwise
    p = cfg.pipelines[0]
    assert p.source.slot is None and p.source.publication is None
    assert p.source.heartbeat_s == 10 and p.source.max_retained_wal_mb == 10240
    assert (p.snapshot.mode, p.snapshot.chunk_rows) == ("initial", 10000)
    assert p.columns.exclude == {}
    assert p.values.bigint == "number"
    assert p.sink.rotate_mb == 128
    assert p.sink.path == str(tmp_path / "out")
    assert cfg.secrets == []  # a DSN without a password holds no secret


def test_yaml_1_1_scalars_are_read_as_yaml_says(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
api:
  public_metrics: yes
""",
    )
    path2 = write(
        tmp_path,
        MINIMAL.replace("path: out", "path: out\n      rotate_mb: 1_000"),
        "two.yaml",
    )
    assert load_config(path, environ={}).api.public_metrics is True
    assert load_config(path2, environ={}).pipelines[0].sink.rotate_mb == 1000


def test_merge_key_values_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - &first
            name: a
            source: &pg {type: postgres, dsn: "postgresql://cdc@db/shop", tables: [public.a], heartbeat_s: 5}
            sink: {type: file, path: a}
          - <<: *first
            name: b
            source:
              <<: *pg
              heartbeat_s: 7
        """,
    )
    cfg = load_config(path, environ={})
    a, b = cfg.pipelines
    assert (a.name, b.name) == ("a", "b")
    assert (a.source.heartbeat_s, b.source.heartbeat_s) == (5, 7)
    assert b.source.tables == ["public.a"]
    assert b.sink.path == str(tmp_path / "a")


# ------------------------------------------------------------------ the plugins' settings


def test_mysql_kafka_webhook_validate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - name: orders
            source:
              type: mysql
              dsn: mysql://cdc:${MYSQL_PASSWORD}@mysql:3306
              tables: [shop.orders]
              server_id: 54001
            sink:
              type: kafka
              bootstrap_servers: kafka:9092
              topic: "shop.{schema}.{table}"
              schema_topic: shop.schemas
              tombstones: false
              topic_partitions: 6
              topic_replication_factor: 3
              config: {compression.type: lz4, linger.ms: 5, enable.ssl.certificate.verification: true}
          - name: hooks
            source:
              type: mysql
              dsn: mysql://cdc:pw@mysql:3306
              tables: [shop.customers]
            sink:
              type: webhook
              url: https://hooks.example.com/cdc
              secret: ${WEBHOOK_SECRET}
              headers: {Authorization: "Bearer ${HOOK_TOKEN}", X-Team: data}
              batch_max: 500
              timeout_s: 10
              max_backoff_s: 300
        """,
    )
    env = {"MYSQL_PASSWORD": "my", "WEBHOOK_SECRET": "whsec", "HOOK_TOKEN": "tok"}
    cfg = load_config(path, environ=env)
    orders, hooks = cfg.pipelines
    assert (orders.source_type, orders.sink_type) == ("mysql", "kafka")
    assert (hooks.source_type, hooks.sink_type) == ("mysql", "webhook")
    assert orders.source.server_id == 54001
    assert hooks.source.server_id is None
    assert orders.sink.tombstones is False
    assert orders.sink.config == {
        "compression.type": "lz4",
        "linger.ms": 5,
        "enable.ssl.certificate.verification": True,
    }
    assert hooks.sink.headers == {"Authorization": "Bearer tok", "X-Team": "data"}
    for secret in ["my", "pw", "whsec", "Bearer tok", "tok", "data"]:
        assert secret in cfg.secrets


def test_kafka_config_may_not_set_acks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - name: orders
            source: {type: mysql, dsn: "mysql://cdc@mysql", tables: [shop.orders]}
            sink:
              type: kafka
              bootstrap_servers: kafka:9092
              config:
                compression.type: lz4
                acks: 1
        """,
    )
    assert one_problem(path, environ={}) == (
        "pipelines[0].sink.config",
        7,
        "may not set acks (the sink keeps acks=all and idempotence on)",
    )


def test_kafka_config_values_must_be_scalars(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - name: orders
            source: {type: mysql, dsn: "mysql://cdc@mysql", tables: [shop.orders]}
            sink:
              type: kafka
              bootstrap_servers: kafka:9092
              config:
                sasl: {mechanism: PLAIN}
        """,
    )
    assert one_problem(path, environ={}) == (
        'pipelines[0].sink.config["sasl"]',
        8,
        "expected a single value (string, number or boolean), got a mapping",
    )


# ------------------------------------------------------------------ problems, one kind each


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("tables:", "tabels:"))
    found = problems(path, environ={})
    assert (
        "pipelines[0].source.tabels",
        6,
        "unknown key 'tabels' (did you mean 'tables'?)",
    ) in found
    # and the real key is then missing, reported at the line of `source:`
    assert ("pipelines[0].source.tables", 3, "required key 'tables' is missing") in found
    assert len(found) == 2


def test_unknown_key_without_a_close_one_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "log:\n  colour: true\n")
    assert one_problem(path, environ={}) == (
        "log.colour",
        11,
        "unknown key 'colour' (valid keys: level, format)",
    )


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("pipelines:", "pipeline:"))
    found = problems(path, environ={})
    assert found == [
        ("pipeline", 1, "unknown key 'pipeline' (did you mean 'pipelines'?)"),
        ("pipelines", 1, "required key 'pipelines' is missing"),
    ]


def test_internal_fields_are_not_settings(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "secrets: [x]\n")
    path_, line, message = one_problem(path, environ={})
    assert (path_, line) == ("secrets", 10)
    assert message.startswith("unknown key 'secrets'")
    path = write(tmp_path, MINIMAL.replace("  - name: shop", "  - name: shop\n    source_type: x"))
    assert one_problem(path, environ={})[:2] == ("pipelines[0].source_type", 3)


def test_missing_required_keys_at_the_parent_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - name: shop
            source:
              type: postgres
            sink:
              type: webhook
        """,
    )
    assert problems(path, environ={}) == [
        ("pipelines[0].source.dsn", 3, "required key 'dsn' is missing"),
        ("pipelines[0].source.tables", 3, "required key 'tables' is missing"),
        ("pipelines[0].sink.url", 5, "required key 'url' is missing"),
    ]


def test_missing_source_and_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - sink: {type: file, path: out}
        """,
    )
    assert problems(path, environ={}) == [
        ("pipelines[0].name", 2, "required key 'name' is missing"),
        ("pipelines[0].source", 2, "required key 'source' is missing"),
    ]


def test_pipelines_must_be_a_non_empty_list(tmp_path: Path) -> None:
    assert one_problem(write(tmp_path, "pipelines: []\n"), environ={}) == (
        "pipelines",
        1,
        "list at least one pipeline",
    )
    assert one_problem(write(tmp_path, "pipelines: {name: shop}\n"), environ={}) == (
        "pipelines",
        1,
        "expected a list, got a mapping",
    )
    assert one_problem(write(tmp_path, "pipelines:\n"), environ={}) == (
        "pipelines",
        1,
        "expected a list, got nothing (null)",
    )
    assert one_problem(write(tmp_path, "log: {level: info}\n"), environ={}) == (
        "pipelines",
        1,
        "required key 'pipelines' is missing",
    )


def test_int_where_a_string_is_expected_says_to_quote_it(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("name: shop", "name: 123"))
    assert one_problem(path, environ={}) == (
        "pipelines[0].name",
        2,
        'expected a string, got an integer (123); quote it: "123"',
    )


def test_float_and_date_where_a_string_is_expected(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL.replace("path: out", "path: 1.10") + "state:\n  path: 2024-01-02\n"
    )
    assert problems(path, environ={}) == [
        ("pipelines[0].sink.path", 9, 'expected a string, got a number (1.10); quote it: "1.10"'),
        ("state.path", 11, 'expected a string, got a date (2024-01-02); quote it: "2024-01-02"'),
    ]


def test_secret_values_are_not_echoed_in_messages(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "api:\n  token: 123456789\n")
    path_, line, message = one_problem(path, environ={})
    assert (path_, line) == ("api.token", 11)
    assert message == "expected a string, got an integer; quote it"


def test_int_field_types_are_strict(tmp_path: Path) -> None:
    base = MINIMAL + "    snapshot:\n      chunk_rows: {}\n"
    cases = {
        '"500"': 'expected an integer, got a string ("500"); write it without quotes',
        "true": "expected an integer, got a boolean (true)",
        "1.5": "expected an integer, got a number (1.5); a whole number is needed",
        "lots": 'expected an integer, got a string ("lots")',
        "": "expected an integer, got nothing (null)",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = write(tmp_path, base.format(text), f"c{i}.yaml")
        assert one_problem(path, environ={}) == ("pipelines[0].snapshot.chunk_rows", 11, message)


def test_float_field_accepts_int_and_float_only(tmp_path: Path) -> None:
    ok = write(tmp_path, MINIMAL.replace("path: out", "path: out\n      rotate_mb: 0.5"))
    assert load_config(ok, environ={}).pipelines[0].sink.rotate_mb == 0.5
    bad = {
        '"10"': 'expected a number, got a string ("10"); write it without quotes',
        "no": "expected a number, got a boolean (no)",
        ".nan": "expected a finite number",
        ".inf": "expected a finite number",
    }
    for i, (text, message) in enumerate(bad.items()):
        path = write(
            tmp_path,
            MINIMAL.replace("path: out", f"path: out\n      rotate_mb: {text}"),
            f"f{i}.yaml",
        )
        assert one_problem(path, environ={}) == ("pipelines[0].sink.rotate_mb", 10, message)


def test_bool_field_needs_a_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'api:\n  public_metrics: "true"\n')
    assert one_problem(path, environ={}) == (
        "api.public_metrics",
        11,
        'expected true or false, got a string ("true"); write it without quotes',
    )
    path = write(tmp_path, MINIMAL + "api:\n  public_metrics: 1\n", "b.yaml")
    assert one_problem(path, environ={}) == (
        "api.public_metrics",
        11,
        "expected true or false, got an integer (1)",
    )


def test_literal_names_the_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    snapshot: {mode: sometimes}\nlog: {level: 3}\n")
    assert problems(path, environ={}) == [
        (
            "pipelines[0].snapshot.mode",
            10,
            'must be one of initial, never, initial_only (got "sometimes")',
        ),
        ("log.level", 11, "must be one of debug, info, warning, error (got 3)"),
    ]


def test_optional_fields_accept_null(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace(
            "tables: [public.orders]", "tables: [public.orders]\n      slot: ~\n      publication:"
        )
        + "api:\n  token:\n",
    )
    cfg = load_config(path, environ={})
    assert cfg.pipelines[0].source.slot is None
    assert cfg.pipelines[0].source.publication is None
    assert cfg.api.token is None


def test_list_and_dict_shapes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - name: shop
            source:
              type: postgres
              dsn: postgresql://cdc@db/shop
              tables: public.orders
            columns:
              exclude:
                public.orders: ssn
            sink:
              type: webhook
              url: https://example.com/
              headers:
                X-Number: 5
                X-List: [a]
        """,
    )
    assert problems(path, environ={}) == [
        ("pipelines[0].source.tables", 6, "expected a list, got a string"),
        ('pipelines[0].columns.exclude["public.orders"]', 9, "expected a list, got a string"),
        # headers are secret: their values are never shown
        (
            'pipelines[0].sink.headers["X-Number"]',
            14,
            "expected a string, got an integer; quote it",
        ),
        ('pipelines[0].sink.headers["X-List"]', 15, "expected a string, got a list"),
    ]


def test_list_items_are_checked_one_by_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - name: shop
            source:
              type: postgres
              dsn: postgresql://cdc@db/shop
              tables:
                - public.orders
                - 42
                - [public.x]
            sink: {type: file, path: out}
        """,
    )
    assert problems(path, environ={}) == [
        (
            "pipelines[0].source.tables[1]",
            8,
            'expected a string, got an integer (42); quote it: "42"',
        ),
        ("pipelines[0].source.tables[2]", 9, "expected a string, got a list"),
    ]


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    snapshot: initial\nstate: [a]\n")
    assert problems(path, environ={}) == [
        ("pipelines[0].snapshot", 10, "expected a mapping (key: value), got a string"),
        ("state", 11, "expected a mapping (key: value), got a list"),
    ]


def test_checks_run_after_the_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace("name: shop", "name: Shop-1").replace("public.orders]", "orders]")
        + "    snapshot:\n      chunk_rows: 0\napi:\n  listen: nowhere\n",
    )
    assert problems(path, environ={}) == [
        (
            "pipelines[0].name",
            2,
            "must match [a-z0-9_]{1,48} (it names replication slots, which allow no '-')",
        ),
        ("pipelines[0].source.tables", 6, "'orders' is not schema.table: expected two parts joined by a dot"),
        ("pipelines[0].snapshot.chunk_rows", 11, "must be greater than 0"),
        ("api.listen", 13, "expected HOST:PORT, e.g. 127.0.0.1:8080"),
    ]


def test_duplicate_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - name: shop
            source:
              type: postgres
              dsn: postgresql://cdc@db/shop
              tables: [public.orders]
              dsn: postgresql://other@db/shop
            sink: {type: file, path: out, path: out2}
        """,
    )
    assert problems(path, environ={}) == [
        ("pipelines[0].source.dsn", 7, "duplicate key 'dsn' (first at line 5)"),
        ("pipelines[0].sink.path", 8, "duplicate key 'path' (first at line 8)"),
    ]


def test_non_string_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    columns:\n      exclude: {1: [a]}\n")
    assert one_problem(path, environ={}) == (
        "pipelines[0].columns.exclude.1",
        11,
        "the key '1' is read as an integer; keys must be strings (quote it: \"1\")",
    )


def test_source_needs_a_known_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        pipelines:
          - name: a
            source: {dsn: "postgresql://db"}
            sink: {type: fiel, path: out}
          - name: b
            source: postgres
            sink: {type: s3, path: out}
          - name: c
            source: {type: 7}
            sink: {type: file, path: out}
        """,
    )
    found = problems(path, environ={})
    installed_sources = ", ".join(sorted(registry.available("source")))
    installed_sinks = ", ".join(sorted(registry.available("sink")))
    assert found == [
        (
            "pipelines[0].source.type",
            3,
            f"required key 'type' is missing (the source plugin: {installed_sources})",
        ),
        (
            "pipelines[0].sink.type",
            4,
            f"unknown sink type 'fiel' (did you mean 'file'?); installed: {installed_sinks}",
        ),
        ("pipelines[1].source", 6, "expected a mapping with a 'type' key, got a string"),
        ("pipelines[1].sink.type", 7, f"unknown sink type 's3'; installed: {installed_sinks}"),
        ("pipelines[2].source.type", 9, 'expected a string, got an integer (7); quote it: "7"'),
    ]


def test_a_plugin_that_fails_to_load_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = registry.load

    def load(kind: str, name: str) -> Any:
        if name == "webhook":
            raise FatalError("the sink plugin 'webhook' cannot be imported: no httpx")
        if name == "kafka":
            raise AttributeError("module 'sinks.kafka' has no attribute 'KafkaSink'")
        return real_load(kind, name)

    monkeypatch.setattr(registry, "load", load)
    text = MINIMAL.replace("type: file\n      path: out", "type: webhook\n      url: https://x")
    assert one_problem(write(tmp_path, text), environ={}) == (
        "pipelines[0].sink.type",
        8,
        "the sink plugin 'webhook' cannot be imported: no httpx",
    )
    text = MINIMAL.replace(
        "type: file\n      path: out", "type: kafka\n      bootstrap_servers: k:9092"
    )
    assert one_problem(write(tmp_path, text, "k.yaml"), environ={}) == (
        "pipelines[0].sink.type",
        8,
        "the sink plugin 'kafka' cannot be loaded (AttributeError: module 'sinks.kafka' has "
        "no attribute 'KafkaSink')",
    )


def test_duplicate_pipeline_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
  - name: shop
    source: {type: postgres, dsn: "postgresql://db", tables: [public.b]}
    sink: {type: file, path: b}
""",
    )
    assert one_problem(path, environ={}) == (
        "pipelines[1].name",
        11,
        "duplicate pipeline name 'shop' (also pipelines[0])",
    )


@pytest.mark.parametrize(
    "listen,token,ok",
    [
        ("0.0.0.0:8080", None, False),
        ("10.1.2.3:80", None, False),
        ('"[::]:8080"', None, False),
        ('""', None, None),
        ("0.0.0.0:8080", "t0ken", True),
        ("localhost:8080", None, True),
        ('"[::1]:8080"', None, True),
        ("127.0.0.2:9000", None, True),
    ],
)
def test_non_loopback_api_needs_a_token(
    tmp_path: Path, listen: str, token: str | None, ok: bool | None
) -> None:
    text = MINIMAL + f"api:\n  listen: {listen}\n" + (f"  token: {token}\n" if token else "")
    path = write(tmp_path, text)
    if ok:
        assert load_config(path, environ={}).api.token == token
    elif ok is None:  # not HOST:PORT at all: the listen check speaks, not the token rule
        assert one_problem(path, environ={}) == (
            "api.listen",
            11,
            "expected HOST:PORT, e.g. 127.0.0.1:8080",
        )
    else:
        assert one_problem(path, environ={}) == (
            "api.listen",
            11,
            "listening on a non-loopback address needs api.token",
        )


def test_excluded_columns_need_a_captured_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """    columns:
      exclude:
        public.orders: [note]
        public.customers: [ssn]
""",
    )
    assert one_problem(path, environ={}) == (
        'pipelines[0].columns.exclude["public.customers"]',
        13,
        "table 'public.customers' is not in this pipeline's source.tables",
    )


def test_every_problem_is_reported_together_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        log:
          level: loud
          format: json
        api:
          listen: 0.0.0.0:8080
        pipelines:
          - name: shop
            source:
              type: postgres
              dsn: postgresql://cdc:${PGPASSWORD}@db/shop
              tables: [public.orders]
              heartbeat: 5
            sink:
              type: webhook
              url: ftp://example.com
              batch_max: "500"
          - name: shop
            source: {type: mysql, dsn: "mysql://x", tables: [a.b], server_id: 0}
            sink: {type: kafka}
        """,
    )
    found = problems(path, environ={})
    assert found == [
        ("log.level", 2, 'must be one of debug, info, warning, error (got "loud")'),
        ("api.listen", 5, "listening on a non-loopback address needs api.token"),
        ("pipelines[0].source.dsn", 10, "environment variable PGPASSWORD is not set"),
        (
            "pipelines[0].source.heartbeat",
            12,
            "unknown key 'heartbeat' (did you mean 'heartbeat_s'?)",
        ),
        ("pipelines[0].sink.url", 15, "expected an http:// or https:// URL"),
        (
            "pipelines[0].sink.batch_max",
            16,
            'expected an integer, got a string ("500"); write it without quotes',
        ),
        ("pipelines[1].name", 17, "duplicate pipeline name 'shop' (also pipelines[0])"),
        ("pipelines[1].source.server_id", 18, "must be from 1 to 4294967295"),
        ("pipelines[1].sink.bootstrap_servers", 19, "required key 'bootstrap_servers' is missing"),
    ]
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    lines = str(info.value).splitlines()
    assert (
        lines[0] == f'{path}:2: log.level: must be one of debug, info, warning, error (got "loud")'
    )
    assert len(lines) == len(found)


# ------------------------------------------------------------------ files that are not config


def test_missing_file_and_folder(tmp_path: Path) -> None:
    found = problems(str(tmp_path / "nope.yaml"))
    assert found == [("", None, "cannot read the file: No such file or directory")]
    assert problems(str(tmp_path))[0][2].startswith("cannot read the file:")


def test_empty_file_and_wrong_top_level(tmp_path: Path) -> None:
    assert one_problem(write(tmp_path, "# only a comment\n")) == (
        "",
        1,
        "the file is empty; it needs at least 'pipelines:'",
    )
    assert one_problem(write(tmp_path, "- a\n- b\n", "l.yaml")) == (
        "",
        1,
        "the file must be a mapping with a 'pipelines' key, got a list",
    )
    assert one_problem(write(tmp_path, "just text\n", "t.yaml"))[2] == (
        "the file must be a mapping with a 'pipelines' key, got a value"
    )


def test_malformed_yaml_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines:\n  - name: shop\n    source: [a\n  sink: b\n")
    path_, line, message = one_problem(path)
    assert path_ == "" and line == 4 and message.startswith("invalid YAML: ")
    path = write(tmp_path, "pipelines:\n\t- name: x\n", "tab.yaml")
    path_, line, message = one_problem(path)
    assert line == 2 and "does not allow tabs" in message


def test_several_documents_are_refused(tmp_path: Path) -> None:
    path_, line, message = one_problem(write(tmp_path, MINIMAL + "---\nlog: {}\n"))
    assert line == 10 and "expected a single document" in message


def test_binary_and_odd_text(tmp_path: Path) -> None:
    garbage = tmp_path / "bin.yaml"
    garbage.write_bytes(b"pipelines:\n  - name: x\n\xff\xfe\x00\x01garbage")
    assert one_problem(str(garbage)) == (
        "",
        3,
        "the file is not UTF-8 text (byte 0xff cannot be decoded)",
    )
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"log:\n  level: info\n  format: js\x00on\n")
    assert one_problem(str(nul)) == ("", 3, "character #x0000 is not allowed in a YAML file")
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(textwrap.dedent(MINIMAL).lstrip().encode("utf-16"))
    assert load_config(str(utf16), environ={}).pipelines[0].name == "shop"


def test_unsupported_tags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace("name: shop", "name: !!python/object:os.system shop")
        + "    snapshot: !!set {mode}\n",
    )
    found = problems(path, environ={})
    assert found[0][:2] == ("pipelines[0].name", 2)
    assert "could not determine a constructor" in found[0][2]
    assert found[1] == (
        "pipelines[0].snapshot",
        10,
        "unsupported YAML tag 'tag:yaml.org,2002:set' on a mapping",
    )


def test_invalid_date_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("name: shop", "name: 2024-13-45"))
    path_, line, message = one_problem(path, environ={})
    assert (path_, line) == ("pipelines[0].name", 2)
    assert message.startswith("cannot read the value '2024-13-45'")


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    lines.append("pipelines: *a9")
    path = write(tmp_path, "\n".join(lines) + "\n")
    start = time.monotonic()
    path_, line, message = one_problem(path)
    assert time.monotonic() - start < 2
    assert "expands to more than" in message and line is not None


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines: &a [*a]\n")
    assert one_problem(path) == (
        "",
        1,
        "this alias refers to a mapping or list that contains it",
    )


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "pipelines: " + "[" * 5000 + "]" * 5000 + "\n")
    path_, line, message = one_problem(path)
    assert line == 1 and "nested more than 64 levels" in message
    deep_block = "".join("  " * i + f"k{i}:\n" for i in range(100))
    path_, line, message = one_problem(write(tmp_path, deep_block, "deep.yaml"))
    assert "nested more than 64 levels" in message


def test_too_many_problems_stop(tmp_path: Path) -> None:
    items = "".join(f"      - {i}\n" for i in range(500))
    path = write(tmp_path, MINIMAL.replace("tables: [public.orders]", "tables:\n" + items))
    found = problems(path, environ={})
    assert found[-1] == ("", None, "too many problems; stopped after 200")
    assert len(found) == 201


# ------------------------------------------------------------------ environment substitution


def _with_source(extra: str, dsn: str = "postgresql://cdc@db/shop") -> str:
    return f"""
pipelines:
  - name: shop
    source:
      type: postgres
      dsn: {dsn}
      tables: [public.orders]
{extra}    sink:
      type: file
      path: out
"""


def test_substitution_forms(tmp_path: Path) -> None:
    text = _with_source(
        "      slot: ${SLOT:-cdc_default}\n      publication: ${PUB:-cdc_pub}\n",
        dsn='"postgresql://${PGUSER}:${PGPASSWORD}@db/$${literal}"',
    )
    cfg = load_config(write(tmp_path, text), environ={"PGUSER": "u", "PGPASSWORD": "p", "PUB": ""})
    source = cfg.pipelines[0].source
    assert source.dsn == "postgresql://u:p@db/${literal}"
    assert source.slot == "cdc_default"  # unset: the default
    assert source.publication == "cdc_pub"  # empty: the default too, like the shell


def test_substitution_set_but_empty_without_default(tmp_path: Path) -> None:
    text = _with_source("", dsn='"${DSN}"') + "api:\n  token: ${TOKEN:-}\n"
    cfg = load_config(write(tmp_path, text), environ={"DSN": "postgresql://db"})
    assert cfg.api.token is None  # an empty substitution in an optional field means null
    path = write(tmp_path, _with_source("", dsn="${DSN}"), "e.yaml")
    # set but empty is a value (the dsn check then refuses it)
    assert one_problem(path, environ={"DSN": ""})[0] == "pipelines[0].source.dsn"


def test_substituted_values_are_converted(tmp_path: Path) -> None:
    text = _with_source("      heartbeat_s: ${HB}\n      max_retained_wal_mb: ${WAL}\n") + (
        "api:\n  public_metrics: ${PM}\nlog:\n  level: ${LEVEL:-info}\n"
    )
    env = {"HB": "2.5", "WAL": "2048", "PM": "On", "LEVEL": "debug"}
    cfg = load_config(write(tmp_path, text), environ=env)
    assert cfg.pipelines[0].source.heartbeat_s == 2.5
    assert cfg.pipelines[0].source.max_retained_wal_mb == 2048
    assert cfg.api.public_metrics is True
    assert cfg.log.level == "debug"
    cfg = load_config(write(tmp_path, text), environ={**env, "HB": "7", "PM": "0"})
    assert cfg.pipelines[0].source.heartbeat_s == 7.0
    assert cfg.api.public_metrics is False


def test_failed_conversions_name_the_variable(tmp_path: Path) -> None:
    text = _with_source("      heartbeat_s: ${HB}\n      max_retained_wal_mb: ${WAL}\n") + (
        "api:\n  public_metrics: ${PM}\nlog:\n  level: ${LEVEL}\n"
    )
    env = {"HB": "soon", "WAL": "2.5", "PM": "maybe", "LEVEL": "loud"}
    assert problems(write(tmp_path, text), environ=env) == [
        ("pipelines[0].source.heartbeat_s", 7, "expected a number, but ${HB} gives 'soon'"),
        (
            "pipelines[0].source.max_retained_wal_mb",
            8,
            "expected an integer, but ${WAL} gives '2.5'",
        ),
        (
            "api.public_metrics",
            13,
            "expected true or false (or yes/no, on/off, 1/0), but ${PM} gives 'maybe'",
        ),
        (
            "log.level",
            15,
            "must be one of debug, info, warning, error, but ${LEVEL} gives 'loud'",
        ),
    ]


def test_literal_strings_are_never_converted(tmp_path: Path) -> None:
    text = _with_source('      max_retained_wal_mb: "2048"\n')
    assert one_problem(write(tmp_path, text), environ={}) == (
        "pipelines[0].source.max_retained_wal_mb",
        7,
        'expected an integer, got a string ("2048"); write it without quotes',
    )


def test_unset_variable_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    assert one_problem(path, environ={}) == (
        "pipelines[0].source.dsn",
        12,
        "environment variable PGPASSWORD is not set",
    )


def test_bad_references(tmp_path: Path) -> None:
    text = _with_source("      slot: ${1abc}\n      publication: x${Y\n")
    assert problems(write(tmp_path, text), environ={}) == [
        (
            "pipelines[0].source.slot",
            7,
            "'${1abc}' is not a variable reference: write ${NAME} or ${NAME:-default} "
            "(or $${ for a literal ${)",
        ),
        (
            "pipelines[0].source.publication",
            8,
            "'${' is not closed by '}' (write $${ for a literal ${)",
        ),
    ]


def test_substitute_function() -> None:
    env = {"A": "1", "E": ""}
    assert substitute("plain $A $$ {x}", env).text == "plain $A $$ {x}"
    sub = substitute("${A}-${B:-b}-${E:-e}-${E}-$${A}", env)
    assert (sub.text, sub.substituted, sub.names) == ("1-b-e--${A}", True, ["A", "B", "E", "E"])
    assert substitute("${MISSING}", env).errors == ["environment variable MISSING is not set"]
    sub = substitute("x${MISSING}y", env, no_env=True)
    assert (sub.text, sub.placeholder, sub.errors) == ("x${MISSING}y", True, [])
    assert not substitute("$${A}", env).substituted
    assert substitute("${A:-with:colon}", {}).text == "with:colon"


def test_no_env_placeholders_satisfy_their_types(tmp_path: Path) -> None:
    text = (
        _with_source(
            "      slot: ${SLOT}\n      heartbeat_s: ${HB}\n      max_retained_wal_mb: ${WAL}\n"
            "    snapshot:\n      mode: ${MODE}\n",
            dsn="postgresql://cdc:${PGPASSWORD}@db/shop",
        )
        + "api:\n  listen: ${LISTEN}\n  public_metrics: ${PM}\n  token: ${TOKEN}\nstate:\n  path: ${STATE_DIR}/state.sqlite\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})  # without --no-env they are problems
    cfg = load_config(path, no_env=True, environ={})
    source = cfg.pipelines[0].source
    assert source.dsn == "postgresql://cdc:${PGPASSWORD}@db/shop"
    assert source.slot == "${SLOT}"  # the check (an identifier) is skipped for placeholders
    assert source.heartbeat_s == 0  # a number (its check, > 0, is skipped)
    assert source.max_retained_wal_mb == 0
    assert cfg.pipelines[0].snapshot.mode == "initial"
    assert cfg.api.public_metrics is False
    assert cfg.api.listen == "${LISTEN}"
    assert cfg.api.token == "${TOKEN}"
    assert cfg.state.path == "${STATE_DIR}/state.sqlite"  # not resolved: a placeholder
    assert cfg.secrets == []  # placeholders are never secrets


def test_no_env_still_substitutes_what_is_set_and_reports_real_problems(tmp_path: Path) -> None:
    text = _with_source("      heartbeat_s: ${HB}\n      slot: Bad-Slot\n", dsn="${DSN}")
    found = problems(write(tmp_path, text), no_env=True, environ={"HB": "x"})
    assert found == [
        ("pipelines[0].source.heartbeat_s", 7, "expected a number, but ${HB} gives 'x'"),
        ("pipelines[0].source.slot", 8, "must match [a-z0-9_]{1,63}"),
    ]


def test_no_env_list_placeholder(tmp_path: Path) -> None:
    text = MINIMAL.replace("tables: [public.orders]", "tables: ${TABLES}")
    cfg = load_config(write(tmp_path, text), no_env=True, environ={})
    assert cfg.pipelines[0].source.tables == []
    text = MINIMAL.replace("tables: [public.orders]", "tables: ['${T1}', public.b]")
    cfg = load_config(write(tmp_path, text, "l.yaml"), no_env=True, environ={})
    assert cfg.pipelines[0].source.tables == ["${T1}", "public.b"]


def test_no_env_sink_type_placeholder_is_reported(tmp_path: Path) -> None:
    text = MINIMAL.replace("type: file", "type: ${SINK}")
    path_, line, message = one_problem(write(tmp_path, text), no_env=True, environ={})
    assert (path_, line) == ("pipelines[0].sink.type", 8)
    assert "unset variable" in message
    cfg = load_config(write(tmp_path, text, "s.yaml"), environ={"SINK": "file"})
    assert cfg.pipelines[0].sink_type == "file"


# ------------------------------------------------------------------ paths and secrets


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace("path: out", "path: ../out/./shop")
        + f"state:\n  path: {tmp_path}/abs.sqlite\n"
    )
    path = write(tmp_path, text, "conf/cdc.yaml")
    cwd = os.getcwd()
    os.chdir("/")
    try:
        cfg = load_config(os.path.relpath(path, "/"), environ={})
    finally:
        os.chdir(cwd)
    assert cfg.config_dir == str(tmp_path / "conf")
    assert cfg.file == str(tmp_path / "conf" / "cdc.yaml")
    assert cfg.pipelines[0].sink.path == str(tmp_path / "out" / "shop")
    assert cfg.state.path == str(tmp_path / "abs.sqlite")


def test_home_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = MINIMAL.replace("path: out", "path: ~/out")
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.pipelines[0].sink.path == str(tmp_path / "home" / "out")


def test_empty_path_is_a_problem(tmp_path: Path) -> None:
    text = MINIMAL.replace("path: out", 'path: ""')
    assert one_problem(write(tmp_path, text), environ={}) == (
        "pipelines[0].sink.path",
        9,
        "must not be empty",
    )


def test_secrets_are_collected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        state:
          dsn: postgresql://state:%40t%21@db/state
        api:
          token: ${TOKEN}
        pipelines:
          - name: shop
            source:
              type: postgres
              dsn: "host=db user=cdc password='p w\\\\'x' dbname=shop"
              tables: [public.orders]
            sink: {type: file, path: out}
          - name: hooks
            source: {type: mysql, dsn: "mysql://m:mpw@mysql", tables: [a.b]}
            sink:
              type: webhook
              url: https://example.com
              secret: ""
              headers: {Authorization: "Basic Zm9vOmJhcg=="}
        """,
    )
    cfg = load_config(path, environ={"TOKEN": "api-t0ken"})
    assert cfg.pipelines[0].source.dsn == "host=db user=cdc password='p w\\'x' dbname=shop"
    secrets = set(cfg.secrets)
    # of a DSN only the password is secret, so errors can still name the host and database
    assert secrets == {
        "p w'x",
        "%40t%21",
        "@t!",
        "api-t0ken",
        "mpw",
        "Basic Zm9vOmJhcg==",
        "Zm9vOmJhcg==",
    }
    assert len(cfg.secrets) == len(secrets)


# ------------------------------------------------------------------ iter_settings


def test_iter_settings() -> None:
    from cdc.config import ApiConfig, ColumnsConfig, PipelineConfig

    names = [name for name, *_ in iter_settings(ServiceConfig)]
    assert names == ["pipelines", "state", "api", "log"]
    assert [name for name, *_ in iter_settings(PipelineConfig)] == [
        "name",
        "source",
        "sink",
        "snapshot",
        "columns",
        "values",
        "transforms",
        "dead_letter",
    ]
    api = {name: (hint, default, meta) for name, hint, default, meta in iter_settings(ApiConfig)}
    assert api["listen"][0] is str and api["listen"][1] == "127.0.0.1:8080"
    assert api["token"][2]["secret"] is True
    assert api["token"][0] == str | None
    columns = list(iter_settings(ColumnsConfig))
    assert columns[0][0] == "exclude" and columns[0][1] == dict[str, list[str]]
    assert columns[0][2] == {}
    pipeline = {name: default for name, _, default, _ in iter_settings(PipelineConfig)}
    assert pipeline["name"] is MISSING and pipeline["source"] is MISSING
    assert type(pipeline["snapshot"]).__name__ == "SnapshotConfig"


# ------------------------------------------------------------------ odds and ends


def test_environ_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", "from-env")
    cfg = load_config(write(tmp_path, EXAMPLE))
    assert cfg.pipelines[0].source.dsn == "postgresql://cdc:from-env@db:5432/shop"


def test_pipelines_items_must_be_mappings(tmp_path: Path) -> None:
    assert one_problem(write(tmp_path, "pipelines: [shop]\n")) == (
        "pipelines[0]",
        1,
        "expected a mapping (key: value), got a string",
    )


def test_bad_merge_value(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "log:\n  <<: 5\n")
    assert one_problem(path, environ={}) == (
        "log",
        11,
        "a merge key '<<' needs a mapping or a list of mappings (aliases)",
    )


def test_a_check_that_raises_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdc.config import ApiConfig

    def boom(value: str) -> str | None:
        raise ValueError("kaput")

    field = ApiConfig.__dataclass_fields__["listen"]
    monkeypatch.setattr(field, "metadata", {**field.metadata, "check": boom})
    path = write(tmp_path, MINIMAL + "api:\n  listen: 127.0.0.1:1\n")
    assert one_problem(path, environ={}) == (
        "api.listen",
        11,
        "this value cannot be checked (ValueError: kaput)",
    )


def test_an_internal_error_is_still_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cdc.config_loader as loader

    def broken(self: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(loader._Checker, "_cross_checks", broken)
    assert one_problem(write(tmp_path, MINIMAL), environ={}) == (
        "",
        None,
        "internal error while checking the file (RuntimeError: bug)",
    )
