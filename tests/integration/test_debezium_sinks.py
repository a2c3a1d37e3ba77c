"""`format: debezium` on the sinks besides Kafka: a real ``cdc run`` from PostgreSQL 15 into a
webhook receiver, NATS JetStream, Redis Streams and RabbitMQ (real servers), each pipeline in
`format: debezium` with Debezium's defaults. Each message carries the record's value (the
values themselves are judged against real Debezium in test_debezium_pg.py), its key where the
message has a key slot or in header ``cdc-key``; no tombstones; truncates are skipped by
default (``skipped.operations: t``) without upsetting the sink's bookkeeping (Redis counts its
queued commands, RabbitMQ and NATS their confirmations)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc_local.postgres import LocalPostgres, free_port
from tests.helpers import (
    CdcService,
    create_database,
    drop_database,
    execute,
    wait_for,
    write_config,
)
from tests.nats_harness import NatsHarness
from tests.rabbitmq_harness import RabbitHarness
from tests.redis_harness import RedisHarness, read_stream
from tests.webhook_harness import Receiver

#: (op, key, after or before) of what Debezium writes for the workload below, in order
EXPECTED = [
    ("c", {"id": 1}, {"id": 1, "name": "one"}),
    ("c", {"id": 2}, {"id": 2, "name": "two"}),
    ("u", {"id": 1}, {"id": 1, "name": "uno"}),
    ("d", {"id": 2}, {"id": 2, "name": None}),  # a key change: the delete (REPLICA IDENTITY DEFAULT)
    ("c", {"id": 3}, {"id": 3, "name": "two"}),
    ("d", {"id": 1}, {"id": 1, "name": None}),
    ("c", {"id": 9}, {"id": 9, "name": "end"}),  # after the (skipped) truncate
]


def _shape(value: bytes, key: Any) -> tuple[str, Any, Any]:
    v = orjson.loads(value)
    assert v["source"]["connector"] == "postgresql" and v["source"]["table"] == "items"
    return v["op"], key, v["after"] if v["after"] is not None else v["before"]


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory, pg15: LocalPostgres) -> Iterator[dict[str, list[Any]]]:
    work = tmp_path_factory.mktemp("dbzsinks")
    name, dsn = create_database(pg15)
    receiver = Receiver()
    nats = NatsHarness(work / "n")
    redis = RedisHarness(work / "r")
    rabbit = RabbitHarness(work / "q")
    try:
        execute(dsn, "CREATE TABLE items (id int PRIMARY KEY, name text)")
        sinks = {
            "hook": {"type": "webhook", "url": receiver.url, "batch_max": 3},
            "nats": nats.sink_config(),
            "redis": redis.sink_config(),
            "rabbit": rabbit.sink_config(),
        }
        pipelines = [
            {
                "name": n,
                "source": {"type": "postgres", "dsn": dsn, "tables": ["public.items"], "heartbeat_s": 1},
                "snapshot": {"mode": "never"},
                "sink": {**sink, "format": "debezium"},
            }
            for n, sink in sinks.items()
        ]
        cfg = write_config(work, pipelines, api_port=free_port())
        with CdcService(cfg) as svc:
            for n in sinks:
                svc.wait_state(n, "running", timeout=60)
            execute(
                dsn,
                "INSERT INTO items VALUES (1, 'one'), (2, 'two')",
                "UPDATE items SET name = 'uno' WHERE id = 1",
                "UPDATE items SET id = 3 WHERE id = 2",
                "DELETE FROM items WHERE id = 1",
                "TRUNCATE items",
                "INSERT INTO items VALUES (9, 'end')",
            )
            out: dict[str, list[Any]] = {}

            def collect() -> bool:
                out["hook"] = [
                    _shape(orjson.dumps(v), None) for r in receiver.delivered() for v in r.events
                ]
                out["nats"] = [
                    _shape(m.data, orjson.loads(m.headers["cdc-key"]))
                    for m in nats.messages()
                    if "cdc-op" in m.headers
                ]
                c = redis.server.client()
                try:
                    entries = read_stream(c, "cdc:redis:public.items")
                finally:
                    c.close()
                out["redis"] = [_shape(e["value"], orjson.loads(e["key"])) for e in entries]
                out["rabbit"] = [
                    _shape(m.body, orjson.loads(m.headers["cdc-key"]))
                    for m in rabbit.messages()
                    if m.type != "schema"
                ]
                return all(len(v) >= len(EXPECTED) for v in out.values())

            wait_for(collect, 60, what="every sink's messages")
            assert svc.stop() == 0
        yield out
    finally:
        receiver.close()
        nats.close()
        redis.close()
        rabbit.close()
        drop_database(pg15, name)


@pytest.mark.parametrize("sink", ["hook", "nats", "redis", "rabbit"])
def test_each_message_is_the_debezium_record(delivered: dict[str, list[Any]], sink: str) -> None:
    got = delivered[sink]
    if sink == "hook":  # the webhook's items carry values only
        assert [(op, after) for op, _, after in got] == [(op, after) for op, _, after in EXPECTED]
    else:
        assert got == EXPECTED


def test_the_file_sink_and_kafka_are_covered_elsewhere() -> None:
    """(test_debezium_pg.py compares both with real Debezium.)"""
    assert Path(__file__).with_name("test_debezium_pg.py").exists()
