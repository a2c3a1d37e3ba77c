"""The pipeline file's typed model.

Each section is a dataclass whose fields are declared with :func:`cdc.plugin.setting`; the
loader (:mod:`cdc.config_loader`) validates YAML against these classes and the plugins'
``Config`` classes, and ``docs/configuration.md`` is generated from them, so the docs cannot
drift from what is checked.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cdc import names
from cdc.settings import setting

NAME_RE = re.compile(r"^[a-z0-9_]{1,48}$")


def _check_listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return "expected HOST:PORT, e.g. 127.0.0.1:8080"
    if not port.isdigit() or len(port) > 5 or not 0 <= int(port) <= 65535:
        shown = port if len(port) <= 12 else port[:12] + "..."
        return f"port {shown!r} is not a number from 0 to 65535"
    return None


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_token(value: str | None) -> str | None:
    if value is not None and not value.strip():
        return "must not be empty (leave it out to run without a token)"
    return None


def _check_name(value: str) -> str | None:
    if not NAME_RE.match(value):
        return "must match [a-z0-9_]{1,48} (it names replication slots, which allow no '-')"
    return None


def _check_positive(value: int) -> str | None:
    return None if value > 0 else "must be greater than 0"


@dataclass
class StateConfig:
    path: str = setting(
        "./cdc-state.sqlite",
        doc="SQLite file holding checkpoints, schema history and snapshot progress; relative "
        "to the config file's folder",
        path=True,
    )
    dsn: str | None = setting(
        None,
        doc="PostgreSQL database shared by several service instances (instead of `path`)",
        secret=True,
    )


@dataclass
class ApiConfig:
    listen: str = setting(
        "127.0.0.1:8080", doc="HOST:PORT of the admin HTTP API", check=_check_listen
    )
    token: str | None = setting(
        None,
        doc="when set, every endpoint but /healthz and /livez needs `Authorization: Bearer "
        "TOKEN`; required when `listen` is not a loopback address",
        secret=True,
        check=_check_token,
    )
    public_metrics: bool = setting(False, doc="serve /metrics without the token")


@dataclass
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = setting("info", doc="log level")
    format: Literal["auto", "json", "console"] = setting(
        "auto",
        doc="`auto`: `console` when stderr is a terminal, `json` otherwise; `json`: one JSON "
        "object per line on stderr; `console`: for people",
    )


def _check_exclude(value: dict[str, list[str]]) -> str | None:
    for table in value:
        problem = names.problem(table)
        if problem:
            return problem
    return None


@dataclass
class SnapshotConfig:
    mode: Literal["initial", "never", "initial_only"] = setting(
        "initial",
        doc="`initial`: snapshot every listed table once while streaming; `never`: only on "
        "demand; `initial_only`: snapshot, then finish without streaming",
    )
    chunk_rows: int = setting(10000, doc="rows read per snapshot chunk", check=_check_positive)


@dataclass
class ColumnsConfig:
    exclude: dict[str, list[str]] = setting(
        default_factory=dict,
        doc="per table (`schema.table`, quoted like in `tables`), columns left out of events and "
        "schema versions; a column the table does not have stops the pipeline when the table's "
        "schema arrives",
        check=_check_exclude,
    )

    def __post_init__(self) -> None:
        self.exclude = {
            names.normalize(t): cols for t, cols in self.exclude.items()
        }


@dataclass
class ValuesConfig:
    bigint: Literal["number", "string"] = setting(
        "number",
        doc="`string` writes int8 / BIGINT [UNSIGNED] as JSON strings (for consumers that "
        "read numbers as doubles)",
    )


#: the ``debezium:`` block of a sink (the Debezium-compatible format, cdc/debezium.py): Debezium's own property names, with
#: the values each takes (a tuple of words) or its type
DEBEZIUM_PROPERTIES: dict[str, tuple[str, ...] | type] = {
    "topic.prefix": str,
    "schemas.enable": bool,
    "decimal.handling.mode": ("precise", "string", "double"),
    "time.precision.mode": ("adaptive", "adaptive_time_microseconds", "connect"),
    "binary.handling.mode": ("bytes", "base64", "base64-url-safe", "hex"),
    "interval.handling.mode": ("numeric", "string"),
    "bigint.unsigned.handling.mode": ("long", "precise"),
    "tombstones.on.delete": bool,
    "skipped.operations": str,
    "provide.transaction.metadata": bool,
    "unavailable.value.placeholder": str,
}

#: the built-in transforms; plugins add theirs under ``cdc.transforms``
TRANSFORMS = ("filter", "mask", "route", "unwrap", "outbox")


def check_debezium(value: dict[str, object]) -> str | None:
    """Problems of a sink's ``debezium:`` block (names and values only)."""
    for key, v in value.items():
        want = DEBEZIUM_PROPERTIES.get(key)
        if want is None:
            return f"unknown Debezium property {key!r}; supported: {', '.join(DEBEZIUM_PROPERTIES)}"
        if isinstance(want, tuple):
            if v not in want:
                return f"{key} must be one of {', '.join(want)}"
        elif want is bool and not isinstance(v, bool):
            return f"{key} must be true or false"
        elif want is str and not isinstance(v, str):
            return f"{key} must be a string"
        if key == "skipped.operations":
            words = [w.strip() for w in str(v).split(",") if w.strip()]
            if words != ["none"] and (not words or any(w not in ("c", "u", "d", "t") for w in words)):
                return "skipped.operations is `none` or a comma-separated list of c, u, d, t"
    return None


def _check_transforms(value: list[Any]) -> str | None:
    from cdc import registry

    known = list(TRANSFORMS) + sorted(registry.available("transform"))
    for i, item in enumerate(value):
        if not isinstance(item, dict) or len(item) != 1:
            return f"item {i}: each transform is a mapping with one key, its name (e.g. `- filter: {{...}}`)"
        (name, settings), = item.items()
        if name not in known:
            return f"item {i}: unknown transform {name!r}; known: {', '.join(known)}"
        if settings is not None and not isinstance(settings, dict):
            return f"item {i}: the settings of {name} are a mapping"
    return None


@dataclass
class PipelineConfig:
    name: str = setting(doc="pipeline name, unique; names the default slot and publication", check=_check_name)
    source: Any = setting(doc="where changes come from; `type` picks the source plugin")
    sink: Any = setting(doc="where events go; `type` picks the sink plugin")
    snapshot: SnapshotConfig = setting(default_factory=SnapshotConfig, doc="snapshots")
    columns: ColumnsConfig = setting(default_factory=ColumnsConfig, doc="column filters")
    values: ValuesConfig = setting(default_factory=ValuesConfig, doc="value mapping options")
    transforms: list[dict[str, object]] = setting(
        default_factory=list,
        doc="ordered transforms applied to every event before the sink (filter, mask, route, "
        "unwrap, outbox, or a plugin's name); see docs/transforms.md",
        check=_check_transforms,
    )
    dead_letter: Any = setting(
        None,
        doc="a sink section (any sink type) for the events that cannot be delivered for a "
        "reason of their own; see docs/transforms.md",
    )
    #: type names of source and sink, as written in the file (filled by the loader)
    source_type: str = field(default="", metadata={"internal": True})
    sink_type: str = field(default="", metadata={"internal": True})
    dead_letter_type: str = field(default="", metadata={"internal": True})
    #: the sink's ``format`` and ``debezium`` keys, common to every sink (filled by the loader)
    sink_format: str = field(default="cdc", metadata={"internal": True})
    debezium: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})


@dataclass
class ServiceConfig:
    pipelines: list[PipelineConfig] = setting(doc="the pipelines this service runs")
    state: StateConfig = setting(default_factory=StateConfig, doc="where the service keeps its state")
    api: ApiConfig = setting(default_factory=ApiConfig, doc="admin HTTP API")
    log: LogConfig = setting(default_factory=LogConfig, doc="logging")
    #: absolute path of the file and its folder (filled by the loader)
    file: str = field(default="", metadata={"internal": True})
    config_dir: str = field(default=".", metadata={"internal": True})
    #: every secret value found in the file (filled by the loader; never logged)
    secrets: list[str] = field(default_factory=list, metadata={"internal": True})

    def pipeline(self, name: str) -> PipelineConfig | None:
        for p in self.pipelines:
            if p.name == name:
                return p
        return None
