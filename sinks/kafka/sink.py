"""The Kafka sink: one record per event, through an idempotent librdkafka producer.

What goes where
---------------
* Each event is one record on the topic rendered from ``topic`` (``{pipeline}``,
  ``{schema}`` = ``source.schema``, ``{table}`` = ``source.table``): key = the compact JSON of
  ``key`` (columns in key order), value = the event JSON, headers ``cdc-id`` (the event id),
  ``cdc-op`` and ``cdc-schema-version`` (``name@version``, the schema topic's key).
* Keyed records are placed by librdkafka's ``murmur2_random`` partitioner, which is the Java
  client's murmur2 (``(murmur2(key) & 0x7fffffff) % partitions``), so Kafka Streams, ksqlDB
  and Debezium consumers co-partition with these topics. Keyless events (a table without a
  key) all go to partition 0, so one row's changes stay in order.
* A ``t`` (truncate) event is written to every partition of its topic, without a key (on a
  compacted topic with the key ``"__cdc_truncate"``, a JSON string, because compaction refuses
  records without a key), so every consumer of every partition sees it in order.
* A ``d`` with a key is followed by a tombstone (same key, null value, no headers) unless
  ``tombstones: false``, so compaction eventually removes the row.
* Each schema version is written to the schema topic (default ``{pipeline}.schemas``, created
  compacted, one partition), keyed ``name@version``, value = the definition JSON, header
  ``cdc-pipeline``; it is acknowledged by the broker before the first event using it is
  produced.

Topics
------
A topic is looked up once (then cached for the sink's life): missing topics are created with
``topic_partitions`` and ``topic_replication_factor`` through the AdminClient (a replication
factor above the number of brokers is a FatalError, checked here because some brokers accept
it), and its ``cleanup.policy`` is read with ``describe_configs``. A table without a key whose
topic is compacted is a FatalError naming the table, raised when its schema version arrives,
before its first event.

Delivery (the guarantee)
------------------------
The producer runs with ``enable.idempotence=true``, ``acks=all``,
``max.in.flight.requests.per.connection=5`` (what the user's ``config`` cannot change), and by
default ``message.timeout.ms=0`` (never give up on a record). :meth:`KafkaSink.write` only
queues records (a full local queue is waited out, never dropped). :meth:`KafkaSink.flush`
returns only when librdkafka holds no record that the broker has not acknowledged; the
pipeline saves its checkpoint after that, so a checkpoint never covers an unacknowledged
event. Delivery reports are requested for errors only (``delivery.report.only.error``): an
empty queue means every record was acknowledged, and an error is reported to the callback.
A delivery error raises :class:`~cdc.errors.RetriableError`; the pipeline then resumes from
its checkpoint and produces those events again (at-least-once; a consumer de-duplicates by
``cdc-id``). An event larger than ``message.max.bytes`` (or refused by the broker as too large)
is a :class:`~cdc.errors.FatalError` naming the event, its size and the settings to raise; it is
never dropped.

While the broker does not answer, ``flush`` keeps waiting in small steps: after
:data:`DEGRADED_AFTER_S` without progress it reports the pipeline as degraded
(``retrying``, ``/healthz`` 503), and as soon as records are acknowledged again it reports
recovery. A service stop is not held up: once the stop event is set, ``flush`` waits at most
:data:`STOP_WAIT_S` more, then raises RetriableError (the unacknowledged events are sent again
after the restart).

No state
--------
The schema topic tells whether this pipeline already wrote events: :meth:`holds_events` reads
it from the beginning and keeps the records whose ``cdc-pipeline`` header names this pipeline
(a later tombstone for a key removes it). ``cdc drop`` writes tombstones for those keys, so a
fresh start is allowed afterwards; data topics are never deleted.

Secrets: values of ``config`` keys that look secret (``sasl.password``, ...) are registered
with the log redaction, and no config value is ever logged.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from cdc.errors import (
    CDCError,
    EventUndeliverable,
    FatalError,
    FatalSinkError,
    Kind,
    RetriableError,
    RetriableSinkError,
)
from cdc.log import add_secrets, redact
from cdc.plugin import PluginContext, Sink
from sinks.kafka.config import (
    GUARANTEE_KEYS,
    MAX_TOPIC_LENGTH,
    OWNED_KEYS,
    KafkaConfig,
    is_secret_key,
    render_topic,
)

if TYPE_CHECKING:
    from cdc.events import ChangeEvent
    from cdc.schema import SchemaVersion

__all__ = ["KafkaSink", "KafkaConfig", "TRUNCATE_KEY"]

#: key of truncate records on a compacted topic (a JSON string, like every other key)
TRUNCATE_KEY = b'"__cdc_truncate"'
#: seconds without an acknowledgement before the pipeline is reported degraded
DEGRADED_AFTER_S = 3.0
#: seconds ``flush`` keeps waiting once the service is stopping
STOP_WAIT_S = 5.0
#: seconds ``close`` waits for what is still in flight
CLOSE_FLUSH_S = 1.0
#: seconds allowed for one admin request (metadata, create, describe)
ADMIN_TIMEOUT_S = 10.0
#: seconds allowed to read the schema topic to its end
READ_TIMEOUT_S = 15.0
#: seconds a created topic gets to show up in the metadata
CREATE_WAIT_S = 30.0
#: librdkafka's default message.max.bytes
DEFAULT_MAX_BYTES = 1_000_000
_STEP_S = 0.1
#: seconds before the same librdkafka log line is logged again
LOG_REPEAT_S = 30.0
_CLIENT_NAME = re.compile(r"\[rdkafka#\w+-\d+\] ")


@dataclass(slots=True)
class _Topic:
    name: str
    partitions: int
    compacted: bool
    policy: str


@dataclass(slots=True)
class _Route:
    """Where the events of one schema version go."""

    topic: str
    partitions: int
    compacted: bool
    version: str  # the cdc-schema-version header


def _kafka() -> Any:
    try:
        import confluent_kafka
        import confluent_kafka.admin  # noqa: F401
    except ImportError as exc:
        raise FatalError(
            f"the kafka sink needs the confluent-kafka package: pip install confluent-kafka ({exc})",
            kind=Kind.PLUGIN_IMPORT,
        ) from exc
    return confluent_kafka


class _ToStructlog(logging.Handler):
    """librdkafka's log lines (served by ``poll``) into the service's structured log, each
    distinct line at most once per :data:`LOG_REPEAT_S` (a broker that refuses a handshake
    makes librdkafka repeat the same line many times a second)."""

    def __init__(self, log: Any, quiet: tuple[str, ...] = ()) -> None:
        super().__init__(logging.DEBUG)
        self._log = log
        self._quiet = quiet  # librdkafka facilities to leave out (a line starts with its own)
        self._seen: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno < logging.INFO:
                return
            text = redact(record.getMessage())
            if text.startswith(self._quiet):
                return
            # "FAC [rdkafka#producer-3] [thrd:...]: text": the same line from any client
            fingerprint = _CLIENT_NAME.sub("", text)[:160]
            now = time.monotonic()
            if now - self._seen.get(fingerprint, -1e9) < LOG_REPEAT_S:
                return
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[fingerprint] = now
            if record.levelno >= logging.WARNING:
                self._log.warning("kafka_client", message=text)
            else:
                self._log.info("kafka_client", message=text)
        except Exception:  # noqa: BLE001 - a log line must never break delivery
            pass


def _client_logger(log: Any, name: str, quiet: tuple[str, ...] = ()) -> logging.Logger:
    """A stdlib logger for one librdkafka client role (reused, so restarts leak nothing)."""
    logger = logging.getLogger(f"cdc.kafka.{name}")
    logger.handlers[:] = [_ToStructlog(log, quiet)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class KafkaSink(Sink):
    """Writes events to Kafka topics (see the module doc)."""

    Config = KafkaConfig
    destinations = True  # `route` / `outbox` name the topic

    def __init__(self, config: KafkaConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.config: KafkaConfig = config
        self._log = ctx.log.bind(sink="kafka")
        user = dict(config.config)
        add_secrets(str(v) for k, v in user.items() if is_secret_key(k) and v not in (None, ""))
        ignored = sorted(k for k in user if k in GUARANTEE_KEYS or k in OWNED_KEYS)
        for k in ignored:
            del user[k]
        if ignored:
            self._log.warning("kafka_sink_ignores_settings_it_owns", message="kafka sink ignores settings it owns", keys=ignored)
        self._user = user
        self.schema_topic = render_topic(config.schema_topic, pipeline=ctx.name)
        try:
            self._max_bytes = int(user.get("message.max.bytes", DEFAULT_MAX_BYTES))
        except (TypeError, ValueError):
            self._max_bytes = DEFAULT_MAX_BYTES
        self._pipeline_b = ctx.name.encode()
        self._producer: Any = None
        self._admin: Any = None
        self._brokers = 0
        self._topics: dict[str, _Topic] = {}
        self._routes: dict[SchemaVersion, _Route] = {}
        self._dest_routes: dict[tuple[str, SchemaVersion], _Route] = {}
        self._schemas_sent: set[str] = set()
        # the first failed record: (error, "topic partition N", event id, too large, size)
        self._failure: tuple[Any, str, str | None, bool, int] | None = None
        self._failed = 0
        self._fatal: str | None = None
        self._broker_error: str | None = None
        self._last_error_log: dict[int, float] = {}
        self._degraded = False
        self._stop_seen: float | None = None
        self._held: dict[str, dict[str, Any]] | None = None
        self._warned: set[str] = set()
        #: ``format: debezium``: Debezium's records and topics instead of cdc's (section 9)
        self._debezium = self.debezium_encoder()

    # ------------------------------------------------------------------ clients

    def _common_config(self) -> dict[str, Any]:
        return {**self._user, "bootstrap.servers": self.config.bootstrap_servers}

    def _producer_config(self, logger: logging.Logger) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "partitioner": "murmur2_random",
            "message.timeout.ms": 0,
            **self._common_config(),
        }
        # what the user's config can never change
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "max.in.flight.requests.per.connection": 5,
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
                "error_cb": self._on_error,
                "logger": logger,
            }
        )
        return conf

    def _admin_config(self, logger: logging.Logger) -> dict[str, Any]:
        return {
            **self._common_config(),
            "allow.auto.create.topics": False,
            "error_cb": self._on_error,
            "logger": logger,
        }

    def _unavailable(self, what: str, exc: BaseException | str) -> RetriableError:
        return RetriableSinkError(
            f"kafka sink: {what}: the broker at {self.config.bootstrap_servers} did not answer "
            f"({redact(str(exc))})",
            pipeline=self.ctx.name,
        )

    def _client_error(self, exc: BaseException) -> FatalError:
        return FatalError(
            "kafka sink: librdkafka refused the sink's settings (check sink.config): "
            + redact(str(exc)),
            pipeline=self.ctx.name,
            kind=Kind.CONFIG,
        )

    def _new_admin(self) -> Any:
        ck = _kafka()
        try:
            return ck.admin.AdminClient(
                self._admin_config(
                    _client_logger(self._log, f"{self.ctx.name}.admin", ("CONFWARN",))
                )
            )
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise self._client_error(exc) from exc

    def _new_producer(self) -> Any:
        ck = _kafka()
        try:
            return ck.Producer(
                self._producer_config(_client_logger(self._log, f"{self.ctx.name}.producer"))
            )
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise self._client_error(exc) from exc

    def _new_consumer(self) -> Any:
        ck = _kafka()
        conf = {
            **self._common_config(),
            "group.id": f"cdc-{self.ctx.name}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
            "fetch.max.bytes": 52428800,
            "max.partition.fetch.bytes": 10485760,
            "error_cb": self._on_error,
            "logger": _client_logger(self._log, f"{self.ctx.name}.consumer", ("CONFWARN",)),
        }
        try:
            return ck.Consumer(conf)
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise self._client_error(exc) from exc

    # ------------------------------------------------------------------ callbacks

    def _on_delivery(self, err: Any, msg: Any) -> None:
        """Called (from poll/flush) for failed records only: keep the first failure, or the
        first too-large one, which stops the pipeline; count the rest."""
        if err is None:
            return
        self._failed += 1
        try:
            too_large = err.code() == _kafka().KafkaError.MSG_SIZE_TOO_LARGE
            if self._failure is None or (too_large and not self._failure[3]):
                value = msg.value()
                event_id = _event_id(value) if too_large else None
                size = len(value or b"")
                self._failure = (
                    err,
                    f"{msg.topic()} partition {msg.partition()}",
                    event_id,
                    too_large,
                    size,
                )
        except Exception:  # noqa: BLE001 - a callback must never raise into librdkafka
            if self._failure is None:
                self._failure = (err, "?", None, False, 0)

    def _on_error(self, err: Any) -> None:
        text = redact(str(err))
        try:
            if err.fatal():
                self._fatal = text
        except Exception:  # noqa: BLE001
            pass
        self._broker_error = text
        now = time.monotonic()
        code = err.code() if hasattr(err, "code") else 0
        if now - self._last_error_log.get(code, -1e9) >= 30:
            self._last_error_log[code] = now
            self._log.warning("kafka_sink_client_error", message="kafka sink client error", error=text)

    def _raise_failures(self) -> None:
        if self._fatal is not None:
            text, self._fatal = self._fatal, None
            raise RetriableSinkError(
                f"kafka sink: the producer hit a fatal error and is restarted: {text}",
                pipeline=self.ctx.name,
                kind=Kind.SINK_DELIVERY,
            )
        failure, count = self._failure, self._failed
        if failure is None:
            return
        self._failure, self._failed = None, 0
        ck = _kafka()
        err, where, event_id, too_large, size = failure
        topic = where.partition(" partition ")[0]
        if too_large:
            raise self._too_large(event_id, size, topic, broker=True)
        if err.code() in (
            ck.KafkaError.TOPIC_AUTHORIZATION_FAILED,
            ck.KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        ):
            raise FatalSinkError(
                f"kafka sink: the broker refused writing to topic {topic}: {redact(err.str())}; "
                "grant the service's principal WRITE (and IDEMPOTENT_WRITE on older brokers)",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            )
        raise RetriableSinkError(
            f"kafka sink: {count} record(s) were not delivered (first: topic {where}: "
            f"{redact(err.str())}); resuming from the checkpoint",
            pipeline=self.ctx.name,
            kind=Kind.SINK_DELIVERY,
        )

    def _too_large(
        self,
        event_id: str | None,
        size: int,
        topic: str,
        broker: bool = False,
        event: ChangeEvent | None = None,
    ) -> FatalError:
        what = f"event {event_id}" if event_id else "a record"
        why = (
            f"the broker refused it as too large for topic {topic}"
            if broker
            else f"larger than the producer's message.max.bytes ({self._max_bytes})"
        )
        message = (
            f"kafka sink: {what} is {size} bytes, {why}. It is not skipped: raise "
            "`config: {message.max.bytes: N}` in the sink section and the topic's "
            f"max.message.bytes (broker: message.max.bytes) for {topic}, and the consumers' "
            "fetch limits, then restart"
        )
        if event is not None:  # found before producing it: the pipeline may dead-letter it
            return EventUndeliverable(
                message, event=event, pipeline=self.ctx.name, position=event_id,
                kind=Kind.EVENT_TOO_LARGE,
            )
        return FatalSinkError(
            message, pipeline=self.ctx.name, position=event_id, kind=Kind.EVENT_TOO_LARGE
        )

    # ------------------------------------------------------------------ open / close

    def open(self, resume: str | None) -> None:
        self.close()
        self._failure, self._failed = None, 0
        self._fatal = None
        self._stop_seen = None
        self._topics.clear()
        self._routes.clear()
        self._dest_routes.clear()
        self._schemas_sent.clear()
        self._admin = self._new_admin()
        md = self._metadata()
        self._brokers = len(md.brokers)
        self._producer = self._new_producer()
        self._prepare_schema_topic()
        self._log.info(
            "kafka_sink_open", message="kafka sink open",
            bootstrap_servers=self.config.bootstrap_servers,
            brokers=self._brokers,
            schema_topic=self.schema_topic,
            max_message_bytes=self._max_bytes,
        )

    def close(self) -> None:
        producer, self._producer = self._producer, None
        self._admin = None
        self._degraded = False
        if producer is None:
            return
        try:
            remaining = producer.flush(CLOSE_FLUSH_S)
            if remaining:
                self._log.warning(
                    "kafka_sink_closed_with_records", message="kafka sink closed with records the broker has not acknowledged; they are "
                    "produced again after the restart",
                    records=remaining,
                )
                producer.purge()
                producer.poll(0)
        except Exception as exc:  # noqa: BLE001 - close must never raise
            try:
                self._log.warning("kafka_sink_could_not_close_cleanly", message="kafka sink could not close cleanly", error=redact(str(exc)))
            except Exception:  # noqa: BLE001
                pass
        self._failure, self._failed = None, 0

    def check(self) -> list[CDCError]:
        """The brokers answer, and the schema topic, when it exists, is compacted; nothing is
        created (topics are created at start)."""
        try:
            self._admin = self._new_admin()
            md = self._metadata()
        except CDCError as exc:
            return [exc]
        problems: list[CDCError] = []
        if self.schema_topic in md.topics:
            try:
                policy = self._cleanup_policy(self.schema_topic)
            except CDCError as exc:
                return [exc]
            if "compact" not in policy:
                problems.append(FatalSinkError(
                    f"kafka sink: the schema topic {self.schema_topic} has cleanup.policy="
                    f"{policy}; with time-based retention its records expire. Run "
                    f"`kafka-configs --alter --entity-type topics --entity-name "
                    f"{self.schema_topic} --add-config cleanup.policy=compact`",
                    pipeline=self.ctx.name,
                    kind=Kind.SINK_CONFIG,
                ))
        self._admin = None
        return problems

    def _require(self) -> Any:
        if self._producer is None:
            raise RetriableSinkError(
                "kafka sink is not open", pipeline=self.ctx.name
            )
        return self._producer

    # ------------------------------------------------------------------ topics

    def _metadata(self, topic: str | None = None) -> Any:
        ck = _kafka()
        admin = self._admin or self._new_admin()
        self._admin = admin
        try:
            if topic is None:
                return admin.list_topics(timeout=ADMIN_TIMEOUT_S)
            return admin.list_topics(topic, timeout=ADMIN_TIMEOUT_S)
        except ck.KafkaException as exc:
            raise self._unavailable("cannot read the cluster metadata", exc) from exc

    def _topic(self, name: str, *, partitions: int, config: dict[str, str] | None = None) -> _Topic:
        """The topic's facts, creating it when missing (cached)."""
        known = self._topics.get(name)
        if known is not None:
            return known
        if len(name) > MAX_TOPIC_LENGTH:
            raise FatalError(
                f"kafka sink: topic name {name[:60]}... is longer than Kafka's {MAX_TOPIC_LENGTH} "
                "characters; shorten sink.topic",
                pipeline=self.ctx.name,
                kind=Kind.CONFIG,
            )
        ck = _kafka()
        tm = self._metadata(name).topics.get(name)
        missing = (
            tm is None
            or not tm.partitions
            or (tm.error is not None and tm.error.code() == ck.KafkaError.UNKNOWN_TOPIC_OR_PART)
        )
        if missing:
            self._create(name, partitions, config)
            tm = self._await_topic(name)
        elif tm.error is not None:
            raise self._topic_error(name, tm.error)
        policy = self._cleanup_policy(name)
        info = _Topic(name, len(tm.partitions), "compact" in policy, policy)
        self._topics[name] = info
        return info

    def _topic_error(self, name: str, err: Any) -> CDCError:
        ck = _kafka()
        if err.code() == ck.KafkaError.TOPIC_AUTHORIZATION_FAILED:
            return FatalSinkError(
                f"kafka sink: not allowed to use topic {name}: {err.str()}; grant the service's "
                "principal DESCRIBE, CREATE and WRITE on it",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            )
        return self._unavailable(f"cannot read the metadata of topic {name}", err.str())

    def _create(self, name: str, partitions: int, config: dict[str, str] | None) -> None:
        ck = _kafka()
        rf = self.config.topic_replication_factor
        if self._brokers and rf > self._brokers:
            raise FatalError(
                f"kafka sink: cannot create topic {name} with topic_replication_factor {rf}: "
                f"the cluster has {self._brokers} broker(s); set sink.topic_replication_factor "
                f"to at most {self._brokers} (or create the topic yourself)",
                pipeline=self.ctx.name,
                kind=Kind.CONFIG,
            )
        new = ck.admin.NewTopic(
            name, num_partitions=partitions, replication_factor=rf, config=dict(config or {})
        )
        try:
            self._admin.create_topics([new], request_timeout=ADMIN_TIMEOUT_S)[name].result(
                ADMIN_TIMEOUT_S + 5
            )
        except ck.KafkaException as exc:
            code, text = _error_of(exc)
            if code == ck.KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if code == ck.KafkaError.INVALID_CONFIG and config:
                self._log.warning(
                    "kafka_sink_the_broker_refused", message="kafka sink: the broker refused the topic config, creating it without",
                    topic=name,
                    config=sorted(config),
                    error=redact(text),
                )
                self._create(name, partitions, None)
                return
            if code == ck.KafkaError.INVALID_REPLICATION_FACTOR:
                raise FatalError(
                    f"kafka sink: cannot create topic {name} with topic_replication_factor {rf}: "
                    f"{text}; lower sink.topic_replication_factor",
                    pipeline=self.ctx.name,
                    kind=Kind.CONFIG,
                ) from exc
            if code in (
                ck.KafkaError.POLICY_VIOLATION,
                ck.KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ck.KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                ck.KafkaError.INVALID_PARTITIONS,
                ck.KafkaError.TOPIC_EXCEPTION,
            ):
                raise FatalSinkError(
                    f"kafka sink: the broker refused to create topic {name}: {redact(text)}; "
                    "create it yourself or grant the service's principal CREATE",
                    pipeline=self.ctx.name,
                    kind=Kind.SINK_AUTH if "AUTHORIZATION" in str(code) else "config",
                ) from exc
            raise self._unavailable(f"cannot create topic {name}", text) from exc
        self._log.info(
            "kafka_sink_created_a_topic", message="kafka sink created a topic",
            topic=name,
            partitions=partitions,
            replication_factor=rf,
            config=dict(config or {}),
        )

    def _await_topic(self, name: str) -> Any:
        deadline = time.monotonic() + CREATE_WAIT_S
        while True:
            tm = self._metadata(name).topics.get(name)
            if tm is not None and tm.error is None and tm.partitions:
                return tm
            if time.monotonic() > deadline:
                raise self._unavailable(f"topic {name} was created but did not appear", "timed out")
            time.sleep(_STEP_S)

    def _cleanup_policy(self, name: str) -> str:
        """The topic's cleanup.policy ("delete" when the broker reports none)."""
        ck = _kafka()
        resource = ck.admin.ConfigResource(ck.admin.ResourceType.TOPIC, name)
        try:
            futures = self._admin.describe_configs([resource], request_timeout=ADMIN_TIMEOUT_S)
            configs = next(iter(futures.values())).result(ADMIN_TIMEOUT_S + 5)
        except ck.KafkaException as exc:
            code, _ = _error_of(exc)
            if code in (
                ck.KafkaError._TIMED_OUT,
                ck.KafkaError._TRANSPORT,
                ck.KafkaError._ALL_BROKERS_DOWN,
                ck.KafkaError.REQUEST_TIMED_OUT,
            ):
                raise self._unavailable(f"cannot read the config of topic {name}", exc) from exc
            self._warn_once(
                "describe_configs",
                "kafka sink cannot read topic configs (describe_configs); topics are taken as "
                "not compacted, so a keyless table on a compacted topic is not detected",
                error=redact(str(exc)),
            )
            return "delete"
        entry = configs.get("cleanup.policy")
        value = getattr(entry, "value", None)
        return str(value) if value else "delete"

    def _prepare_schema_topic(self) -> None:
        info = self._topic(self.schema_topic, partitions=1, config={"cleanup.policy": "compact"})
        if not info.compacted:
            self._warn_once(
                "schema_topic_policy",
                "kafka sink: the schema topic is not compacted; with time-based retention its "
                "records expire and a restart without state can no longer see that this "
                "pipeline wrote events. Set cleanup.policy=compact on it",
                topic=self.schema_topic,
                cleanup_policy=info.policy,
            )

    def _warn_once(self, what: str, message: str, **fields: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            self._log.warning(message, **fields)

    def _dest_route(self, dest: str, sv: SchemaVersion) -> _Route:
        """The topic a transform chose (``route``, ``outbox``) for events of ``sv``."""
        route = self._dest_routes.get((dest, sv))
        if route is None:
            route = self._route(sv, "", "", name=dest)
            self._dest_routes[(dest, sv)] = route
        return route

    def _route(self, sv: SchemaVersion, schema: str, table: str, name: str = "") -> _Route:
        chosen = bool(name)  # a transform's destination: cached by _dest_route
        if not chosen:
            route = self._routes.get(sv)
            if route is not None:
                return route
            name = render_topic(
                self.config.topic, pipeline=self.ctx.name, schema=schema, table=table
            )
        info = self._topic(name, partitions=self.config.topic_partitions)
        if not sv.key and info.compacted:
            raise FatalError(
                f"kafka sink: table {sv.name} has no key, but its topic {name} is compacted "
                f"(cleanup.policy={info.policy}) and compaction needs a key on every record. "
                f"Give {sv.name} a primary key, or send it to a topic with cleanup.policy=delete "
                "(sink.topic)",
                pipeline=self.ctx.name,
                table=sv.name,
                kind=Kind.CONFIG,
            )
        route = _Route(name, info.partitions, info.compacted, sv.qualified)
        if not chosen:
            self._routes[sv] = route
        return route

    # ------------------------------------------------------------------ writing

    def write_schema(self, schema: SchemaVersion) -> None:
        producer = self._require()
        # The event's own source block names schema and table; from the qualified name alone
        # that split is only certain with exactly one dot (otherwise write() checks it).
        if schema.name.count(".") == 1 and self._debezium is None:
            db, _, table = schema.name.partition(".")
            self._route(schema, db, table)
        key = schema.qualified
        if key in self._schemas_sent:
            return
        self._produce(
            producer,
            self.schema_topic,
            orjson.dumps(schema.definition),
            key.encode(),
            headers=[("cdc-pipeline", self._pipeline_b)],
        )
        self._wait_delivered(producer)
        self._schemas_sent.add(key)

    def write(self, events: Sequence[ChangeEvent]) -> None:
        if self._debezium is not None:
            self._write_debezium(events)
            return
        producer = self._require()
        produce = producer.produce
        routes = self._routes
        tombstones = self.config.tombstones
        limit = self._max_bytes
        for e in events:
            route = routes.get(e.schema)
            if route is None:
                src = e.source
                route = self._route(e.schema, str(src.get("schema", "")), str(src.get("table", "")))
            if e.dest is not None:
                route = self._dest_route(e.dest, e.schema)
            value = e.json
            if len(value) > limit:
                producer.poll(0)
                self._raise_failures()  # what came before it first
                raise self._too_large(e.id, len(value), route.topic, event=e)
            op = e.op
            headers = [("cdc-id", e.id), ("cdc-op", op), ("cdc-schema-version", route.version)]
            if e.headers:
                headers.extend(e.headers)
            if op == "t":
                key = TRUNCATE_KEY if route.compacted else None
                for partition in range(route.partitions):
                    self._produce(producer, route.topic, value, key, partition, headers, e.id)
                continue
            key = e.key_json
            try:
                if key is None:
                    produce(route.topic, value, None, 0, headers=headers)
                else:
                    produce(route.topic, value, key, headers=headers)
            except BufferError:
                self._produce(
                    producer, route.topic, value, key, 0 if key is None else -1, headers, e.id
                )
            except Exception as exc:
                raise self._produce_error(exc, e.id, len(value), route.topic) from exc
            if op == "d" and tombstones and key is not None:
                try:
                    produce(route.topic, None, key)
                except BufferError:
                    self._produce(producer, route.topic, None, key)
        producer.poll(0)
        self._raise_failures()

    def _write_debezium(self, events: Sequence[ChangeEvent]) -> None:
        """``format: debezium``: each event's Debezium records (a delete's tombstone, the key
        change headers, transaction metadata) on Debezium's topics, keyed as Debezium keys
        them; a keyless record goes to partition 0 like cdc's."""
        producer = self._require()
        limit = self._max_bytes
        topics = self._topics
        for r in self._debezium.records(events) if self._debezium is not None else ():
            if r.topic not in topics:
                self._topic(r.topic, partitions=self.config.topic_partitions)
            e = r.event
            if r.value is not None and len(r.value) > limit:
                raise self._too_large(e.id if e else None, len(r.value), r.topic)
            headers: list[tuple[str, Any]] = list(r.headers or ())
            if e is not None and r.value is not None and not r.topic.endswith(".transaction"):
                headers += [("cdc-id", e.id), ("cdc-op", e.op), ("cdc-schema-version", e.schema.qualified)]
            partition = 0 if r.key is None else -1
            try:
                producer.produce(r.topic, r.value, r.key, partition, headers=headers or None)
            except BufferError:
                self._produce(
                    producer, r.topic, r.value, r.key, partition, headers or None,
                    e.id if e else None,
                )
            except Exception as exc:
                raise self._produce_error(exc, e.id if e else None, len(r.value or b""), r.topic) from exc
        producer.poll(0)
        self._raise_failures()

    def _produce(
        self,
        producer: Any,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int = -1,
        headers: list[tuple[str, Any]] | None = None,
        event_id: str | None = None,
    ) -> None:
        """Produce one record, waiting for room in a full local queue (never dropping)."""
        waiter = _Waiter(self, producer)
        while True:
            try:
                producer.produce(topic, value, key, partition, headers=headers)
                return
            except BufferError:
                waiter.step()
            except Exception as exc:
                raise self._produce_error(exc, event_id, len(value or b""), topic) from exc

    def _produce_error(
        self, exc: Exception, event_id: str | None, size: int, topic: str
    ) -> CDCError:
        ck = _kafka()
        code, _ = _error_of(exc)
        if code == ck.KafkaError.MSG_SIZE_TOO_LARGE:
            return self._too_large(event_id, size, topic)
        if code == ck.KafkaError._FATAL:
            return RetriableSinkError(
                f"kafka sink: the producer hit a fatal error and is restarted: {redact(str(exc))}",
                pipeline=self.ctx.name,
                kind=Kind.SINK_DELIVERY,
            )
        if isinstance(exc, ck.KafkaException):
            return RetriableSinkError(
                f"kafka sink: cannot produce to topic {topic}: {redact(str(exc))}",
                pipeline=self.ctx.name,
                kind=Kind.SINK_DELIVERY,
            )
        raise exc

    def flush(self) -> str | None:
        self._wait_delivered(self._require())
        return None

    def _wait_delivered(self, producer: Any) -> None:
        """Return once the broker acknowledged every record produced so far."""
        if producer.flush(0) == 0:
            self._raise_failures()
            self._recovered()
            return
        waiter = _Waiter(self, producer)
        while waiter.step():
            pass
        self._raise_failures()
        self._recovered()

    def _recovered(self) -> None:
        self._broker_error = None  # what the broker said before no longer explains anything
        if self._degraded:
            self._degraded = False
            self.ctx.degraded(None)
            self._log.info("kafka_sink_the_broker_acknowledges_records", message="kafka sink: the broker acknowledges records again")

    # ------------------------------------------------------------------ no state, drop

    def _read_held(self) -> dict[str, dict[str, Any]]:
        """This pipeline's schema records in the schema topic: ``name@version`` → definition."""
        if self._held is not None:
            return self._held
        ck = _kafka()
        consumer = self._new_consumer()
        held: dict[str, dict[str, Any]] = {}
        try:
            try:
                md = consumer.list_topics(self.schema_topic, timeout=ADMIN_TIMEOUT_S)
            except ck.KafkaException as exc:
                raise self._unavailable(f"cannot read topic {self.schema_topic}", exc) from exc
            tm = md.topics.get(self.schema_topic)
            if tm is None or not tm.partitions:
                self._held = held
                return held
            if tm.error is not None and tm.error.code() != ck.KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise self._topic_error(self.schema_topic, tm.error)
            partitions = sorted(tm.partitions)
            consumer.assign(
                [ck.TopicPartition(self.schema_topic, p, ck.OFFSET_BEGINNING) for p in partitions]
            )
            at_end: set[int] = set()
            deadline = time.monotonic() + READ_TIMEOUT_S
            mine = self._pipeline_b
            while len(at_end) < len(partitions):
                if time.monotonic() > deadline:
                    raise self._unavailable(
                        f"cannot read topic {self.schema_topic} to its end within {READ_TIMEOUT_S:.0f}s",
                        self._broker_error or "timed out",
                    )
                for m in consumer.consume(1000, 0.2):
                    err = m.error()
                    if err is not None:
                        if err.code() == ck.KafkaError._PARTITION_EOF:
                            at_end.add(m.partition())
                        elif err.code() == ck.KafkaError.TOPIC_AUTHORIZATION_FAILED:
                            raise self._topic_error(self.schema_topic, err)
                        continue
                    at_end.discard(m.partition())
                    owner = dict(m.headers() or ()).get("cdc-pipeline")
                    key = (m.key() or b"").decode("utf-8", "replace")
                    value = m.value()
                    if value is None:
                        if owner in (None, mine):
                            held.pop(key, None)
                        continue
                    if owner != mine:
                        continue
                    try:
                        definition = orjson.loads(value)
                    except orjson.JSONDecodeError:
                        continue
                    if (
                        isinstance(definition, dict)
                        and "name" in definition
                        and "version" in definition
                    ):
                        held[key] = definition
        finally:
            try:
                consumer.close()
            except Exception:  # noqa: BLE001
                pass
        self._held = held
        return held

    def holds_events(self) -> bool:
        return bool(self._read_held())

    def held_schemas(self) -> list[dict[str, Any]]:
        return list(self._read_held().values())

    def _data_topics(self) -> list[str]:
        tables = getattr(self.ctx.pipeline.source, "tables", None) or []
        names = []
        prefix = self._debezium.prefix if self._debezium is not None else None
        for t in tables:
            schema, _, table = str(t).partition(".")
            if prefix is not None:  # format: debezium: Debezium's topic names
                names.append(f"{prefix}.{schema}.{table}")
                continue
            names.append(
                render_topic(self.config.topic, pipeline=self.ctx.name, schema=schema, table=table)
            )
        return sorted(set(names))

    def verify_view(self) -> Any:
        """The per-partition folds of the pipeline's data topics, for ``cdc verify`` (see
        :mod:`sinks.kafka.verify`)."""
        from sinks.kafka.verify import KafkaView, TopicsReader

        return KafkaView(TopicsReader(self._new_consumer(), _kafka(), self._data_topics()))

    def _kept_line(self, verb: str) -> str:
        topics = ", ".join(self._data_topics()) or "none"
        return (
            f"{verb} the data topics ({topics}) and their events: delete them with your Kafka "
            "tools if they should go"
        )

    def describe_drop(self) -> list[str]:
        try:
            held = self._read_held()
        except CDCError as exc:
            return [
                f"write tombstones for this pipeline's schema versions in topic {self.schema_topic} "
                f"(cannot count them now: {exc})",
                self._kept_line("keep"),
            ]
        lines = []
        if held:
            lines.append(
                f"write tombstones for the {len(held)} schema version(s) of {self.ctx.name} in "
                f"topic {self.schema_topic}, so that a fresh start is allowed"
            )
        lines.append(self._kept_line("keep"))
        return lines

    def drop(self) -> list[str]:
        self._held = None
        held = self._read_held()
        if not held:
            return [self._kept_line("kept")]
        producer = self._new_producer()
        try:
            for key in held:
                producer.produce(
                    self.schema_topic,
                    None,
                    key.encode(),
                    headers=[("cdc-pipeline", self._pipeline_b)],
                )
            remaining = producer.flush(30)
            if remaining or self._failure is not None:
                detail = (
                    self._failure[0].str()
                    if self._failure is not None
                    else f"{remaining} not acknowledged"
                )
                raise self._unavailable(
                    f"cannot write the tombstones to {self.schema_topic}; run cdc drop again",
                    detail,
                )
        finally:
            try:
                producer.purge()
                producer.poll(0)
            except Exception:  # noqa: BLE001
                pass
        self._held = {}
        self._log.info(
            "kafka_sink_wrote_schema_tombstones", message="kafka sink wrote schema tombstones", topic=self.schema_topic, count=len(held)
        )
        return [
            f"wrote tombstones for the {len(held)} schema version(s) of {self.ctx.name} to topic "
            f"{self.schema_topic}",
            self._kept_line("kept"),
        ]


class _Waiter:
    """One wait for the broker: steps of polling that report a lasting lack of progress as
    degraded, and give up a few seconds into a service stop."""

    def __init__(self, sink: KafkaSink, producer: Any) -> None:
        self.sink = sink
        self.producer = producer
        self.pending = len(producer)
        self.progress_at = time.monotonic()

    def step(self) -> bool:
        """Poll once; False when nothing is left in flight."""
        sink = self.sink
        remaining: int = self.producer.flush(_STEP_S)
        sink._raise_failures()
        if remaining == 0:
            return False
        now = time.monotonic()
        if remaining < self.pending:
            self.progress_at = now
            sink._recovered()
        self.pending = remaining
        stalled = now - self.progress_at
        if not sink._degraded and stalled >= DEGRADED_AFTER_S:
            sink._degraded = True
            cause = f": {sink._broker_error}" if sink._broker_error else ""
            sink.ctx.degraded(
                RetriableSinkError(
                    f"kafka sink: the broker at {sink.config.bootstrap_servers} has not "
                    f"acknowledged {remaining} record(s) for {stalled:.0f}s{cause}; waiting, "
                    "nothing is skipped",
                    pipeline=sink.ctx.name,
                )
            )
            sink._log.warning("kafka_sink_waiting_for_the_broker", message="kafka sink waiting for the broker", records=remaining)
        if sink.ctx.stop.is_set():
            if sink._stop_seen is None:
                sink._stop_seen = now
            if now - sink._stop_seen >= STOP_WAIT_S:
                raise RetriableSinkError(
                    f"kafka sink: stopping with {remaining} record(s) not acknowledged by the "
                    "broker; they are produced again after the restart",
                    pipeline=sink.ctx.name,
                )
        return True


def _error_of(exc: BaseException) -> tuple[int | None, str]:
    """The librdkafka error code and text carried by a KafkaException (None for others)."""
    err: Any = exc.args[0] if exc.args else None
    if hasattr(err, "code") and hasattr(err, "str"):
        return int(err.code()), str(err.str())
    return None, str(exc)


def _event_id(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None
