"""The ``sink:`` section of a pipeline with ``type: kafka``, and topic-name templates.

This module imports no Kafka client, so ``cdc validate`` and the docs generator can load it
on a machine without confluent-kafka.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cdc.plugin import setting
from cdc.settings import template_check
from cdc.settings import template_fields as settings_template_fields

#: settings that would weaken the delivery guarantee (acks=all, idempotence, bounded in-flight)
GUARANTEE_KEYS = frozenset(
    {
        "acks",
        "request.required.acks",
        "enable.idempotence",
        "max.in.flight",
        "max.in.flight.requests.per.connection",
    }
)
#: settings the sink owns (its own setting, or how it talks to librdkafka)
OWNED_KEYS = frozenset(
    {
        "bootstrap.servers",
        "metadata.broker.list",
        "transactional.id",
        "delivery.report.only.error",
        "on_delivery",
        "dr_cb",
        "dr_msg_cb",
        "error_cb",
        "logger",
    }
)
#: words in a librdkafka property name that mark its value as a secret (never logged)
SECRET_HINTS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "token")

TOPIC_FIELDS = ("pipeline", "schema", "table")
_LEGAL = re.compile(r"[^a-zA-Z0-9._-]")
MAX_TOPIC_LENGTH = 249


def _check_config(value: dict[str, Any]) -> str | None:
    bad = sorted(k for k in value if k in GUARANTEE_KEYS)
    if bad:
        return f"may not set {', '.join(bad)} (the sink keeps acks=all and idempotence on)"
    owned = sorted(k for k in value if k in OWNED_KEYS)
    if owned:
        hint = (
            " (use bootstrap_servers)"
            if {"bootstrap.servers", "metadata.broker.list"} & set(owned)
            else ""
        )
        return f"may not set {', '.join(owned)}: the sink sets it{hint}"
    return None


def _check_positive(value: int) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _literal_problem(literal: str) -> str | None:
    if _LEGAL.search(literal):
        bad = sorted(set(_LEGAL.findall(literal)))
        return (
            f"{''.join(bad)!r} cannot appear in a Kafka topic name (letters, digits, '.', '_' "
            "and '-' only)"
        )
    return None


def template_fields(template: str) -> list[str]:
    """The placeholders of a topic template; raises ValueError for a malformed one."""
    return settings_template_fields(template, _literal_problem)


def _template_check(allowed: tuple[str, ...]) -> Any:
    return template_check(allowed, "topic template", template_fields)


def render_topic(template: str, **values: str) -> str:
    """Fill a topic template. Characters Kafka does not allow in topic names are replaced by
    ``_`` in the filled-in values (a table named ``order items`` gives ``order_items``)."""
    clean = {k: _LEGAL.sub("_", v) for k, v in values.items()}
    return template.format_map(clean)


def is_secret_key(name: str) -> bool:
    lowered = name.lower()
    return any(h in lowered for h in SECRET_HINTS)


@dataclass
class KafkaConfig:
    bootstrap_servers: str = setting(doc="broker list, host:port[,host:port]", example="kafka:9092")
    topic: str = setting(
        "{pipeline}.{schema}.{table}",
        doc="topic template; {pipeline} {schema} {table} are filled in (characters Kafka does "
        "not allow become _)",
        check=_template_check(TOPIC_FIELDS),
    )
    schema_topic: str = setting(
        "{pipeline}.schemas",
        doc="topic for schema definitions, keyed name@version (a compacted topic, created "
        "when missing); {pipeline} is filled in; it tells a restart whether this pipeline "
        "already wrote events",
        check=_template_check(("pipeline",)),
    )
    tombstones: bool = setting(
        True, doc="write a tombstone (null value) after each delete with a key"
    )
    topic_partitions: int = setting(
        6, doc="partitions of topics the sink creates", check=_check_positive
    )
    topic_replication_factor: int = setting(
        3,
        doc="replication factor of topics the sink creates (at most the number of brokers)",
        check=_check_positive,
    )
    config: dict[str, Any] = setting(
        default_factory=dict,
        doc="passed to librdkafka (e.g. compression.type, security.protocol, sasl.*); may not "
        "set acks, enable.idempotence or max.in.flight; values of password/secret keys are "
        "never logged",
        check=_check_config,
        secret=False,
    )
