"""Dead letters (contract section 10) on real servers: a transform's runtime error, a record
over the Kafka producer's size limit and a webhook receiver refusing one payload each set that
one event aside in the dead-letter sink — as `{"event", "error", "sink", "at"}`, masked, counted
in /pipelines and /metrics — and the pipeline goes on; a dead-letter sink that fails stops it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_local.postgres import LocalPostgres
from tests.helpers import (
    CdcService,
    create_database,
    drop_database,
    execute,
    find_log,
    log_records,
    metric_value,
    pg_pipeline,
    read_events,
    wait_for,
    write_config,
)
from tests.kafka_harness import KafkaHarness, TansuBroker, shared_broker
from tests.webhook_harness import Receiver

MARKER = "zz-unmasked-marker@example.org"


@pytest.fixture
def db(pg15: LocalPostgres) -> Iterator[str]:
    name, dsn = create_database(pg15)
    try:
        yield dsn
    finally:
        drop_database(pg15, name)


@pytest.fixture(scope="session")
def tansu() -> TansuBroker:
    return shared_broker()


def _letters(folder: Path) -> list[dict[str, Any]]:
    return read_events(folder)


def _metrics(svc: CdcService) -> str:
    status, body = svc.get("/metrics")
    assert status == 200
    return body if isinstance(body, str) else body.decode()


def test_a_transform_error_is_dead_lettered_masked_and_the_pipeline_goes_on(
    tmp_path: Path, db: str, free_port: int
) -> None:
    execute(db, "CREATE TABLE customers (id int PRIMARY KEY, email text, status text)")
    out, dead = tmp_path / "out", tmp_path / "dead"
    p = pg_pipeline("shop", db, ["public.customers"], out)
    # the filter reads `after` of a delete (an error), and the mask comes after it in the list:
    # the dead letter is masked all the same
    p["transforms"] = [
        {"filter": {"when": 'after.status != "draft"'}},
        {"mask": {"key": "k", "columns": {"public.customers": {"email": "hash"}}}},
    ]
    p["dead_letter"] = {"type": "file", "path": str(dead)}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("shop", "running")
        execute(
            db,
            "ALTER TABLE customers REPLICA IDENTITY FULL",
            f"INSERT INTO customers VALUES (1, '{MARKER}', 'new')",
            "DELETE FROM customers WHERE id = 1",
            "INSERT INTO customers VALUES (2, 'b@example.org', 'new')",
        )
        wait_for(lambda: len(read_events(out)) == 2 and len(_letters(dead)) == 1, 30,
                 what="2 events and 1 dead letter")
        doc = svc.pipeline("shop")
        assert doc["state"] == "running" and doc["dead_letters"] == 1
        assert metric_value(_metrics(svc), "cdc_dead_letters_total", pipeline="shop") == 1
        assert svc.stop() == 0
        logs = svc.logs()

    assert [e["after"]["id"] for e in read_events(out)] == [1, 2]
    (letter,) = _letters(dead)
    assert set(letter) == {"event", "error", "sink", "at"}
    assert letter["sink"] == "transform:filter"
    assert "null" in letter["error"]
    assert letter["at"].endswith("Z") and letter["at"][:2] == "20"
    event = letter["event"]
    assert event["op"] == "d" and event["key"] == {"id": 1}
    assert event["before"]["email"] != MARKER and len(event["before"]["email"]) == 64
    record = find_log(log_records(logs), "dead_lettered", pipeline="shop")
    assert record is not None and record["event_id"] == event["id"]
    for where, data in {"dead": b"".join(f.read_bytes() for f in dead.iterdir()), "log": logs.encode(),
                        "out": b"".join(f.read_bytes() for f in out.iterdir())}.items():
        assert MARKER.encode() not in data, where


def test_a_record_over_the_kafka_limit_is_dead_lettered(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE docs (id int PRIMARY KEY, body text)")
    harness = KafkaHarness(tmp_path, tansu)
    dead = tmp_path / "dead"
    p = pg_pipeline("p", db, ["public.docs"], tmp_path / "unused")
    p["sink"] = harness.sink_config()
    p["dead_letter"] = {"type": "file", "path": str(dead)}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(db, "INSERT INTO docs VALUES (1, 'small')")
        execute(db, "INSERT INTO docs SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 65536) g")
        execute(db, "INSERT INTO docs VALUES (3, 'after')")
        wait_for(lambda: len(harness.events()) == 2 and len(_letters(dead)) == 1, 60,
                 what="2 records and 1 dead letter")
        assert svc.pipeline("p")["dead_letters"] == 1
        assert svc.stop() == 0
    assert [e["after"]["id"] for e in harness.events()] == [1, 3]
    (letter,) = _letters(dead)
    assert letter["sink"] == "kafka"
    assert "message.max.bytes" in letter["error"] and letter["event"]["id"] in letter["error"]
    assert letter["event"]["after"]["id"] == 2 and len(letter["event"]["after"]["body"]) == 65536 * 32


def test_a_webhook_refusing_one_payload_dead_letters_that_event_only(
    tmp_path: Path, db: str, free_port: int
) -> None:
    execute(db, "CREATE TABLE t (id int PRIMARY KEY, name text)")
    receiver = Receiver()
    receiver.refuse = lambda e: (e.get("after") or {}).get("name") == "poison"
    dead = tmp_path / "dead"
    try:
        p = pg_pipeline("p", db, ["public.t"], tmp_path / "unused")
        p["sink"] = {"type": "webhook", "url": receiver.url, "max_backoff_s": 1}
        p["dead_letter"] = {"type": "file", "path": str(dead)}
        cfg = write_config(tmp_path, [p], api_port=free_port)
        with CdcService(cfg) as svc:
            svc.wait_state("p", "running")
            execute(
                db,
                "INSERT INTO t SELECT g, 'ok' FROM generate_series(1, 5) g",
                "INSERT INTO t VALUES (6, 'poison')",
                "INSERT INTO t SELECT g, 'ok' FROM generate_series(7, 9) g",
            )
            wait_for(lambda: len(receiver.events()) == 8 and len(_letters(dead)) == 1, 60,
                     what="8 delivered events and 1 dead letter")
            assert svc.pipeline("p")["state"] == "running"
            assert svc.stop() == 0
        delivered = [e["after"]["id"] for e in receiver.events()]
        assert delivered == [1, 2, 3, 4, 5, 7, 8, 9]
        (letter,) = _letters(dead)
        assert letter["sink"] == "webhook" and "400" in letter["error"]
        assert letter["event"]["after"] == {"id": 6, "name": "poison"}
    finally:
        receiver.close()


def test_a_failing_dead_letter_sink_stops_the_pipeline(
    tmp_path: Path, db: str, free_port: int
) -> None:
    execute(db, "CREATE TABLE t (id int PRIMARY KEY, name text)")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the dead-letter folder should be")
    p = pg_pipeline("p", db, ["public.t"], tmp_path / "out")
    p["dead_letter"] = {"type": "file", "path": str(blocker / "dead")}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        wait_for(lambda: svc.proc.poll() is not None, 30, what="cdc to exit")
        logs = svc.logs()
    record = find_log(log_records(logs), "pipeline_failed", pipeline="p")
    assert record is not None, logs[-3000:]
    assert "dead-letter sink (file) failed" in record["error"]
