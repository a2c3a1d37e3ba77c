"""Kafka sink (not available yet: its settings validate, `cdc run` refuses)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdc.errors import NotAvailableYet
from cdc.plugin import Sink, setting

_FORBIDDEN = {"acks", "enable.idempotence", "max.in.flight", "max.in.flight.requests.per.connection"}


def _check_config(value: dict[str, Any]) -> str | None:
    bad = sorted(k for k in value if k in _FORBIDDEN)
    if bad:
        return f"may not set {', '.join(bad)} (the sink keeps acks=all and idempotence on)"
    return None


def _check_positive(value: int) -> str | None:
    return None if value > 0 else "must be greater than 0"


@dataclass
class KafkaConfig:
    bootstrap_servers: str = setting(doc="broker list, host:port[,host:port]", example="kafka:9092")
    topic: str = setting(
        "{pipeline}.{schema}.{table}",
        doc="topic template; {pipeline} {schema} {table} are filled in",
    )
    schema_topic: str | None = setting(None, doc="topic for schema definitions, keyed name@version")
    tombstones: bool = setting(True, doc="write a tombstone after each delete with a key")
    topic_partitions: int = setting(6, doc="partitions of topics the sink creates", check=_check_positive)
    topic_replication_factor: int = setting(
        3, doc="replication factor of topics the sink creates", check=_check_positive
    )
    config: dict[str, Any] = setting(
        default_factory=dict,
        doc="passed to librdkafka; may not set acks, enable.idempotence or max.in.flight",
        check=_check_config,
        secret=False,
    )


class KafkaSink(Sink):
    Config = KafkaConfig
    available = False

    def open(self, resume: str | None) -> None:
        raise NotAvailableYet("the kafka sink is not available yet in this build of cdc")

    def write_schema(self, schema: Any) -> None:  # pragma: no cover - never opened
        pass

    def write(self, events: Sequence[Any]) -> None:  # pragma: no cover - never opened
        pass

    def flush(self) -> str | None:  # pragma: no cover - never opened
        return None

    def close(self) -> None:
        pass
