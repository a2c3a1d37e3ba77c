"""The nats sink against real nats-server processes (Debian's, JetStream on, in temp folders):
the headers (Nats-Msg-Id = event id), the stream it creates, JetStream's de-duplication of what
a restarted service publishes again after kill -9, ``create_stream: false``, and logins; and
bad input: an event over max_payload (or a stream's max_msg_size), a stream whose subjects
another stream holds, a server unreachable at start, TLS with and without the right CA."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.errors import EventUndeliverable, FatalError
from cdc_local.postgres import free_port
from sinks.nats import NatsConfig, NatsSink
from tests.faults._support import (
    ChangeWriter,
    PgTables,
    StreamsOut,
    outcome,
    saved_checkpoint,
    stop_cleanly,
    wait_converged,
)
from tests.helpers import CdcService, wait_for, write_config
from tests.nats_harness import LocalNats, NatsHarness, read_messages, stream_info
from tests.sink_events import ORDERS, context, event, large
from tests.webhook_harness import self_signed_certificate


@pytest.fixture
def nats_server(tmp_path: Path) -> Any:
    server = LocalNats(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


def test_kill9_while_acks_are_pending_then_restart_adds_no_duplicates(
    pg15db: str,
    tmp_path: Path,
    free_port: int,
) -> None:
    """Messages published while the server hung reach the stream once it resumes, after the
    service was killed; the restarted service publishes them again from its checkpoint and
    JetStream drops them by Nats-Msg-Id."""
    db = PgTables(pg15db)
    db.create()
    harness = NatsHarness(tmp_path)
    name = "nk"
    config = write_config(
        tmp_path,
        [{"name": name, "source": db.source(), "snapshot": {"mode": "never"}, "sink": harness.sink_config()}],
        api_port=free_port,
    )
    writer = ChangeWriter(db, seed="nats-kill", pause=0.01)
    svc = CdcService(config)
    try:
        svc.wait_state(name, "running", timeout=60)
        writer.start()
        wait_for(lambda: len(harness.events()) > 50, 30, what="first events")
        harness.server.pause()  # publishes pile up unacknowledged in the server's socket
        svc.wait_state(name, "retrying", timeout=10)
        svc.kill()
        checkpoint = saved_checkpoint(tmp_path / "state.sqlite", name)
        harness.server.resume()  # it stores what was published meanwhile
        published = len(harness.events())
        svc = CdcService(config)
        svc.wait_state(name, "running", timeout=30)
        writer.stop()
        out = StreamsOut(harness)
        wait_converged(out, db, timeout=60)
        stop_cleanly(svc)
        result = outcome(out, db, writer)
        messages = harness.messages()
        info = stream_info(harness.server)
    finally:
        writer.halt.set()
        svc.kill()
        harness.close()
    # the hung server held events past the checkpoint: they were published twice
    covered = [m for m in messages if "cdc-op" in m.headers]
    assert checkpoint is not None and published > 0
    past = [m for m in covered[:published] if _lsn(m) >= _lsn_text(checkpoint)]
    assert past, "nothing was published past the checkpoint before the kill"
    assert result.lost == 0, result.missing
    assert result.duplicates == 0, f"{result.duplicates} duplicate messages in the stream"
    for m in covered:
        doc = orjson.loads(m.data)
        assert m.headers["Nats-Msg-Id"] == doc["id"] == m.headers["cdc-id"]
        assert m.headers["cdc-op"] == doc["op"]
        assert m.headers["cdc-schema-version"] == f"{doc['schema']['name']}@{doc['schema']['version']}"
        assert m.headers["cdc-key"] == orjson.dumps(doc["key"]).decode()
        assert m.subject == f"cdc.{name}.public.{doc['source']['table']}"
    schemas = [m for m in messages if "cdc-op" not in m.headers]
    assert {m.subject for m in schemas} == {f"cdc.{name}.schemas"}
    assert {m.headers["cdc-schema-version"] for m in schemas} == {"public.orders@1", "public.customers@1"}
    # the stream the sink created
    assert info.config.subjects == [f"cdc.{name}.*.*", f"cdc.{name}.schemas"]
    assert info.config.duplicate_window == 120


def _lsn(m: Any) -> int:
    return _lsn_text(orjson.loads(m.data)["source"]["lsn"])


def _lsn_text(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _sink(server: LocalNats, **settings: Any) -> NatsSink:
    return NatsSink(NatsConfig(url=server.url, **settings), context())


def test_create_stream_false_with_a_missing_stream_is_fatal(nats_server: LocalNats) -> None:
    sink = _sink(nats_server, create_stream=False)
    with pytest.raises(FatalError) as info:
        sink.open(None)
    sink.close()
    message = str(info.value)
    assert "stream CDC does not exist" in message and "create_stream" in message
    assert "cdc.shop.*.*" in message and "cdc.shop.schemas" in message
    assert stream_info(nats_server) is None  # nothing created


def test_create_stream_false_uses_a_stream_that_covers_the_subjects(nats_server: LocalNats) -> None:
    async def create() -> None:
        nc = await nats_server.connect()
        try:
            await nc.jetstream().add_stream(name="MINE", subjects=["cdc.>"])
        finally:
            await nc.close()

    asyncio.run(create())
    sink = _sink(nats_server, create_stream=False, stream="MINE")
    sink.open(None)
    sink.write_schema(ORDERS)
    sink.write([event(1), event(2, "d")])
    sink.flush()
    sink.close()
    assert stream_info(nats_server, "MINE").config.subjects == ["cdc.>"]  # unchanged
    got = read_messages(nats_server, "MINE")
    assert [m.headers.get("Nats-Msg-Id") for m in got] == [
        "schema:shop:public.orders@1",
        event(1).id,
        event(2).id,
    ]
    # a stream that exists but does not cover the subjects is refused too
    narrow = _sink(nats_server, create_stream=False, stream="MINE", subject="other.{table}")
    with pytest.raises(FatalError, match="does not cover"):
        narrow.open(None)
    narrow.close()


@pytest.mark.parametrize("method", ["token", "user"])
def test_credentials_work_and_a_wrong_one_is_fatal(tmp_path: Path, method: str) -> None:
    if method == "token":
        server = LocalNats(tmp_path / "n", token="s3cret-token").start()
        good, bad = {"token": "s3cret-token"}, {"token": "wrong-token"}
    else:
        server = LocalNats(tmp_path / "n", user="cdc", password="s3cret-pw").start()
        good = {"user": "cdc", "password": "s3cret-pw"}
        bad = {"user": "cdc", "password": "wrong-pw"}
    try:
        sink = _sink(server, **good)
        sink.open(None)
        sink.write_schema(ORDERS)
        sink.write([event(1)])
        sink.flush()
        sink.close()
        assert [m.headers["Nats-Msg-Id"] for m in read_messages(server)][-1] == event(1).id
        refused = _sink(server, **bad)
        with pytest.raises(FatalError) as info:
            refused.open(None)
        refused.close()
    finally:
        server.stop()
    assert info.value.kind == "sink_auth"
    assert "refused the login" in str(info.value)
    assert "wrong" not in str(info.value)


def test_an_event_larger_than_the_limit_is_fatal_naming_id_size_and_setting(
    tmp_path: Path,
) -> None:
    """Larger than the server's max_payload, or than a stream's own max_msg_size: the pipeline
    stops (never skips), naming the event, its size and the setting to raise."""
    server = LocalNats(tmp_path / "n", max_payload=8192).start()
    try:
        sink = _sink(server)
        sink.open(None)
        sink.write_schema(ORDERS)
        sink.write([event(1)])
        too_big = large(2, 9000)
        with pytest.raises(EventUndeliverable) as refused:  # a FatalError the pipeline may
            sink.write([event(4), too_big])  # dead-letter: what came before it is published
        assert refused.value.event is too_big
        sink.flush()
        info = refused
        sink.close()
        assert info.value.kind == "event_too_large"
        text = str(info.value)
        assert too_big.id in text and f"{len(too_big.json)} bytes" in text
        assert "max_payload (8192 bytes" in text

        async def create() -> None:
            nc = await server.connect()
            try:
                await nc.jetstream().add_stream(name="SMALL", subjects=["small.>"], max_msg_size=2048)
            finally:
                await nc.close()

        asyncio.run(create())
        narrow = _sink(server, stream="SMALL", subject="small.{table}", schema_subject="small.schemas")
        narrow.open(None)
        narrow.write_schema(ORDERS)
        with pytest.raises(FatalError) as info:
            narrow.write([large(3, 3000)])
        narrow.close()
        assert info.value.kind == "event_too_large"
        assert "stream SMALL's max_msg_size (2048 bytes" in str(info.value)
        # nothing of the refused events reached a stream
        ids = [m.headers.get("Nats-Msg-Id") for m in read_messages(server)]
        assert ids == ["schema:shop:public.orders@1", event(1).id, event(4).id]
        assert all("cdc-op" not in m.headers for m in read_messages(server, "SMALL"))
    finally:
        server.stop()


def test_a_stream_whose_subjects_another_stream_holds_is_fatal_naming_it(
    nats_server: LocalNats,
) -> None:
    async def create() -> None:
        nc = await nats_server.connect()
        try:
            await nc.jetstream().add_stream(name="OTHER", subjects=["cdc.>"])
        finally:
            await nc.close()

    asyncio.run(create())
    sink = _sink(nats_server)  # wants to create CDC with cdc.shop.*.* and cdc.shop.schemas
    with pytest.raises(FatalError) as info:
        sink.open(None)
    sink.close()
    assert info.value.kind == "sink_config"
    text = str(info.value)
    assert "cannot create the stream CDC" in text and "overlap" in text


def test_an_unreachable_server_at_start_is_retried_with_a_clear_message(tmp_path: Path) -> None:
    server = LocalNats(tmp_path / "n")
    server.port = free_port()  # nothing listens there yet
    reported: list[Any] = []
    ctx = context()
    ctx._on_degraded = reported.append
    sink = NatsSink(NatsConfig(url=server.url), ctx)
    opened = threading.Thread(target=sink.open, args=(None,), daemon=True)
    try:
        opened.start()
        wait_for(lambda: [e for e in reported if e is not None], 10, what="a retrying report")
        first = next(e for e in reported if e is not None)
        assert first.kind == "sink_unavailable"
        assert f"nats://127.0.0.1:{server.port}" in str(first) and "cannot connect" in str(first)
        assert opened.is_alive()  # still trying, not failed
        server.restart()
        opened.join(30)
        assert not opened.is_alive()
        sink.write_schema(ORDERS)
        sink.write([event(1)])
        sink.flush()
        assert reported[-1] is None  # running again
    finally:
        ctx.stop.set()
        sink.close()
        server.stop()


def test_tls_with_the_right_ca_works_and_without_it_is_fatal(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = LocalNats(tmp_path / "n", tls=(cert, key)).start()
    try:
        sink = _sink(server, tls_ca_file=str(cert))
        sink.open(None)
        sink.write_schema(ORDERS)
        sink.write([event(1)])
        sink.flush()
        sink.close()
        assert [m.headers["Nats-Msg-Id"] for m in read_messages(server)][-1] == event(1).id
        untrusted = _sink(server)  # the system's CAs do not know the test's
        with pytest.raises(FatalError) as info:
            untrusted.open(None)
        untrusted.close()
    finally:
        server.stop()
    assert info.value.kind == "sink_tls"
    assert "does not verify" in str(info.value) and "tls_ca_file" in str(info.value)
