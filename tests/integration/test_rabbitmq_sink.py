"""The RabbitMQ sink against a real RabbitMQ node (tests/rabbitmq_harness.py; one node per
session, an exchange and queues of each test's own) and a real PostgreSQL 15: what a message
carries, the exchange declared before any event, unroutable events with and without
``mandatory``, a paused broker, a wrong password, and ``kill -9`` of the service; and bad
input on the sink itself: a message over max_message_size, amqps:// with and without the right
CA (a node of their own), an exchange of another type, a broker unreachable at start."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml

from cdc.errors import FatalError, RetriableError
from cdc_local.postgres import LocalPostgres
from cdc_local.postgres import free_port as free_port_number
from sinks.rabbitmq import RabbitMQConfig, RabbitMQSink
from tests.helpers import (
    CdcService,
    dedupe,
    fold,
    table_rows,
    wait_for,
    write_config,
)
from tests.rabbitmq_harness import (
    RabbitHarness,
    RabbitNode,
    _with_channel,
    declare_queue,
    exchange_exists,
    shared_node,
    take,
)
from tests.sink_events import ORDERS, context, event, large
from tests.webhook_harness import self_signed_certificate

NAME = "rmq"


@pytest.fixture
def db(pg15: LocalPostgres) -> Any:
    from tests.helpers import create_database, drop_database

    name, dsn = create_database(pg15)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("CREATE TABLE logs (line text)")  # keyless
        conn.execute("ALTER TABLE logs REPLICA IDENTITY FULL")
    try:
        yield dsn
    finally:
        drop_database(pg15, name)


@pytest.fixture
def node() -> RabbitNode:
    return shared_node()


def _config(tmp_path: Path, dsn: str, port: int, sink: dict[str, Any]) -> Path:
    return write_config(
        tmp_path,
        [
            {
                "name": NAME,
                "source": {
                    "type": "postgres",
                    "dsn": dsn,
                    "tables": ["public.items", "public.logs"],
                    "heartbeat_s": 1,
                },
                "snapshot": {"mode": "never"},
                "sink": sink,
            }
        ],
        api_port=port,
    )


def _execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def _ids(harness: RabbitHarness) -> set[int]:
    return {e["after"]["id"] for e in harness.events() if e["op"] == "c" and "id" in e["after"]}


def test_messages_carry_event_id_headers_and_are_persistent(
    tmp_path: Path, db: str, free_port: int
) -> None:
    h = RabbitHarness(tmp_path)
    try:
        with CdcService(_config(tmp_path, db, free_port, h.sink_config())) as svc:
            svc.wait_state(NAME, "running")
            _execute(
                db,
                "INSERT INTO items VALUES (1, 'one'), (2, 'two')",
                "UPDATE items SET name = 'uno' WHERE id = 1",
                "INSERT INTO logs VALUES ('hello')",
                "DELETE FROM items WHERE id = 2",
                "TRUNCATE logs",
            )
            wait_for(
                lambda: any(e["op"] == "t" for e in h.events()), 30, what="the truncate event"
            )
            assert svc.stop() == 0
        messages = h.messages()
    finally:
        h.close()
    schema_msgs = [m for m in messages if m.type == "schema"]
    event_msgs = [m for m in messages if m.type != "schema"]
    assert [e["op"] for e in map(lambda m: orjson.loads(m.body), event_msgs)] == [
        "c", "c", "u", "c", "d", "t"
    ]
    seen_schemas: set[str] = set()
    for m in messages:
        assert m.exchange == h.exchange
        assert m.content_type == "application/json"
        assert m.delivery_mode == 2, "messages must be persistent"
        if m.type == "schema":
            d = orjson.loads(m.body)
            assert m.message_id == f"{d['name']}@{d['version']}"
            assert m.routing_key == f"{NAME}.schemas"
            seen_schemas.add(m.message_id)
            continue
        e = orjson.loads(m.body)
        version = f"{e['schema']['name']}@{e['schema']['version']}"
        assert version in seen_schemas, f"{version} published after its first event"
        assert m.message_id == e["id"]
        assert m.routing_key == f"{NAME}.public.{e['source']['table']}"
        assert m.headers["cdc-op"] == e["op"]
        assert m.headers["cdc-schema-version"] == version
        key = m.headers["cdc-key"]
        key = key.decode() if isinstance(key, bytes) else key
        if e["schema"]["name"] == "public.items":
            assert key == orjson.dumps(e["key"]).decode()
        else:  # keyless table, and the truncate
            assert key == "null"
    assert {m.message_id for m in schema_msgs} == {"public.items@1", "public.logs@1"}


def test_exchange_is_declared_before_the_first_event(
    tmp_path: Path, db: str, free_port: int, node: RabbitNode
) -> None:
    exchange = f"fresh-{uuid.uuid4().hex[:8]}"
    queue = f"q-{uuid.uuid4().hex[:8]}"
    assert not exchange_exists(node.url(), exchange)
    sink = {"type": "rabbitmq", "url": node.url(), "exchange": exchange}
    with CdcService(_config(tmp_path, db, free_port, sink)) as svc:
        svc.wait_state(NAME, "running")
        # no event has flowed yet, and the exchange is there to bind a queue to
        assert exchange_exists(node.url(), exchange)
        declare_queue(node.url(), exchange, queue, f"{NAME}.public.items")
        _execute(db, "INSERT INTO items VALUES (7, 'seven')")
        got: list[Any] = []
        wait_for(lambda: got.extend(take(node.url(), queue)) or got, 30, what="the event")
        assert svc.stop() == 0
    assert [orjson.loads(m.body)["after"]["id"] for m in got] == [7]


def test_unroutable_event_with_mandatory_is_retried_naming_exchange_and_key(
    tmp_path: Path, db: str, free_port: int, node: RabbitNode
) -> None:
    exchange = f"nobody-{uuid.uuid4().hex[:8]}"
    queue = f"q-{uuid.uuid4().hex[:8]}"
    sink = {"type": "rabbitmq", "url": node.url(), "exchange": exchange}
    with CdcService(_config(tmp_path, db, free_port, sink)) as svc:
        svc.wait_state(NAME, "running")
        before = svc.pipeline(NAME)["checkpoint"]["position"]
        t0 = time.monotonic()
        _execute(db, "INSERT INTO items VALUES (1, 'lost?')")
        doc = svc.wait_state(NAME, "retrying", timeout=10)
        assert time.monotonic() - t0 < 6
        status, health = svc.get("/healthz")
        assert status == 503 and health["failing"][0]["pipeline"] == NAME
        error = doc["last_error"]
        assert error["kind"] == "sink_unroutable"
        assert exchange in error["message"] and f"{NAME}.public.items" in error["message"]
        # the event is held back, not skipped: the checkpoint stays behind it
        time.sleep(1.5)  # two heartbeat intervals in which a checkpoint could wrongly move
        assert svc.pipeline(NAME)["checkpoint"]["position"] == before
        # a queue bound now gets the event, and the pipeline runs again
        declare_queue(node.url(), exchange, queue, "#")
        got: list[Any] = []
        wait_for(lambda: got.extend(take(node.url(), queue)) or got, 30, what="the held event")
        svc.wait_state(NAME, "running", timeout=30)
        wait_for(lambda: svc.pipeline(NAME)["checkpoint"]["position"] != before, 30)
        assert svc.stop() == 0
    events = [orjson.loads(m.body) for m in got if m.type != "schema"]
    assert [e["after"]["id"] for e in events] == [1]


def test_mandatory_false_lets_unroutable_events_go_and_the_pipeline_runs(
    tmp_path: Path, db: str, free_port: int, node: RabbitNode
) -> None:
    exchange = f"drop-{uuid.uuid4().hex[:8]}"
    queue = f"q-{uuid.uuid4().hex[:8]}"
    sink = {"type": "rabbitmq", "url": node.url(), "exchange": exchange, "mandatory": False}
    with CdcService(_config(tmp_path, db, free_port, sink)) as svc:
        svc.wait_state(NAME, "running")
        before = svc.pipeline(NAME)["checkpoint"]["position"]
        _execute(db, "INSERT INTO items VALUES (1, 'nowhere')")
        wait_for(
            lambda: svc.pipeline(NAME)["checkpoint"]["position"] != before,
            30,
            what="a checkpoint past the unroutable event",
        )
        assert svc.pipeline(NAME)["state"] == "running"
        declare_queue(node.url(), exchange, queue, "#")
        _execute(db, "INSERT INTO items VALUES (2, 'somewhere')")
        got: list[Any] = []
        wait_for(lambda: got.extend(take(node.url(), queue)) or got, 30, what="the second event")
        assert svc.stop() == 0
    ids = [orjson.loads(m.body)["after"]["id"] for m in got if m.type != "schema"]
    assert ids == [2]


def test_paused_broker_shows_retrying_within_5s_and_recovers(
    tmp_path: Path, db: str, free_port: int
) -> None:
    h = RabbitHarness(tmp_path)
    try:
        with CdcService(_config(tmp_path, db, free_port, h.sink_config())) as svc:
            svc.wait_state(NAME, "running")
            _execute(db, "INSERT INTO items VALUES (1, 'before')")
            wait_for(lambda: _ids(h) == {1}, 30, what="the first event")
            h.node.pause()
            try:
                t0 = time.monotonic()
                _execute(db, "INSERT INTO items VALUES (2, 'during')")
                wait_for(lambda: svc.get("/healthz")[0] == 503, 10, what="/healthz 503")
                assert time.monotonic() - t0 < 5.5, "503 later than 5 s after the first attempt"
                assert svc.pipeline(NAME)["last_error"]["kind"] == "sink_unavailable"
            finally:
                h.node.resume()
            wait_for(lambda: _ids(h) == {1, 2}, 60, what="the event held during the pause")
            svc.wait_state(NAME, "running", timeout=30)
            assert svc.stop() == 0
    finally:
        h.close()


def test_wrong_password_is_a_clear_fatal_error_without_the_password(
    tmp_path: Path, db: str, free_port: int, node: RabbitNode
) -> None:
    secret = f"Wr0ng-{uuid.uuid4().hex}"
    sink = {"type": "rabbitmq", "url": node.url(password=secret)}
    with CdcService(_config(tmp_path, db, free_port, sink)) as svc:
        doc = svc.wait_state(NAME, "failed", timeout=30)
        status, health = svc.get("/healthz")
        _, pipelines = svc.get("/pipelines")
        svc.stop()
        logs = svc.logs()
    error = doc["last_error"]
    assert error["kind"] == "sink_auth"
    assert "refused the login" in error["message"] and "password" in error["message"]
    assert f"amqp://cdc@127.0.0.1:{node.port}" in error["message"]
    assert status == 503
    for text in (logs, orjson.dumps(pipelines).decode(), orjson.dumps(health).decode()):
        assert secret not in text


def test_kill9_of_the_service_loses_nothing_and_duplicates_keep_their_ids(
    tmp_path: Path, db: str, free_port: int
) -> None:
    h = RabbitHarness(tmp_path)
    total = 400

    def writer() -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            for i in range(1, total + 1):
                conn.execute("INSERT INTO items VALUES (%s, %s)", (i, f"item {i}"))
                if i % 4 == 0:
                    conn.execute("UPDATE items SET name = 'changed' WHERE id = %s", (i - 1,))
                time.sleep(0.005)

    try:
        config = _config(tmp_path, db, free_port, h.sink_config())
        thread = threading.Thread(target=writer)
        svc = CdcService(config)
        try:
            svc.wait_state(NAME, "running")
            thread.start()
            for _ in range(3):
                count = len(h.events())
                wait_for(
                    lambda c=count: len(h.events()) > c + 30 or not thread.is_alive(),
                    30,
                    what="more events",
                )
                svc.kill()
                svc = CdcService(config)
                svc.wait_state(NAME, "running", timeout=30)
            thread.join()
            wait_for(
                lambda: fold(dedupe(h.events()), "public.items")
                == table_rows(db, "public.items", ["id"]),
                60,
                what="every change delivered",
            )
            assert svc.stop() == 0
        finally:
            svc.kill()
        events = h.events()
    finally:
        h.close()
    unique = dedupe(events)
    print(f"{len(events)} events, {len(unique)} unique, {len(events) - len(unique)} duplicates")
    # a duplicate is the same event again: same id, same content (ts_ms is when cdc
    # processed it, so a replay after the restart has its own)
    by_id: dict[str, dict[str, Any]] = {}
    for e in events:
        same = {k: v for k, v in e.items() if k != "ts_ms"}
        assert by_id.setdefault(e["id"], same) == same, (by_id[e["id"]], e)
    assert sum(1 for e in unique if e["op"] == "c") == total


def test_lost_state_is_seen_through_the_ledger_adopt_continues_versions_and_drop_clears_it(
    tmp_path: Path, db: str, free_port: int
) -> None:
    from sinks.rabbitmq.sink import ledger_queue
    from tests.helpers import run_cli

    h = RabbitHarness(tmp_path)
    config = _config(tmp_path, db, free_port, h.sink_config())
    state = tmp_path / "state.sqlite"
    try:
        with CdcService(config) as svc:
            svc.wait_state(NAME, "running")
            _execute(
                db,
                "INSERT INTO items VALUES (1, 'one')",
                "ALTER TABLE items ADD COLUMN note text",
                "INSERT INTO items VALUES (2, 'two', 'v2')",
            )
            wait_for(lambda: _ids(h) == {1, 2}, 30, what="the first events")
            assert svc.stop() == 0
        state.unlink()
        # the state is gone, the ledger queue says this pipeline published: no silent restart
        with CdcService(config) as svc:
            doc = svc.wait_state(NAME, "failed")
            svc.stop()
        assert doc["last_error"]["kind"] == "state_lost"
        # --adopt continues with the schema versions the ledger holds
        with CdcService(config, "--adopt", NAME) as svc:
            svc.wait_state(NAME, "running")
            _execute(db, "INSERT INTO items VALUES (3, 'three', 'after')")
            wait_for(lambda: 3 in _ids(h), 30, what="the event after adopting")
            assert svc.stop() == 0
        third = next(e for e in h.events() if e["op"] == "c" and e["after"]["id"] == 3)
        assert third["schema"] == {"name": "public.items", "version": 2}
        # cdc drop deletes the ledger queue (and says so); then a fresh start is allowed
        ledger = ledger_queue(h.exchange, NAME)
        shown = run_cli("drop", str(config), NAME)
        assert shown.returncode == 0 and ledger in shown.stdout, shown.stdout + shown.stderr
        assert h.exchange in shown.stdout
        done = run_cli("drop", str(config), NAME, "--yes")
        assert done.returncode == 0 and f"deleted the ledger queue {ledger}" in done.stdout, (
            done.stdout + done.stderr
        )
        with CdcService(config) as svc:
            svc.wait_state(NAME, "running")
            assert svc.stop() == 0
    finally:
        h.close()


def test_a_user_allowed_only_the_exchange_publishes_without_the_ledger(
    tmp_path: Path, db: str, free_port: int, node: RabbitNode
) -> None:
    tag = uuid.uuid4().hex[:8]
    user, password = f"lim{tag}", uuid.uuid4().hex
    exchange, queue = f"xlim-{tag}", f"q-{tag}"
    node.ctl("add_user", user, password)
    node.ctl("set_permissions", "-p", "/", user, "^xlim-.*", "^xlim-.*", "^$")
    declare_queue(node.url(), exchange, queue, "#")  # by the admin user
    url = f"amqp://{user}:{password}@127.0.0.1:{node.port}/"
    sink = {"type": "rabbitmq", "url": url, "exchange": exchange}
    try:
        with CdcService(_config(tmp_path, db, free_port, sink)) as svc:
            svc.wait_state(NAME, "running")
            _execute(db, "INSERT INTO items VALUES (5, 'five')")
            got: list[Any] = []
            wait_for(
                lambda: got.extend(take(node.url(), queue)) or any(m.type != "schema" for m in got),
                30,
                what="the event",
            )
            assert svc.stop() == 0
            logs = svc.logs()
    finally:
        node.ctl("delete_user", user, check=False)
    assert "does not allow declaring the ledger queue" in logs
    assert password not in logs
    events = [orjson.loads(m.body) for m in got if m.type != "schema"]
    assert [e["after"]["id"] for e in events] == [5]


# -- bad input: driving the sink directly --------------------------------------------------------


@pytest.fixture(scope="module")
def strict_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitNode, Path]]:
    """A node of its own that also listens for amqps:// with a self-signed certificate (made
    here) and refuses messages over 4096 bytes (max_message_size)."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("rabbit-tls"))
    cert.chmod(0o644)
    key.chmod(0o644)
    strict = RabbitNode(tls=(cert, key), max_message_size=4096).start()
    try:
        yield strict, cert
    finally:
        strict.stop()


def _sink(url: str, exchange: str, **settings: Any) -> RabbitMQSink:
    return RabbitMQSink(RabbitMQConfig(url=url, exchange=exchange, **settings), context())


def test_an_event_over_max_message_size_is_fatal_naming_id_size_and_setting(
    strict_node: tuple[RabbitNode, Path],
) -> None:
    strict, _ = strict_node
    exchange, queue = f"big-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    declare_queue(strict.url(), exchange, queue, "#")
    sink = _sink(strict.url(), exchange)
    sink.open(None)
    try:
        sink.write_schema(ORDERS)
        sink.write([event(1)])
        sink.flush()
        too_big = large(2, 5000)
        sink.write([too_big, event(3)])
        with pytest.raises(FatalError) as info:
            sink.flush()
    finally:
        sink.close()
    assert info.value.kind == "event_too_large"
    text = str(info.value)
    assert too_big.id in text and f"{len(too_big.json)} bytes" in text
    assert "max_message_size (4096 bytes)" in text
    events = [m for m in take(strict.url(), queue) if m.type != "schema"]
    assert [m.message_id for m in events] == [event(1).id]


def test_amqps_with_the_right_ca_works_and_without_it_is_fatal(
    strict_node: tuple[RabbitNode, Path],
) -> None:
    strict, cert = strict_node
    exchange, queue = f"tls-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    declare_queue(strict.url(), exchange, queue, "#")
    sink = _sink(strict.url(tls=True), exchange, ca_file=str(cert))
    sink.open(None)
    try:
        sink.write_schema(ORDERS)
        sink.write([event(1)])
        sink.flush()
    finally:
        sink.close()
    events = [m for m in take(strict.url(), queue) if m.type != "schema"]
    assert [m.message_id for m in events] == [event(1).id]
    untrusted = _sink(strict.url(tls=True), exchange)  # the system's CAs do not know it
    with pytest.raises(FatalError) as info:
        untrusted.open(None)
    untrusted.close()
    assert info.value.kind == "sink_tls"
    assert "does not verify" in str(info.value) and "ca_file" in str(info.value)
    assert strict.password not in str(info.value)


def test_an_exchange_of_another_type_is_fatal_naming_it(node: RabbitNode) -> None:
    exchange = f"direct-{uuid.uuid4().hex[:8]}"

    async def declare(channel: Any) -> None:
        await channel.exchange_declare(exchange, exchange_type="direct", durable=True)

    asyncio.run(_with_channel(node.url(), declare))
    sink = _sink(node.url(), exchange)
    with pytest.raises(FatalError) as info:
        sink.open(None)
    sink.close()
    assert info.value.kind == "sink_config"
    text = str(info.value)
    assert f"exchange {exchange!r} exists with other settings" in text
    assert "durable topic exchange" in text and "sink.exchange" in text


def test_an_unreachable_broker_at_start_is_retriable_with_a_clear_message() -> None:
    port = free_port_number()  # nothing listens there
    sink = _sink(f"amqp://cdc:s3cret-pw@127.0.0.1:{port}/", "cdc")
    t0 = time.monotonic()
    with pytest.raises(RetriableError) as info:
        sink.open(None)
    sink.close()
    assert time.monotonic() - t0 < 5
    assert info.value.kind == "sink_unavailable"
    text = str(info.value)
    assert f"cannot connect to amqp://cdc@127.0.0.1:{port}/" in text
    assert "s3cret-pw" not in text


def test_route_and_outbox_choose_the_routing_key(
    tmp_path: Path, db: str, free_port: int, node: RabbitNode
) -> None:
    """`route` sets an event's routing key; `outbox` sets it from the row and adds the headers
    `id` and `type` (contract section 10)."""
    exchange = f"route-{uuid.uuid4().hex[:8]}"
    queue = f"q-{uuid.uuid4().hex[:8]}"
    declare_queue(node.url(), exchange, queue, "#")
    sink = {"type": "rabbitmq", "url": node.url(), "exchange": exchange}
    cfg = _config(tmp_path, db, free_port, sink)
    _execute(db, "CREATE TABLE outbox (id text PRIMARY KEY, aggregatetype text, "
             "aggregateid text, type text, payload jsonb)")
    doc = yaml.safe_load(cfg.read_text())
    doc["pipelines"][0]["source"]["tables"].append("public.outbox")
    doc["pipelines"][0]["transforms"] = [
        {"outbox": {"table": "public.outbox", "to": "outbox.{aggregatetype}"}},
        {"route": {"tables": ["public.items"],
                   "rules": [{"when": 'after.name == "eu"', "to": "items.eu"}]}},
    ]
    cfg.write_text(yaml.safe_dump(doc))
    with CdcService(cfg) as svc:
        svc.wait_state(NAME, "running")
        _execute(
            db,
            "INSERT INTO items VALUES (1, 'eu'), (2, 'us')",
            "INSERT INTO outbox VALUES ('e1', 'order', '42', 'Paid', '{\"n\": 1}')",
        )
        got: list[Any] = []
        wait_for(lambda: got.extend(take(node.url(), queue)) or len(
            [m for m in got if m.type != "schema"]) >= 3, 30, what="3 messages")
        assert svc.stop() == 0
    data = {m.routing_key: m for m in got if m.type != "schema"}
    assert set(data) == {"items.eu", f"{NAME}.public.items", "outbox.order"}
    assert orjson.loads(data["items.eu"].body)["after"]["id"] == 1
    outbox = data["outbox.order"]
    assert orjson.loads(outbox.body) == {"n": 1}
    assert outbox.headers["id"] in ("e1", b"e1") and outbox.headers["type"] in ("Paid", b"Paid")
