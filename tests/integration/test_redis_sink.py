"""The redis sink against real redis-server processes (Debian's, AOF on, in temp folders):
each batch is one MULTI/EXEC with the offsets, a restart skips exactly what Redis already holds,
kill -9 of Redis or of the service adds no duplicates and loses nothing, MAXLEN trimming, the
warning for a server without AOF, a refused login; and bad input: an event over
proto-max-bulk-len, a server unreachable at start, TLS with and without the right CA."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from cdc.errors import FatalError
from cdc_local.postgres import free_port
from sinks.redis import RedisConfig, RedisSink
from tests.faults._support import (
    ChangeWriter,
    PgTables,
    StreamsOut,
    outcome,
    stop_cleanly,
    wait_converged,
    wait_new_checkpoint,
)
from tests.helpers import CdcService, wait_for, write_config
from tests.redis_harness import LocalRedis, RedisHarness, read_stream
from tests.sink_events import ORDERS, context, event, keyless, large
from tests.webhook_harness import self_signed_certificate


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    server = LocalRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def _sink(server: LocalRedis, **settings: Any) -> RedisSink:
    return RedisSink(RedisConfig(url=server.url, **settings), context())


def _ids(server: LocalRedis, key: str = "cdc:shop:public.orders") -> list[str]:
    c = server.client()
    try:
        return [e["id"].decode() for e in read_stream(c, key)]
    finally:
        c.close()


def test_each_batch_is_one_multi_exec_with_the_last_id(redis_server: LocalRedis) -> None:
    sink = _sink(redis_server)
    sink.open(None)
    commands: list[list[str]] = []
    ready = threading.Event()

    def monitor() -> None:
        c = redis_server.client()
        with c.monitor() as m:
            ready.set()
            for cmd in m.listen():
                words = cmd["command"].split(" ")
                commands.append(words)
                if words[0] == "EXEC":
                    return

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    assert ready.wait(10)
    time.sleep(0.2)  # MONITOR is registered once its reply came back
    sink.write_schema(ORDERS)
    batch = [event(1), event(2), event(3, "d"), event(4, "t")]
    sink.write(batch)
    watcher.join(10)
    token = sink.flush()
    sink.close()

    names = [w[0].upper() for w in commands if w[0].upper() not in ("HGET", "PING", "CLIENT")]
    start = names.index("MULTI")
    inside = names[start : names.index("EXEC") + 1]
    assert inside == ["MULTI", "XADD", "XADD", "XADD", "XADD", "HSET", "DEL", "RPUSH", "EXEC"]
    c = redis_server.client()
    try:
        offsets = c.hgetall("cdc:shop:offsets")
        assert offsets[b"last_id"].decode() == batch[-1].id
        assert offsets[b"count"] == b"4" and token == "4"
        entries = read_stream(c, "cdc:shop:public.orders")
        schemas = c.hgetall("cdc:shop:schemas")
    finally:
        c.close()
    assert [e["id"].decode() for e in entries] == [e.id for e in batch]
    assert [e["op"] for e in entries] == [b"c", b"c", b"d", b"t"]
    assert [e["key"] for e in entries] == [b'{"id":1}', b'{"id":2}', b'{"id":3}', b"null"]
    assert [e["value"] for e in entries] == [e.json for e in batch]
    assert orjson.loads(schemas[b"public.orders@1"]) == ORDERS.definition


def test_restart_skips_exactly_what_redis_already_holds(redis_server: LocalRedis) -> None:
    first = _sink(redis_server)
    first.open(None)
    first.write_schema(ORDERS)
    first.write([event(i) for i in range(1, 6)])
    token = first.flush()  # the checkpoint is saved with this token
    first.write([event(i) for i in range(6, 9)])
    first.write([event(i) for i in range(9, 11)])
    first.close()  # crash: applied by Redis, never checkpointed
    assert _ids(redis_server) == [event(i).id for i in range(1, 11)]

    second = _sink(redis_server)
    second.open(token)  # the pipeline delivers everything after the checkpoint again
    second.write_schema(ORDERS)
    second.write([event(i) for i in range(6, 10)])
    second.write([event(i) for i in range(10, 14)])
    assert second.flush() == "13"
    second.close()
    assert _ids(redis_server) == [event(i).id for i in range(1, 14)]

    # a re-delivery that differs from what Redis holds is written, never dropped
    third = _sink(redis_server)
    third.open("10")
    third.write([event(100)])
    third.close()
    assert _ids(redis_server)[-1] == event(100).id


def test_keyless_events_and_maxlen_trimming(redis_server: LocalRedis) -> None:
    sink = _sink(redis_server, maxlen=10)
    sink.open(None)
    for start in range(0, 1000, 200):
        sink.write([keyless(i) for i in range(start, start + 200)])
    sink.flush()
    sink.close()
    c = redis_server.client()
    try:
        length = c.xlen("cdc:shop:public.log")
        last = c.xrevrange("cdc:shop:public.log", count=1)[0][1]
    finally:
        c.close()
    assert 10 <= length < 1000, length  # approximate: whole nodes are trimmed
    assert last[b"key"] == b"null" and last[b"id"].decode() == keyless(999).id


def test_warns_when_the_server_does_not_persist(tmp_path: Path) -> None:
    volatile = LocalRedis(tmp_path / "volatile", appendonly=False).start()
    durable = LocalRedis(tmp_path / "durable").start()
    try:
        for server, warned in ((volatile, True), (durable, False)):
            with capture_logs() as logs:
                sink = _sink(server)
                sink.open(None)
                sink.close()
            found = [r for r in logs if "appendonly" in r.get("message", "") and r["log_level"] == "warning"]
            assert bool(found) is warned, logs
    finally:
        volatile.stop()
        durable.stop()


def test_a_refused_login_is_fatal(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "auth", requirepass="right-secret").start()
    try:
        good = RedisSink(RedisConfig(url=server.url), context())
        good.open(None)
        good.close()
        bad = RedisSink(RedisConfig(url=server.url.replace("right-secret", "wrong")), context())
        with pytest.raises(FatalError) as info:
            bad.open(None)
        bad.close()
    finally:
        server.stop()
    assert info.value.kind == "sink_auth"
    assert "refused the login" in str(info.value) and "wrong" not in str(info.value)


def test_kill9_of_redis_and_of_the_service_adds_no_duplicates_and_loses_nothing(
    pg15db: str,
    tmp_path: Path,
    free_port: int,
) -> None:
    db = PgTables(pg15db)
    db.create()
    harness = RedisHarness(tmp_path)
    name = "rk"
    config = write_config(
        tmp_path,
        [
            {
                "name": name,
                "source": db.source(),
                "snapshot": {"mode": "never"},
                "sink": harness.sink_config(),
            }
        ],
        api_port=free_port,
    )
    writer = ChangeWriter(db, seed="redis-kill", pause=0.01)
    svc = CdcService(config)
    try:
        svc.wait_state(name, "running", timeout=60)
        writer.start()
        wait_for(lambda: len(harness.events()) > 50, 30, what="first events")
        harness.server.kill9()  # Redis dies mid-stream (its AOF is fsynced per write)
        svc.wait_state(name, "retrying", timeout=10)
        harness.server.restart()
        svc.wait_state(name, "running", timeout=30)
        for _ in range(2):  # and the service, twice
            before = len(harness.events())
            wait_for(lambda b=before: len(harness.events()) > b + 30, 30, what="more events")
            svc.kill()
            svc = CdcService(config)
            wait_new_checkpoint(svc, name, None, timeout=45)
        writer.stop()
        out = StreamsOut(harness)
        wait_converged(out, db, timeout=60)
        stop_cleanly(svc)
        result = outcome(out, db, writer)
    finally:
        writer.halt.set()
        svc.kill()
        harness.close()
    assert result.lost == 0, result.missing
    assert result.duplicates == 0, f"{result.duplicates} duplicate entries in the streams"
    assert result.changes > 100


def test_a_stream_key_of_another_type_is_fatal_before_the_batch(redis_server: LocalRedis) -> None:
    c = redis_server.client()
    c.set("cdc:shop:public.orders", "not a stream")
    sink = _sink(redis_server)
    sink.open(None)
    with pytest.raises(FatalError, match="holds a string"):
        sink.write([event(1)])
    sink.close()
    assert c.hget("cdc:shop:offsets", "count") is None  # nothing of the batch was applied
    c.close()


def test_an_event_larger_than_proto_max_bulk_len_is_fatal_naming_id_size_and_setting(
    tmp_path: Path,
) -> None:
    """Redis would drop the connection on it (and the batch be retried forever): the sink
    refuses it first, and nothing of its batch is written."""
    server = LocalRedis(tmp_path / "small", proto_max_bulk_len="1mb").start()
    try:
        sink = _sink(server)
        sink.open(None)
        sink.write_schema(ORDERS)
        sink.write([event(1)])
        too_big = large(2, 1024 * 1024)
        with pytest.raises(FatalError) as info:
            sink.write([event(3), too_big])
        sink.close()
        assert _ids(server) == [event(1).id]
    finally:
        server.stop()
    assert info.value.kind == "event_too_large"
    text = str(info.value)
    assert too_big.id in text and f"{len(too_big.json)} bytes" in text
    assert "proto-max-bulk-len (1048576 bytes)" in text


def test_an_unreachable_server_at_start_is_retried_with_a_clear_message(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "later")
    server.port = free_port()  # nothing listens there yet
    reported: list[Any] = []
    ctx = context()
    ctx._on_degraded = reported.append
    sink = RedisSink(RedisConfig(url=server.url, timeout_s=2), ctx)
    opened = threading.Thread(target=sink.open, args=(None,), daemon=True)
    try:
        opened.start()
        wait_for(lambda: [e for e in reported if e is not None], 10, what="a retrying report")
        first = next(e for e in reported if e is not None)
        assert first.kind == "sink_unavailable"
        assert f"redis://127.0.0.1:{server.port}/0" in str(first) and "retrying" in str(first)
        assert opened.is_alive()  # still trying, not failed
        server.restart()
        opened.join(30)
        assert not opened.is_alive()
        sink.write([event(1)])
        assert reported[-1] is None  # running again
        assert _ids(server) == [event(1).id]
    finally:
        ctx.stop.set()
        sink.close()
        server.stop()


def test_tls_with_the_right_ca_works_and_without_it_is_fatal(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = LocalRedis(tmp_path / "tls", tls=(cert, key)).start()
    try:
        assert server.url.startswith("rediss://")
        sink = _sink(server, tls_ca_file=str(cert))
        sink.open(None)
        sink.write([event(1)])
        sink.close()
        assert _ids(server) == [event(1).id]
        untrusted = _sink(server)  # the system's CAs do not know the test's
        with pytest.raises(FatalError) as info:
            untrusted.open(None)
        untrusted.close()
    finally:
        server.stop()
    assert info.value.kind == "sink_tls"
    assert "does not verify" in str(info.value) and "tls_ca_file" in str(info.value)


def test_a_destination_a_transform_chose_is_the_stream(redis_server: LocalRedis) -> None:
    """`route` / `outbox` (contract section 10) set an event's destination: the stream key."""
    from cdc.transforms import derive

    sink = _sink(redis_server)
    sink.open(None)
    sink.write_schema(ORDERS)
    routed = derive(event(2), dest="cdc:shop:orders.eu")
    sink.write([event(1), routed, event(3)])
    sink.flush()
    sink.close()
    assert _ids(redis_server) == [event(1).id, event(3).id]
    assert _ids(redis_server, "cdc:shop:orders.eu") == [routed.id]
