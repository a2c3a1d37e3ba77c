"""Property tests: whatever a pipeline file contains, :func:`load_config` returns a
ServiceConfig or raises ConfigError with at least one problem; never anything else (no
traceback, no hang, no internal error)."""

from __future__ import annotations

import copy
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.config import ServiceConfig
from cdc.config_loader import load_config
from cdc.errors import ConfigError

from .test_config import ensure_builtin_plugins

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ENV = {"PGPASSWORD": "pw", "HB": "3", "EMPTY": ""}


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mp = pytest.MonkeyPatch()
    ensure_builtin_plugins(mp)
    yield tmp_path_factory.mktemp("fuzz") / "cdc.yaml"
    mp.undo()


def check_outcome(path: Path, *, no_env: bool = False) -> ServiceConfig | None:
    try:
        cfg = load_config(str(path), no_env=no_env, environ=ENV)
    except ConfigError as exc:
        assert exc.problems, "ConfigError without problems"
        for p in exc.problems:
            assert isinstance(p.path, str) and isinstance(p.message, str) and p.message
            assert p.line is None or (isinstance(p.line, int) and p.line >= 1)
            assert not p.message.startswith("internal error"), p.message
        str(exc)  # renders
        return None
    assert isinstance(cfg, ServiceConfig)
    assert cfg.pipelines
    return cfg


VALID: dict[str, Any] = {
    "state": {"path": "./cdc-state.sqlite"},
    "api": {"listen": "127.0.0.1:8080", "public_metrics": False},
    "log": {"level": "info", "format": "json"},
    "pipelines": [
        {
            "name": "shop",
            "source": {
                "type": "postgres",
                "dsn": "postgresql://cdc:${PGPASSWORD}@db:5432/shop",
                "tables": ["public.orders", "public.customers"],
                "slot": "cdc_shop",
                "heartbeat_s": "${HB}",
                "max_retained_wal_mb": 10240,
            },
            "snapshot": {"mode": "initial", "chunk_rows": 10000},
            "columns": {"exclude": {"public.customers": ["ssn"]}},
            "values": {"bigint": "number"},
            "sink": {"type": "file", "path": "./out/shop", "rotate_mb": 128},
        },
        {
            "name": "hooks",
            "source": {"type": "mysql", "dsn": "mysql://cdc@mysql", "tables": ["shop.a"]},
            "sink": {
                "type": "webhook",
                "url": "https://example.com/cdc",
                "headers": {"X-Token": "${EMPTY:-t}"},
                "batch_max": 10,
            },
        },
        {
            "name": "stream",
            "source": {"type": "mysql", "dsn": "mysql://cdc@mysql", "tables": ["shop.b"]},
            "sink": {
                "type": "kafka",
                "bootstrap_servers": "kafka:9092",
                "config": {"compression.type": "lz4"},
            },
        },
    ],
}

# every place a value can be replaced, as a path of keys and list indexes
KNOWN_PATHS: list[tuple[Any, ...]] = [
    (),
    ("state",),
    ("state", "path"),
    ("state", "dsn"),
    ("api",),
    ("api", "listen"),
    ("api", "token"),
    ("api", "public_metrics"),
    ("log",),
    ("log", "level"),
    ("pipelines",),
    ("pipelines", 0),
    ("pipelines", 0, "name"),
    ("pipelines", 0, "source"),
    ("pipelines", 0, "source", "type"),
    ("pipelines", 0, "source", "dsn"),
    ("pipelines", 0, "source", "tables"),
    ("pipelines", 0, "source", "tables", 0),
    ("pipelines", 0, "source", "heartbeat_s"),
    ("pipelines", 0, "source", "max_retained_wal_mb"),
    ("pipelines", 0, "snapshot"),
    ("pipelines", 0, "snapshot", "mode"),
    ("pipelines", 0, "snapshot", "chunk_rows"),
    ("pipelines", 0, "columns"),
    ("pipelines", 0, "columns", "exclude"),
    ("pipelines", 0, "columns", "exclude", "public.customers"),
    ("pipelines", 0, "values", "bigint"),
    ("pipelines", 0, "sink"),
    ("pipelines", 0, "sink", "type"),
    ("pipelines", 0, "sink", "path"),
    ("pipelines", 0, "sink", "rotate_mb"),
    ("pipelines", 1, "source", "server_id"),
    ("pipelines", 1, "sink", "url"),
    ("pipelines", 1, "sink", "headers"),
    ("pipelines", 1, "sink", "headers", "X-Token"),
    ("pipelines", 1, "sink", "timeout_s"),
    ("pipelines", 2, "sink", "config"),
    ("pipelines", 2, "sink", "config", "compression.type"),
    ("pipelines", 2, "sink", "tombstones"),
    ("pipelines", 2, "sink", "topic_partitions"),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "${PGPASSWORD}",
            "${UNSET}",
            "${UNSET:-5}",
            "${HB}",
            "$${x}",
            "${",
            "${1}",
            "postgresql://a:b@h/db",
            "public.orders",
            "0.0.0.0:80",
            "initial",
            "yes",
            "",
        ]
    ),
    st.dates(),
)
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["type", "name", "path", "tables", "dsn", "<<", "exclude", "url"]),
)
structures = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=12,
)


def _replace(doc: Any, where: tuple[Any, ...], value: Any) -> Any:
    if not where:
        return value
    head, rest = where[0], where[1:]
    if isinstance(doc, dict):
        doc[head] = _replace(doc.get(head), rest, value)
    elif isinstance(doc, list) and isinstance(head, int) and head < len(doc):
        doc[head] = _replace(doc[head], rest, value)
    return doc


def test_the_valid_document_is_valid(fuzz_file: Path) -> None:
    fuzz_file.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    cfg = check_outcome(fuzz_file)
    assert cfg is not None and [p.name for p in cfg.pipelines] == ["shop", "hooks", "stream"]


@FUZZ
@given(st.text(max_size=400))
def test_random_text(fuzz_file: Path, text: str) -> None:
    fuzz_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_outcome(fuzz_file)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(fuzz_file: Path, data: bytes) -> None:
    fuzz_file.write_bytes(data)
    check_outcome(fuzz_file)


YAML_PIECES = [
    "pipelines:",
    "- ",
    "  ",
    "    ",
    "\n",
    ": ",
    ":",
    "name: shop",
    "source:",
    "sink:",
    "type: postgres",
    "type: file",
    "type: kafka",
    "type: mysql",
    "type: webhook",
    "dsn: ",
    "tables: [public.a]",
    "path: out",
    "url: https://x",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: *a",
    "!!str ",
    "!!int ",
    "!!binary ",
    "!!set ",
    "!!python/none ",
    "!tag ",
    "? ",
    "---",
    "...",
    "#",
    "'",
    '"',
    "|",
    ">",
    "%YAML 1.1",
    "${X}",
    "${PGPASSWORD}",
    "$${",
    "~",
    "null",
    "yes",
    "0o17",
    "0x1F",
    "1_000",
    "1e9",
    ".inf",
    ".nan",
    "2024-01-01",
    "12:30:00",
    "\t",
    "\\",
    "\u00e9",
    "\ufeff",
    "\x85",
    "=",
    "state:",
    "api:",
    "listen: 0.0.0.0:1",
    "log:",
    "level: ",
    "exclude: {public.a: [c]}",
    "columns:",
    "snapshot:",
    "chunk_rows: 0",
]


@FUZZ
@given(st.lists(st.sampled_from(YAML_PIECES), max_size=40))
def test_random_yaml_ish_documents(fuzz_file: Path, pieces: list[str]) -> None:
    fuzz_file.write_text("".join(pieces), encoding="utf-8")
    check_outcome(fuzz_file)
    check_outcome(fuzz_file, no_env=True)


@FUZZ
@given(structures)
def test_random_structures(fuzz_file: Path, doc: Any) -> None:
    fuzz_file.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    check_outcome(fuzz_file)


@FUZZ
@given(st.sampled_from(KNOWN_PATHS), structures, st.booleans())
def test_wrong_types_at_known_keys(
    fuzz_file: Path, where: tuple[Any, ...], value: Any, no_env: bool
) -> None:
    doc = _replace(copy.deepcopy(VALID), where, value)
    fuzz_file.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    check_outcome(fuzz_file, no_env=no_env)


@FUZZ
@given(
    st.sampled_from(KNOWN_PATHS[1:]),
    st.text(alphabet=string.ascii_letters + string.digits + "_.${}:-", max_size=12),
)
def test_unknown_keys_at_known_places(fuzz_file: Path, where: tuple[Any, ...], key: str) -> None:
    doc = copy.deepcopy(VALID)
    target: Any = doc
    for part in where:
        if isinstance(target, dict):
            target = target.get(part)
        elif isinstance(target, list) and isinstance(part, int) and part < len(target):
            target = target[part]
        else:
            target = None
    if isinstance(target, dict):
        target[key] = 1
    fuzz_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    check_outcome(fuzz_file)
