"""The ``type: rabbitmq`` sink section: validation, secrets, routing keys (no broker here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.config_loader import load_config
from cdc.errors import ConfigError
from sinks.rabbitmq.config import display_url, render_key, vhost_of
from sinks.rabbitmq.sink import LEDGER_PREFIX, ledger_queue
from tests.unit.test_config import one_problem, write


def _file(tmp_path: Path, sink: str) -> str:
    return write(
        tmp_path,
        f"""
        pipelines:
          - name: shop
            source: {{type: postgres, dsn: "postgresql://cdc@db/shop", tables: [public.orders]}}
            sink: {sink}
        """,
    )


def test_defaults_and_the_password_as_a_secret(tmp_path: Path) -> None:
    path = _file(tmp_path, '{type: rabbitmq, url: "amqp://cdc:${RMQ_PW}@mq:5672/shop"}')
    cfg = load_config(path, environ={"RMQ_PW": "p4ss-w0rd"})
    sink = cfg.pipelines[0].sink
    assert (sink.exchange, sink.routing_key, sink.schema_routing_key, sink.mandatory) == (
        "cdc",
        "{pipeline}.{schema}.{table}",
        "{pipeline}.schemas",
        True,
    )
    assert cfg.secrets == ["p4ss-w0rd"]  # the password only, not the whole URL


def test_a_bad_url_is_refused_without_quoting_the_password(tmp_path: Path) -> None:
    path = _file(tmp_path, '{type: rabbitmq, url: "amqp://cdc:${RMQ_PW}@mq:5672/shop"}')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"RMQ_PW": "abcd/efgh"})
    assert "percent-encoded" in str(info.value)
    assert "abcd" not in str(info.value) and "efgh" not in str(info.value)


@pytest.mark.parametrize(
    ("sink", "key", "message"),
    [
        ('{type: rabbitmq, url: "http://mq"}', "url", "expected an amqp:// or amqps:// URL"),
        ('{type: rabbitmq, url: "amqp://mq", exchange: "amq.topic"}', "exchange", "reserved"),
        ('{type: rabbitmq, url: "amqp://mq", exchange: ""}', "exchange", "must not be empty"),
        (
            '{type: rabbitmq, url: "amqp://mq", routing_key: "{pipeline}.{db}"}',
            "routing_key",
            "unknown placeholder {db}",
        ),
        (
            '{type: rabbitmq, url: "amqp://mq", schema_routing_key: "{table}.schemas"}',
            "schema_routing_key",
            "unknown placeholder {table}",
        ),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, sink: str, key: str, message: str) -> None:
    path_, _, text = one_problem(_file(tmp_path, sink), environ={})
    assert path_ == f"pipelines[0].sink.{key}"
    assert message in text


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = _file(tmp_path, '{type: rabbitmq, url: "amqp://mq", queue: x}')
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_urls_are_shown_without_password_and_vhosts_read() -> None:
    assert display_url("amqp://cdc:s3cret@mq:5672/shop?heartbeat=5") == "amqp://cdc@mq:5672/shop"
    assert vhost_of("amqp://mq") == "/" and vhost_of("amqp://mq/%2F") == "/"
    assert vhost_of("amqps://u:p@mq/prod") == "prod"
    assert render_key("{pipeline}.{schema}.{table}", pipeline="p", schema="s", table="t") == "p.s.t"


def test_ledger_queue_name_fits_amqp() -> None:
    assert ledger_queue("cdc", "shop") == "cdc-ledger.cdc.shop"
    long = ledger_queue("x" * 250, "shop")
    assert long.startswith(LEDGER_PREFIX) and len(long) <= 255 and long.endswith(".shop")
