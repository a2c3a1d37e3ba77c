"""The webhook sink against a real local HTTP receiver (tests/webhook_harness.Receiver) and a
real `cdc run` streaming from PostgreSQL 15.

- the request is exact: body `{"pipeline","events","schemas"}` built from the events' JSON,
  Content-Type, X-CDC-Batch-Id, the HMAC signature (recomputed here), the configured headers;
- batches never exceed batch_max, are sent one at a time and arrive strictly in order;
- 503s, a 429 with Retry-After, a receiver slower than timeout_s and a receiver that is down
  are retried until delivered: nothing skipped, duplicates only of whole batches with the same
  batch id, `/healthz` 503 meanwhile and 200 after;
- a 400 stops the pipeline with the status and the start of the body; a 413 halves batches;
  a single event that is too large stops the pipeline naming it;
- a stop while the receiver is down is not held up, and a restart delivers the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from cdc_local.postgres import LocalPostgres
from sinks.webhook.sink import display_url, parse_retry_after
from sources.postgres.lsn import Lsn
from tests.helpers import (
    CdcService,
    create_database,
    drop_database,
    fold,
    table_rows,
    wait_for,
    write_config,
)
from tests.webhook_harness import Answer, Receiver, self_signed_certificate

SECRET = "whsec-3f9a1c"
TOKEN = "tok-8d7e6f"
PIPELINE = "hook"


@pytest.fixture
def db(pg15: LocalPostgres) -> Iterator[str]:
    name, dsn = create_database(pg15)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    try:
        yield dsn
    finally:
        drop_database(pg15, name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(secret=SECRET)
    try:
        yield r
    finally:
        r.close()


def _service(tmp_path: Path, dsn: str, receiver: Receiver, port: int, **sink: Any) -> CdcService:
    cfg = write_config(
        tmp_path,
        [
            {
                "name": PIPELINE,
                "source": {
                    "type": "postgres",
                    "dsn": dsn,
                    "tables": ["public.items", "public.notes"],
                    "heartbeat_s": 1,
                },
                "snapshot": {"mode": "never"},
                "sink": {
                    "type": "webhook",
                    "url": receiver.url,
                    "secret": SECRET,
                    "timeout_s": 5,
                    "max_backoff_s": 0.5,
                    **sink,
                },
            }
        ],
        api_port=port,
    )
    return CdcService(cfg)


def _write(dsn: str, start: int, count: int) -> None:
    """``count`` transactions of 2 to 4 changes over both tables."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(start, start + count):
            with conn.transaction():
                conn.execute("INSERT INTO items VALUES (%s, %s, %s)", (i, f"item {i}", i % 7))
                conn.execute("INSERT INTO notes VALUES (%s, %s)", (i, f"note {i}"))
                if i % 3 == 0:
                    conn.execute("UPDATE items SET qty = qty + 1 WHERE id = %s", (i,))
                if i % 5 == 0:
                    conn.execute("DELETE FROM notes WHERE id = %s", (i,))


def _write_one_tx(dsn: str, start: int, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO items SELECT g, 'bulk ' || g, g %% 7 FROM generate_series(%s::int, %s::int) g",
            (start, start + count - 1),
        )


def _has_item(receiver: Receiver, item_id: int) -> bool:
    return any(
        e["schema"]["name"] == "public.items" and e["after"] and e["after"]["id"] == item_id
        for e in receiver.events()
    )


def _order_key(e: dict[str, Any]) -> tuple[int, int]:
    return (Lsn.parse(e["source"]["lsn"]), e["transaction"]["seq"])


def _check_stream(receiver: Receiver, batch_max: int, *, one_run: bool = True) -> None:
    """What every run must show, whatever the receiver did:

    - every request's batch id is the SHA-256 of its event ids, and it has <= batch_max events;
    - a batch id always stands for the same events (duplicates are whole batches);
    - the distinct delivered batches, in arrival order, hold every event once, strictly in
      commit order (nothing skipped, nothing reordered);
    - within one run, a failed request (not 413) is followed by the same batch again.
    """
    requests = receiver.snapshot()
    by_id: dict[str, list[str]] = {}
    for r in requests:
        ids = [e["id"] for e in r.events]
        assert 0 < len(ids) <= batch_max, f"batch of {len(ids)} events"
        assert r.batch_id == hashlib.sha256("\n".join(ids).encode()).hexdigest()
        assert by_id.setdefault(r.batch_id, ids) == ids, "one batch id, different events"
    seen_batches: set[str] = set()
    stream: list[dict[str, Any]] = []
    for r in requests:
        if r.ok and r.batch_id not in seen_batches:
            seen_batches.add(r.batch_id or "")
            stream.extend(r.events)
    keys = [_order_key(e) for e in stream]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "not strictly in commit order"
    assert len({e["id"] for e in stream}) == len(stream), "an event in two different batches"
    if one_run:
        for before, after in zip(requests, requests[1:], strict=False):
            if not before.ok and before.status != 413:
                assert after.batch_id == before.batch_id, "a failed batch was not sent again"


def _assert_complete(dsn: str, receiver: Receiver) -> None:
    def present(rows: dict[bytes, dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
        # a column added later is absent from rows written before it, and NULL in the table
        return {k: {c: v for c, v in r.items() if v is not None} for k, r in rows.items()}

    events = receiver.events()
    for table in ("items", "notes"):
        expected = table_rows(dsn, f"public.{table}", ["id"])
        assert present(fold(events, f"public.{table}")) == present(expected), f"{table} differs"


def _health(svc: CdcService) -> tuple[int, Any]:
    return svc.get("/healthz")


# -- the request ----------------------------------------------------------------------------------


def test_body_headers_batch_id_and_signature_are_exact(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Team": "data-platform"}
    with _service(tmp_path, db, receiver, free_port, batch_max=7, headers=headers) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 12)
        _write_one_tx(db, 100, 30)  # one transaction larger than batch_max
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER TABLE items ADD COLUMN note text")
            conn.execute("INSERT INTO items VALUES (1000, 'after alter', 1, 'v2')")
        wait_for(lambda: _has_item(receiver, 1000), 30, what="the last event")
        assert svc.stop() == 0
        logs = svc.logs()
    requests = receiver.snapshot()
    assert requests and all(r.ok for r in requests), [r.status for r in requests]
    assert receiver.max_in_flight == 1, "more than one request in flight"
    assert max(len(r.events) for r in requests) == 7
    for r in requests:
        h = r.headers
        assert h["content-type"] == "application/json"
        assert h["authorization"] == f"Bearer {TOKEN}" and h["x-team"] == "data-platform"
        # the signature, as a receiver checks it
        ts = h["x-cdc-timestamp"]
        assert ts.isdigit() and abs(int(ts) - time.time()) < 120
        mac = hmac.new(SECRET.encode(), ts.encode() + b"." + r.body, hashlib.sha256)
        assert h["x-cdc-signature"] == "sha256=" + mac.hexdigest()
        assert r.signature_ok is True
        # the body, byte for byte: compact JSON in this key order, events as encoded
        assert r.doc is not None and list(r.doc) == ["pipeline", "events", "schemas"]
        assert r.doc["pipeline"] == PIPELINE
        events = r.doc["events"]
        schemas = r.doc["schemas"]
        expected = (
            b'{"pipeline":"hook","events":['
            + b",".join(orjson.dumps(e) for e in events)
            + b'],"schemas":{'
            + b",".join(
                orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in sorted(schemas.items())
            )
            + b"}}"
        )
        assert r.body == expected
        # schemas: exactly the versions this batch uses, with their definitions
        used = {f"{e['schema']['name']}@{e['schema']['version']}" for e in events}
        assert set(schemas) == used
        for qualified, definition in schemas.items():
            name, _, version = qualified.partition("@")
            assert (definition["name"], definition["version"]) == (name, int(version))
            assert definition["key"] == ["id"]
        ids = [e["id"] for e in events]
        assert r.batch_id == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    defs = {k: v for r in requests for k, v in r.doc["schemas"].items()}  # type: ignore[index]
    assert defs["public.items@1"]["columns"] == [
        {"name": "id", "type": "int4", "nullable": False},
        {"name": "name", "type": "text", "nullable": True},
        {"name": "qty", "type": "int4", "nullable": True},
    ]
    assert [c["name"] for c in defs["public.items@2"]["columns"]] == ["id", "name", "qty", "note"]
    _check_stream(receiver, 7)
    _assert_complete(db, receiver)
    for secret in (SECRET, TOKEN, "data-platform"):
        assert secret not in logs


# -- retries ----------------------------------------------------------------------------------


def test_503s_are_retried_in_order_without_skipping(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    with _service(tmp_path, db, receiver, free_port, batch_max=10) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 5)
        wait_for(lambda: _has_item(receiver, 5), 30, what="first events")
        receiver.mode = Answer(503, "down for maintenance")
        _write(db, 6, 30)
        svc.wait_state(PIPELINE, "retrying")
        wait_for(lambda: sum(r.status == 503 for r in receiver.snapshot()) >= 4, 30, what="503s")
        status, health = _health(svc)
        assert status == 503
        assert health["failing"] == [
            {"pipeline": PIPELINE, "state": "retrying", "error": "sink_unavailable"}
        ]
        assert "503" in svc.pipeline(PIPELINE)["last_error"]["message"]
        receiver.mode = None
        wait_for(lambda: _has_item(receiver, 35), 30, what="delivery after the 503s")
        svc.wait_state(PIPELINE, "running")
        assert _health(svc) == (200, {"status": "ok"})
        assert svc.stop() == 0
    failed = [r for r in receiver.snapshot() if r.status == 503]
    assert len(failed) >= 4 and len({r.batch_id for r in failed}) == 1, "the same batch is retried"
    _check_stream(receiver, 10)
    _assert_complete(db, receiver)


def test_429_retry_after_is_honoured_up_to_max_backoff(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    receiver.answer_next(Answer(429, "slow down", {"Retry-After": "2"}))
    receiver.answer_next(Answer(429, "slow down", {"Retry-After": "60"}))  # capped at 3
    with _service(tmp_path, db, receiver, free_port, max_backoff_s=3) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 3)
        wait_for(lambda: _has_item(receiver, 3), 30, what="delivery after the 429s")
        assert svc.stop() == 0
    first, second, third = receiver.snapshot()[:3]
    assert (first.status, second.status, third.status) == (429, 429, 200)
    assert first.batch_id == second.batch_id == third.batch_id
    assert 2.0 <= second.at - first.at < 2.0 + 1.5, "Retry-After: 2 not honoured"
    assert 3.0 <= third.at - second.at < 3.0 + 1.5, "Retry-After: 60 not capped at max_backoff_s"
    _check_stream(receiver, 500)
    _assert_complete(db, receiver)


def test_retry_after_forms() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_30 = parse_retry_after(formatdate(now + 30, usegmt=True), now=now)
    assert in_30 is not None and 29 <= in_30 <= 30
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert (
        display_url("https://u:p@hooks.example.com:8443/cdc?token=x#f")
        == "https://hooks.example.com:8443/cdc"
    )


def test_a_receiver_slower_than_timeout_is_retried_and_delivered(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    receiver.answer_next(Answer(200, "late", delay_s=2.5))
    with _service(tmp_path, db, receiver, free_port, timeout_s=1) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 5)
        wait_for(lambda: _has_item(receiver, 5), 30, what="delivery after the timeout")
        # the receiver processed the slow request too (its answer came too late), and a retry
        # of the same batch was answered in time
        def answered_twice() -> bool:
            requests = receiver.snapshot()
            return bool(requests) and sum(r.ok for r in requests if r.batch_id == requests[0].batch_id) >= 2

        wait_for(answered_twice, 30, what="the late answer and a successful retry of the batch")
        records = svc.log_events()
        assert svc.stop() == 0
    retried = [r for r in records if r.get("event") == "webhook_batch_not_delivered_retrying"]
    assert retried and "timeout_s=1" in retried[0]["reason"]
    requests = receiver.snapshot()
    first = requests[0]
    # duplicates of the whole batch, with the same batch id: the late answer and a retry both
    # succeeded (under load a retry may itself time out while the receiver is still busy)
    same = [r for r in requests if r.batch_id == first.batch_id]
    assert len(same) >= 2 and sum(r.ok for r in same) >= 2, same
    assert all(r.body == first.body and r.signature_ok for r in same)
    _check_stream(receiver, 500)
    _assert_complete(db, receiver)


def test_receiver_down_makes_healthz_503_and_nothing_is_lost(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    with _service(tmp_path, db, receiver, free_port) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 5)
        wait_for(lambda: _has_item(receiver, 5), 30, what="first events")
        receiver.down()
        down_at = time.monotonic()
        _write(db, 6, 20)
        svc.wait_state(PIPELINE, "retrying")
        status, health = _health(svc)
        assert status == 503 and health["failing"][0]["error"] == "sink_unavailable"
        message = svc.pipeline(PIPELINE)["last_error"]["message"]
        assert "ConnectError" in message and "sent again" in message, message
        time.sleep(max(0.0, 2.5 - (time.monotonic() - down_at)))
        assert _health(svc)[0] == 503
        receiver.up()
        wait_for(lambda: _has_item(receiver, 25), 30, what="delivery after the receiver is back")
        wait_for(lambda: _health(svc) == (200, {"status": "ok"}), 10, what="/healthz 200")
        assert svc.stop() == 0
    _check_stream(receiver, 500)
    _assert_complete(db, receiver)


def test_stop_while_receiver_is_down_is_prompt_and_a_restart_delivers_the_rest(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    receiver.down()
    with _service(tmp_path, db, receiver, free_port, max_backoff_s=30) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 10)
        svc.wait_state(PIPELINE, "retrying")
        t0 = time.monotonic()
        assert svc.stop() == 0
        assert time.monotonic() - t0 < 5, "the stop waited for the receiver"
    receiver.up()
    with _service(tmp_path, db, receiver, free_port) as svc:
        wait_for(lambda: _has_item(receiver, 10), 30, what="delivery after the restart")
        assert svc.stop() == 0
    _check_stream(receiver, 500, one_run=False)
    _assert_complete(db, receiver)


# -- refusals -------------------------------------------------------------------------------------


def test_400_stops_the_pipeline_with_the_status_and_the_start_of_the_body(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    body = "invalid payload: unknown field 'qty' " + "x" * 500
    receiver.mode = Answer(400, body)
    with _service(
        tmp_path, db, receiver, free_port, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as svc:
        svc.wait_state(PIPELINE, "running")
        _write(db, 1, 3)
        doc = svc.wait_state(PIPELINE, "failed")
        error = doc["last_error"]
        assert error["kind"] == "sink_rejected"
        assert "400 Bad Request" in error["message"]
        assert "invalid payload: unknown field 'qty' xxx" in error["message"]
        assert "x" * 300 not in error["message"], "the whole body is shown"
        status, health = _health(svc)
        assert status == 503
        assert health["failing"] == [
            {"pipeline": PIPELINE, "state": "failed", "error": "sink_rejected"}
        ]
        assert svc.get("/livez")[0] == 200
        assert sum(r.status == 400 for r in receiver.snapshot()) == 1, "a 400 is not retried"
        assert svc.stop() == 0
        logs = svc.logs()
    assert SECRET not in logs and TOKEN not in logs


def test_413_halves_batches_until_they_fit(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    receiver.max_events = 7
    with _service(tmp_path, db, receiver, free_port, batch_max=40) as svc:
        svc.wait_state(PIPELINE, "running")
        _write_one_tx(db, 1, 100)
        _write(db, 200, 5)
        wait_for(lambda: _has_item(receiver, 204), 30, what="every event")
        assert svc.stop() == 0
    requests = receiver.snapshot()
    assert [len(r.events) for r in requests if r.status == 413][:3] == [40, 20, 10]
    assert all(len(r.events) <= 5 for r in requests if r.ok)
    assert all(r.status in (200, 413) for r in requests)
    _check_stream(receiver, 40)
    assert len(receiver.events()) == len({e["id"] for e in receiver.events()}) == 113
    _assert_complete(db, receiver)


def test_a_single_event_too_large_stops_the_pipeline_naming_it(
    tmp_path: Path, db: str, receiver: Receiver, free_port: int
) -> None:
    receiver.max_events = 0
    with _service(tmp_path, db, receiver, free_port, batch_max=4) as svc:
        svc.wait_state(PIPELINE, "running")
        _write_one_tx(db, 1, 3)
        doc = svc.wait_state(PIPELINE, "failed")
        assert svc.stop() == 0
    sizes = [len(r.events) for r in receiver.snapshot()]
    assert sizes == [3, 1], sizes
    first = receiver.snapshot()[0].events[0]
    error = doc["last_error"]
    assert error["kind"] == "sink_event_too_large"
    assert first["id"] in error["message"]
    assert f"{len(orjson.dumps(first))} bytes" in error["message"]
    assert "413" in error["message"]


# -- TLS ------------------------------------------------------------------------------------------


def test_https_is_verified_and_ca_file_pins_the_receiver(
    tmp_path: Path, db: str, free_port: int
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    receiver = Receiver(secret=SECRET, tls=(cert, key))
    try:
        sink = {"type": "webhook", "url": receiver.url, "secret": SECRET, "max_backoff_s": 0.5}
        source = {"type": "postgres", "dsn": db, "tables": ["public.items"], "heartbeat_s": 1}
        cfg = write_config(
            tmp_path,
            [
                {
                    "name": "pinned",
                    "source": {**source, "slot": "cdc_pinned"},
                    "snapshot": {"mode": "never"},
                    "sink": {**sink, "ca_file": "receiver.pem"},
                },
                {
                    "name": "unpinned",
                    "source": {**source, "slot": "cdc_unpinned"},
                    "snapshot": {"mode": "never"},
                    "sink": sink,
                },
            ],
            api_port=free_port,
        )
        with CdcService(cfg) as svc:
            svc.wait_state("pinned", "running")
            svc.wait_state("unpinned", "running")
            _write_one_tx(db, 1, 5)
            wait_for(lambda: _has_item(receiver, 5), 30, what="delivery over https")
            doc = svc.wait_state("unpinned", "retrying")
            assert doc["last_error"]["kind"] == "sink_unavailable"
            assert "CERTIFICATE_VERIFY_FAILED" in doc["last_error"]["message"]
            assert svc.pipeline("pinned")["state"] == "running"
            assert svc.stop() == 0
        assert len(receiver.events()) == 5, "only the pinned pipeline delivers"
    finally:
        receiver.close()
