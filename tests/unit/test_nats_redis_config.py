"""The ``type: nats`` and ``type: redis`` sink sections: a URL of the wrong scheme (or without
a host) is a validation error naming the setting (no broker here)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ('{type: nats, url: "http://nats:4222"}', "expected nats://host:port or tls://host:port"),
        ('{type: nats, url: "nats://a:4222,amqp://b"}', "expected nats://host:port"),
        ('{type: nats, url: "nats://"}', "the URL has no host"),
        ('{type: redis, url: "http://redis:6379"}', "expected a redis://, rediss:// (TLS)"),
        ('{type: redis, url: "redis://"}', "the URL has no host"),
    ],
)
def test_a_url_of_the_wrong_scheme_is_a_validation_error(
    tmp_path: Path, sink: str, message: str
) -> None:
    path, _, text = one_problem(_file(tmp_path, sink), environ={})
    assert path == "pipelines[0].sink.url"
    assert message in text


@pytest.mark.parametrize(
    "sink",
    [
        '{type: nats, url: "nats://a:4222,tls://b:4222"}',
        '{type: redis, url: "rediss://:pw@redis:6380/1"}',
        '{type: redis, url: "unix:///run/redis.sock"}',
    ],
)
def test_the_schemes_each_sink_takes_are_accepted(tmp_path: Path, sink: str) -> None:
    from cdc.config_loader import load_config

    load_config(_file(tmp_path, sink), environ={})
