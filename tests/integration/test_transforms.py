"""Transforms on real servers (contract section 10): PostgreSQL through the file sink (filter,
mask over snapshot reads and the stream, the checkpoint moving past filtered-out transactions,
no unmasked value anywhere), through the Kafka sink on the Tansu broker (route, outbox,
unwrap), MariaDB through the file sink (with a dead letter), and the failures: a filter's runtime error stops the
pipeline naming the event, a mask on a missing column names table and column."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc_local.postgres import LocalPostgres
from tests.helpers import (
    CdcService,
    create_database,
    drop_database,
    execute,
    find_log,
    log_records,
    lsn_int,
    pg_pipeline,
    query,
    read_events,
    read_schemas,
    run_cli,
    wait_for,
    write_config,
)
from tests.integration.test_mysql_source import my_pipeline
from tests.kafka_harness import KafkaHarness, TansuBroker, read_topics, shared_broker
from tests.mariadb_fixtures import MyDB

KEY = "mask-key-7f3a"
SECRET_EMAIL = "zz-secret-mail@example.org"
SECRET_NAME = "Zebulon-Secret-Name"
SECRET_STREAM = "zz-stream-secret@example.org"


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


def _hash(value: Any) -> str:
    data = orjson.dumps(value)
    return hmac.new(KEY.encode(), data, hashlib.sha256).hexdigest()


def test_filter_and_mask_on_snapshot_and_stream_leave_no_unmasked_value(
    tmp_path: Path, db: str, free_port: int
) -> None:
    execute(
        db,
        "CREATE TABLE customers (id int PRIMARY KEY, email text, name text, tier text)",
        "CREATE TABLE orders (id int PRIMARY KEY, status text)",
        f"INSERT INTO customers VALUES (1, '{SECRET_EMAIL}', '{SECRET_NAME}', 'gold')",
        "INSERT INTO orders VALUES (1, 'draft'), (2, 'paid')",
    )
    out = tmp_path / "out"
    p = pg_pipeline("shop", db, ["public.customers", "public.orders"], out)
    p["snapshot"] = {"mode": "initial"}
    p["transforms"] = [
        {"filter": {"tables": ["public.orders"], "when": 'op in ["d", "t"] || after.status != "draft"'}},
        {"mask": {"key": KEY, "columns": {"public.customers": {"email": "hash", "name": "redact", "tier": "truncate(1)"}}}},
    ]
    cfg = write_config(tmp_path, [p], api_port=free_port)
    assert run_cli("validate", str(cfg)).returncode == 0
    with CdcService(cfg) as svc:
        svc.wait_state("shop", "running")
        wait_for(lambda: len(read_events(out)) >= 2, 60, what="the snapshot rows")
        execute(
            db,
            f"INSERT INTO customers VALUES (2, '{SECRET_STREAM}', '{SECRET_NAME}', 'silver')",
            "UPDATE orders SET status = 'paid' WHERE id = 1",
            "INSERT INTO orders VALUES (3, 'draft')",
        )
        wait_for(lambda: len(read_events(out)) >= 4, 30, what="the stream's events")
        # a transaction whose only event is filtered out still moves the checkpoint past it
        execute(db, "INSERT INTO orders VALUES (4, 'draft')")
        (lsn,) = query(db, "SELECT pg_current_wal_lsn()::text")[0]

        def checkpoint_past() -> bool:
            position = svc.pipeline("shop")["checkpoint"]["position"]
            return position is not None and lsn_int(position.split(":")[0]) >= lsn_int(lsn)

        wait_for(checkpoint_past, 30, what="the checkpoint to pass the filtered transaction")
        status, body = svc.get("/pipelines")
        assert status == 200
        assert svc.stop() == 0

    events = read_events(out)
    rows = [(e["schema"]["name"], e["op"], e["after"]) for e in events]
    assert ("public.orders", "r", {"id": 2, "status": "paid"}) in rows
    assert ("public.orders", "u", {"id": 1, "status": "paid"}) in rows
    assert not [r for r in rows if r[0] == "public.orders" and r[2]["status"] == "draft"]
    customers = {e["after"]["id"]: e for e in events if e["schema"]["name"] == "public.customers"}
    assert customers[1]["op"] == "r"
    assert customers[1]["after"] == {"id": 1, "email": _hash(SECRET_EMAIL), "name": None, "tier": "g"}
    assert customers[2]["after"] == {"id": 2, "email": _hash(SECRET_STREAM), "name": None, "tier": "s"}
    (schema,) = [s for s in read_schemas(out) if s["name"] == "public.customers"]
    masked = {c["name"]: c.get("masked") for c in schema["columns"]}
    assert masked == {"id": None, "email": "hash", "name": "redact", "tier": "truncate(1)"}
    assert [c["type"] for c in schema["columns"]] == ["int4", "text", "text", "text"]

    # no unmasked value (nor the key) anywhere: sink files, logs, cdc schemas, the API
    schemas_out = run_cli("schemas", str(cfg), "--json")
    assert schemas_out.returncode == 0, schemas_out.stderr
    assert '"masked"' in schemas_out.stdout
    places = {f.name: f.read_bytes() for f in out.iterdir()}
    places["log"] = svc.logs().encode()
    places["cdc schemas"] = schemas_out.stdout.encode() + schemas_out.stderr.encode()
    places["/pipelines"] = orjson.dumps(body)
    for where, data in places.items():
        for marker in (SECRET_EMAIL, SECRET_STREAM, SECRET_NAME, KEY):
            assert marker.encode() not in data, f"{marker} found in {where}"


def test_a_filter_error_stops_the_pipeline_naming_the_event(
    tmp_path: Path, db: str, free_port: int
) -> None:
    execute(db, "CREATE TABLE orders (id int PRIMARY KEY, status text)")
    out = tmp_path / "out"
    p = pg_pipeline("shop", db, ["public.orders"], out)
    p["transforms"] = [{"filter": {"when": 'after.status != "draft"'}}]  # no guard for deletes
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("shop", "running")
        execute(db, "INSERT INTO orders VALUES (1, 'zz-value-marker')", "DELETE FROM orders WHERE id = 1")
        wait_for(lambda: svc.proc.poll() is not None, 30, what="cdc to exit")
        logs = svc.logs()
    record = find_log(log_records(logs), "pipeline_failed", pipeline="shop")
    assert record is not None, logs[-3000:]
    assert record["error_kind"] == "transform_failed"
    assert "transform filter failed on event pg:" in record["error"]
    assert "null" in record["error"] and "dead_letter" in record["error"]
    assert "zz-value-marker" not in logs
    # the delete was not delivered (the insert may be, if it came in an earlier batch)
    assert "d" not in [e["op"] for e in read_events(out)]


def test_a_mask_on_a_missing_column_names_table_and_column(
    tmp_path: Path, db: str, free_port: int
) -> None:
    execute(db, "CREATE TABLE customers (id int PRIMARY KEY, email text)")
    p = pg_pipeline("shop", db, ["public.customers"], tmp_path / "out")
    p["transforms"] = [{"mask": {"key": KEY, "columns": {"public.customers": {"mail": "hash"}}}}]
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("shop", "running")
        execute(db, "INSERT INTO customers VALUES (1, 'x@y')")
        wait_for(lambda: svc.proc.poll() is not None, 30, what="cdc to exit")
        logs = svc.logs()
    record = find_log(log_records(logs), "pipeline_failed", pipeline="shop")
    assert record is not None, logs[-3000:]
    assert "'mail' of table public.customers" in record["error"]


def test_route_outbox_and_unwrap_through_kafka(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(
        db,
        "CREATE TABLE orders (id int PRIMARY KEY, region text, status text)",
        "CREATE TABLE outbox (id text PRIMARY KEY, aggregatetype text, aggregateid text, "
        "type text, payload jsonb)",
    )
    harness = KafkaHarness(tmp_path, tansu)
    pre = harness.prefix
    p = pg_pipeline("p", db, ["public.orders", "public.outbox"], tmp_path / "unused")
    p["sink"] = harness.sink_config()
    p["transforms"] = [
        {"outbox": {"table": "public.outbox", "to": pre + ".outbox.{aggregatetype}"}},
        {"route": {"tables": ["public.orders"], "rules": [
            {"when": 'op != "d" && after.region == "eu"', "to": f"{pre}.orders.eu"},
            {"when": 'op == "d" && before.region == "eu"', "to": f"{pre}.orders.eu"},
        ]}},
        {"unwrap": {"tables": ["public.orders"]}},
    ]
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        execute(
            db,
            "ALTER TABLE orders REPLICA IDENTITY FULL",
            "INSERT INTO orders VALUES (1, 'eu', 'new'), (2, 'us', 'new')",
            "INSERT INTO outbox VALUES ('e-1', 'order', '42', 'OrderPaid', '{\"total\": \"9.90\"}')",
            "UPDATE outbox SET type = 'x'",
            "DELETE FROM outbox",
            "DELETE FROM orders WHERE id = 1",
        )
        eu = f"{pre}.orders.eu"
        default = f"{pre}.p.public.orders"
        wait_for(lambda: len(read_topics(tansu.bootstrap, [eu])) >= 3, 60, what="eu records")
        assert svc.stop() == 0

    eu_records = [r for r in read_topics(tansu.bootstrap, [eu]) if r.value is not None]
    values = [orjson.loads(r.value) for r in eu_records if r.value]
    assert [(v["id"], v["__op"]) for v in values] == [(1, "c"), (1, "d")]
    assert values[1]["__deleted"] is True and values[1]["region"] == "eu"
    assert values[0] == {"id": 1, "region": "eu", "status": "new", "__op": "c",
                         "__table": "public.orders", "__source_ts_ms": values[0]["__source_ts_ms"],
                         "__id": values[0]["__id"]}
    assert eu_records[0].key == b'{"id":1}'
    us = [orjson.loads(r.value) for r in read_topics(tansu.bootstrap, [default]) if r.value]
    assert [(v["id"], v["__op"]) for v in us] == [(2, "c")]

    (msg,) = read_topics(tansu.bootstrap, [f"{pre}.outbox.order"])
    assert msg.key == b"42"
    assert msg.value is not None and orjson.loads(msg.value) == {"total": "9.90"}
    assert msg.headers["id"] == b"e-1" and msg.headers["type"] == b"OrderPaid"
    # the outbox table's own change events are not delivered
    # (the sink may create the table's default topic with its schema; it stays empty)
    assert read_topics(tansu.bootstrap, [f"{pre}.p.public.outbox"]) == []


def test_mariadb_filter_mask_and_dead_letter_through_the_file_sink(
    mydb: MyDB, tmp_path: Path, free_port: int
) -> None:
    """The same chain on a MariaDB source: snapshot reads and binlog changes are filtered and
    masked, and a transform's error on one event sets it aside (masked) in the dead letters."""
    mydb.execute(
        "CREATE TABLE customers (id INT PRIMARY KEY, email VARCHAR(80), status VARCHAR(20))",
        f"INSERT INTO customers VALUES (1, '{SECRET_EMAIL}', 'new'), (2, 'b@x.org', 'draft')",
    )
    table = mydb.table("customers")
    out, dead = tmp_path / "out", tmp_path / "dead"
    p = my_pipeline("m", mydb.dsn(), [table], out)
    p["snapshot"] = {"mode": "initial"}
    p["transforms"] = [
        # `after.status` of a delete is an error: those events go to the dead letters
        {"filter": {"when": 'after.status != "draft"'}},
        {"mask": {"key": KEY, "columns": {table: {"email": "hash"}}}},
    ]
    p["dead_letter"] = {"type": "file", "path": str(dead)}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    assert run_cli("validate", str(cfg)).returncode == 0
    with CdcService(cfg) as svc:
        wait_for(lambda: len(read_events(out)) >= 1, 60, what="the snapshot row")
        mydb.execute(
            f"INSERT INTO customers VALUES (3, '{SECRET_STREAM}', 'new')",
            "UPDATE customers SET status = 'draft' WHERE id = 3",
            "DELETE FROM customers WHERE id = 1",
        )
        wait_for(lambda: len(read_events(out)) >= 2 and len(read_events(dead)) >= 1, 30,
                 what="the stream and the dead letter")
        assert svc.stop() == 0
    events = read_events(out)
    assert [(e["op"], e["key"]["id"]) for e in events] == [("r", 1), ("c", 3)]
    assert events[0]["after"]["email"] == _hash(SECRET_EMAIL)
    assert events[1]["after"]["email"] == _hash(SECRET_STREAM)
    (letter,) = read_events(dead)
    assert letter["sink"] == "transform:filter"
    assert letter["event"]["op"] == "d"
    assert letter["event"]["before"]["email"] == _hash(SECRET_EMAIL)
    for folder in (out, dead):
        data = b"".join(f.read_bytes() for f in folder.iterdir())
        assert SECRET_EMAIL.encode() not in data and SECRET_STREAM.encode() not in data
