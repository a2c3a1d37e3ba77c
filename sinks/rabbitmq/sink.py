"""The RabbitMQ sink: one persistent message per event on a durable topic exchange.

What goes where
---------------
* At :meth:`RabbitMQSink.open` the sink connects (AMQP 0-9-1, ``amqp://`` or ``amqps://``),
  opens one channel in publisher-confirm mode and declares ``exchange`` as a durable topic
  exchange, before anything is published: queues can be bound to it before events flow. An
  exchange of that name with another type or durability is a :class:`~cdc.errors.FatalError`
  naming it.
* Each event is one message with routing key ``routing_key`` (``{pipeline}``, ``{schema}`` =
  ``source.schema``, ``{table}`` = ``source.table``); body = the event JSON; properties
  ``content_type=application/json``, ``delivery_mode=2`` (persistent), ``message_id`` = the
  event id, ``app_id=cdc``; headers ``cdc-op``, ``cdc-schema-version`` (``name@version``) and
  ``cdc-key`` (the compact JSON of the event's key, the text ``null`` for a keyless table and
  for ``t``). AMQP has no key slot and no compaction: there are no tombstones.
* Each schema version is published once per session, before the first event that uses it, with
  routing key ``schema_routing_key`` (default ``{pipeline}.schemas``), ``message_id``
  ``name@version``, body = the definition JSON, header ``cdc-pipeline``; the sink waits for its
  confirmation before publishing the events that use it. Schema messages are not mandatory: a
  consumer of one table's routing key need not bind the schema key too.

Delivery (the guarantee)
------------------------
aiormq is asyncio; the sink runs a private event loop on its own thread and the pipeline's
dispatcher thread hands work to it. :meth:`RabbitMQSink.write` only starts publishes (each
publish waits for its confirmation in a task of its own, in publish order), so many messages
are in flight at once; it waits only when more than :data:`MAX_IN_FLIGHT` are unconfirmed.
:meth:`RabbitMQSink.flush` returns once the broker confirmed (``basic.ack``) every message
published so far, and the pipeline saves its checkpoint after that: a checkpoint never covers
a message the broker did not confirm. RabbitMQ confirms a persistent message routed to durable
queues once those queues have written it to disk.

What goes wrong is retried inside the sink, without limit and without skipping anything, with
exponential backoff and jitter capped at :data:`MAX_BACKOFF_S`; meanwhile the pipeline shows
``retrying`` (``/healthz`` 503) through :meth:`~cdc.plugin.PluginContext.degraded`, and
``running`` again once the broker confirms messages again:

* an unroutable event (``mandatory: true`` and no queue bound for its routing key; the broker
  returns it with ``basic.return``): the error names the exchange and the routing key; the
  returned messages (only those) are published again, in order, until a queue is bound;
  ``mandatory: false`` lets the broker drop them instead;
* a ``basic.nack``, or a connection lost (broker stopped, restarted, network cut, heartbeat
  missed): the sink reconnects and publishes again every message from the first one not
  confirmed, in order (the consumer may see some twice: same ``message_id``);
* a broker that stops answering without closing the connection (a paused node): after
  :data:`DEGRADED_AFTER_S` without a confirmation the pipeline shows ``retrying``; the AMQP
  heartbeat (``?heartbeat=N`` in the URL, default 60 s) eventually drops the connection and
  the case above applies.

A service stop is not held up: once the stop event is set the sink waits at most
:data:`STOP_WAIT_S` more, then raises :class:`~cdc.errors.RetriableError`; what was not
confirmed is published again after the restart (the checkpoint does not cover it).

Refusals a person must fix are a :class:`~cdc.errors.FatalError`: a login refused (wrong user
or password), a virtual host that does not exist or is not allowed, no permission to declare
the exchange or publish to it, an exchange declared with another type, a routing key longer
than 255 bytes, a server certificate that does not verify (``amqps://``: names ``ca_file``),
and a message over the broker's ``max_message_size`` (the broker closes the channel with
PRECONDITION_FAILED; the error names the event, its size and the setting to raise). The password is never logged or put into a message: URLs are shown as
``amqp://user@host:port/vhost``.

No state: the ledger queue
--------------------------
RabbitMQ cannot be read back without consuming (and so taking) the messages, and the
consumers' queues are theirs. So the sink keeps one durable queue of its own per pipeline and
exchange, ``cdc-ledger.{exchange}.{pipeline}`` (:func:`ledger_queue`), that no one consumes: each schema version is
also published to it (through the default exchange, so no binding is involved), once, the
first time the pipeline uses it. It holds a handful of small messages and tells a start without
state whether this pipeline already published events: :meth:`holds_events` is True when it
holds a definition, and :meth:`held_schemas` returns them (read with ``basic.get`` without
acknowledging, then given back when the channel closes: nothing is taken). ``cdc drop``
deletes the ledger queue and leaves the exchange and the consumers' queues alone. A user not
allowed to declare the ledger queue gets a warning, and the sink works without it (no lost
state detection through the sink).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import random
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from cdc.errors import (
    CDCError,
    FatalError,
    FatalSinkError,
    Kind,
    RetriableError,
    RetriableSinkError,
)
from cdc.log import redact
from cdc.plugin import PluginContext, Sink
from sinks.rabbitmq.config import (
    MAX_SHORTSTR,
    RabbitMQConfig,
    display_url,
    render_key,
    vhost_of,
)

if TYPE_CHECKING:
    from cdc.events import ChangeEvent
    from cdc.schema import SchemaVersion

__all__ = ["RabbitMQConfig", "RabbitMQSink"]

#: most messages published and not yet confirmed; ``write`` waits past this
MAX_IN_FLIGHT = 5000
#: seconds without a confirmation before the pipeline is reported degraded
DEGRADED_AFTER_S = 3.0
#: seconds ``flush`` keeps waiting once the service is stopping
STOP_WAIT_S = 5.0
#: seconds allowed to connect, log in, open the channel and declare the exchange
CONNECT_TIMEOUT_S = 10.0
#: first retry wait, doubled per failed attempt up to MAX_BACKOFF_S (with full jitter)
BACKOFF_BASE_S = 0.5
MAX_BACKOFF_S = 10.0
#: one step of waiting for confirmations (the stop event and the clock are checked between)
_STEP_S = 0.25
#: seconds ``close`` allows the connection to close
CLOSE_TIMEOUT_S = 3.0
#: the ledger queue is named LEDGER_PREFIX + exchange + "." + pipeline (see ledger_queue)
LEDGER_PREFIX = "cdc-ledger."
#: AMQP reply codes
_ACCESS_REFUSED = 403
_NOT_FOUND = 404
_PRECONDITION_FAILED = 406
#: how the broker says a message is over max_message_size (it closes the channel)
_TOO_LARGE = re.compile(r"message size (\d+) is larger than configured max size (\d+)")
_NOT_ALLOWED = 530


def ledger_queue(exchange: str, pipeline: str) -> str:
    """The ledger queue of ``pipeline`` publishing to ``exchange``: one per destination, so
    two exchanges on one broker are two destinations (a name too long for AMQP uses a hash
    of the exchange's)."""
    name = f"{LEDGER_PREFIX}{exchange}.{pipeline}"
    if len(name.encode()) <= MAX_SHORTSTR:
        return name
    return f"{LEDGER_PREFIX}{hashlib.sha256(exchange.encode()).hexdigest()[:32]}.{pipeline}"


def _aiormq() -> Any:
    try:
        import aiormq
    except ImportError as exc:
        raise FatalError(
            f"the rabbitmq sink needs the aiormq package: pip install aiormq ({exc})",
            kind=Kind.PLUGIN_IMPORT,
        ) from exc
    return aiormq


class _Quiet(logging.Handler):
    """aiormq's own log lines (connection errors, late confirmations) into the service's log,
    redacted, at most once per distinct line and minute."""

    def __init__(self, log: Any) -> None:
        super().__init__(logging.WARNING)
        self._log = log
        self._seen: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact(record.getMessage())[:300]
            now = time.monotonic()
            if now - self._seen.get(text, -1e9) < 60:
                return
            if len(self._seen) > 500:
                self._seen.clear()
            self._seen[text] = now
            self._log.warning("rabbitmq_client", message=text)
        except Exception:  # noqa: BLE001 - a log line must never break delivery
            pass


class _Entry:
    """One message: what to publish, and the task that publishes it and awaits its
    confirmation (``None`` until published on the current channel)."""

    __slots__ = ("exchange", "body", "routing_key", "properties", "mandatory", "label", "task")

    def __init__(
        self,
        exchange: str,
        body: bytes,
        routing_key: str,
        properties: Any,
        mandatory: bool,
        label: str,
    ) -> None:
        self.exchange = exchange
        self.body = body
        self.routing_key = routing_key
        self.properties = properties
        self.mandatory = mandatory
        self.label = label  # the event id, or name@version for a schema
        self.task: asyncio.Task[Any] | None = None


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a publish task's exception as seen (the sink reads it later, or drops the task on
    close); keeps asyncio from logging "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


class RabbitMQSink(Sink):
    """Publishes events to a RabbitMQ topic exchange (see the module doc)."""

    Config = RabbitMQConfig
    destinations = True  # `route` / `outbox` name the routing key

    def __init__(self, config: RabbitMQConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.config: RabbitMQConfig = config
        #: ``format: debezium``: messages carry Debezium record values (section 9)
        self._debezium = self.debezium_encoder()
        self._where = display_url(config.url)
        self._vhost = vhost_of(config.url)
        self._log = ctx.log.bind(sink="rabbitmq", url=self._where, exchange=config.exchange)
        self._schema_key = render_key(config.schema_routing_key, pipeline=ctx.name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._channel: Any = None
        self._pending: deque[_Entry] = deque()
        self._routes: dict[SchemaVersion, str] = {}
        self._schemas_sent: set[str] = set()
        self._ssl: ssl.SSLContext | None = None
        self._degraded = False
        self._attempt = 0
        self._stop_seen: float | None = None
        self._properties: Any = None  # pamqp's Basic.Properties class
        self.ledger = ledger_queue(config.exchange, ctx.name)
        #: name@version of the definitions in the ledger (None: no ledger)
        self._ledger_known: set[str] | None = None
        self._held: dict[str, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ the event loop

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None:
            return self._loop
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"rabbitmq-{self.ctx.name}", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        return loop

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run ``coro`` on the sink's loop and return its result (from the dispatcher)."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RetriableSinkError(
                "rabbitmq sink is not open", pipeline=self.ctx.name
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise RetriableSinkError(
                f"rabbitmq sink: the client did not answer within {timeout:.0f}s",
                pipeline=self.ctx.name,
            ) from exc

    # ------------------------------------------------------------------ connection

    def _connected(self) -> bool:
        conn, channel = self._conn, self._channel
        return (
            conn is not None
            and channel is not None
            and not conn.is_closed
            and not channel.is_closed
        )

    async def _connect(self) -> None:
        aiormq = _aiormq()
        await self._disconnect()
        conn = aiormq.Connection(
            self.config.url,
            context=self._ssl,
            client_properties={"connection_name": f"cdc {self.ctx.name}"},
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await conn.connect()
                channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
                await channel.exchange_declare(
                    self.config.exchange, exchange_type="topic", durable=True
                )
        except BaseException:
            try:
                await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_S)
            except BaseException:  # noqa: BLE001 - the original error matters
                pass
            raise
        self._conn, self._channel = conn, channel

    async def _disconnect(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_S)
            except BaseException:  # noqa: BLE001 - closing a broken connection
                pass

    def _connect_or_raise(self) -> None:
        """Connect and declare the exchange; FatalError for what a person must fix,
        RetriableError for what may pass."""
        self._amqp(self._connect(), CONNECT_TIMEOUT_S + CLOSE_TIMEOUT_S + 5)

    def _amqp(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run ``coro`` on the loop; the client's exceptions become the sink's errors."""
        try:
            return self._call(coro, timeout)
        except CDCError:
            raise
        except Exception as exc:
            raise self._classify(exc) from exc

    def _classify(self, exc: Exception) -> CDCError:
        exc_mod = _aiormq().exceptions
        if isinstance(exc, exc_mod.ProbableAuthenticationError):
            return FatalSinkError(
                f"rabbitmq sink: the broker at {self._where} refused the login "
                f"({_text(exc)}); check the user and password in sink.url",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            )
        if isinstance(exc, exc_mod.AuthenticationError):
            return FatalSinkError(
                f"rabbitmq sink: no common login mechanism with {self._where} ({_text(exc)})",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            )
        if isinstance(exc, exc_mod.ChannelAccessRefused):
            return FatalSinkError(
                f"rabbitmq sink: the broker at {self._where} does not allow declaring exchange "
                f"{self.config.exchange!r} ({_text(exc)}); grant the user configure and write "
                f"permissions on it in vhost {self._vhost!r}",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            )
        if isinstance(exc, exc_mod.ChannelPreconditionFailed):
            return FatalSinkError(
                f"rabbitmq sink: exchange {self.config.exchange!r} exists with other settings "
                f"({_text(exc)}); the sink needs a durable topic exchange: delete it or point "
                "sink.exchange at another name",
                pipeline=self.ctx.name,
            )
        # aiormq reports a Connection.Open (whose one field is the virtual host) answered by
        # Connection.Close as an unexpected frame, without the reply code: the vhost refused
        refused_open = isinstance(exc, exc_mod.InvalidFrameError) and all(
            word in str(exc) for word in ("Connection.OpenOk", "Connection.Close")
        )
        if isinstance(exc, exc_mod.ConnectionClosed) or refused_open:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            if refused_open or code in (_NOT_ALLOWED, _ACCESS_REFUSED, _NOT_FOUND):
                return FatalSinkError(
                    f"rabbitmq sink: the broker at {self._where} refused virtual host "
                    f"{self._vhost!r} ({_text(exc)}); create it or grant the user access",
                    pipeline=self.ctx.name,
                    kind=Kind.SINK_AUTH,
                )
            return self._unavailable("the broker closed the connection", exc)
        if _cert_failed(exc):
            return FatalSinkError(
                f"rabbitmq sink: the TLS certificate of {self._where} does not verify "
                f"({_text(exc)}); set sink.ca_file to the CA that signed it",
                pipeline=self.ctx.name,
                kind=Kind.SINK_TLS,
            )
        if isinstance(exc, (OSError, TimeoutError, EOFError, exc_mod.AMQPError)):
            return self._unavailable("cannot connect", exc)
        return self._unavailable("unexpected client error", repr(exc))

    def _unavailable(self, what: str, exc: BaseException | str) -> RetriableError:
        return RetriableSinkError(
            f"rabbitmq sink: {what} to {self._where}: {_text(exc)}",
            pipeline=self.ctx.name,
        )

    # ------------------------------------------------------------------ open / close

    def open(self, resume: str | None) -> None:
        """Connect, open a confirming channel, declare the exchange and the ledger queue (a
        broker that is down is a RetriableError: the pipeline retries)."""
        self.close()
        self._prepare_client()
        self._pending.clear()
        self._routes.clear()
        self._schemas_sent.clear()
        self._attempt = 0
        self._stop_seen = None
        self._start_loop()
        self._connect_or_raise()
        known = self._amqp(self._prepare_ledger(), CONNECT_TIMEOUT_S + 5)
        self._ledger_known = None if known is None else set(known)
        if known is None:
            self._log.warning(
                "rabbitmq_sink_the_broker", message="rabbitmq sink: the broker does not allow declaring the ledger queue; the sink "
                "works without it, so a restart without state cannot see that this pipeline "
                "already published events. Grant the user configure, write and read "
                "permissions on it",
                queue=self.ledger,
            )
        self._log.info(
            "rabbitmq_sink_open", message="rabbitmq sink open",
            vhost=self._vhost,
            schema_routing_key=self._schema_key,
            mandatory=self.config.mandatory,
            ledger=self.ledger if known is not None else None,
            ledger_schemas=len(known or ()),
        )

    # ------------------------------------------------------------------ cdc check

    def check(self) -> list[CDCError]:
        """The broker answers, takes the login and lets the user into the virtual host, and
        the exchange, when it exists, is a durable topic exchange. Changes nothing: a passive
        declare tells whether the exchange exists; only then is it declared as the sink
        declares it, which for an existing exchange is a no-op when it matches and refused
        (406) when its type or durability differ (AMQP's passive declare ignores the type).
        A missing exchange is no problem: the sink declares it at start."""
        try:
            self._prepare_client()
            self._start_loop()
            problems: list[CDCError] = self._amqp(self._look(), CONNECT_TIMEOUT_S * 2 + 5)
            return problems
        except CDCError as exc:
            return [exc]
        finally:
            self.close()

    async def _look(self) -> list[CDCError]:
        aiormq = _aiormq()
        conn = aiormq.Connection(
            self.config.url,
            context=self._ssl,
            client_properties={"connection_name": f"cdc check {self.ctx.name}"},
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
                await conn.connect()
                channel = await conn.channel()
                try:
                    await channel.exchange_declare(self.config.exchange, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return []  # the sink declares it at start
                try:
                    await channel.exchange_declare(
                        self.config.exchange, exchange_type="topic", durable=True
                    )
                except (aiormq.exceptions.ChannelPreconditionFailed,
                        aiormq.exceptions.ChannelAccessRefused) as exc:
                    return [self._classify(exc)]
                return []
        finally:
            try:
                await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_S)
            except BaseException:  # noqa: BLE001 - closing only
                pass

    def _prepare_client(self) -> None:
        aiormq = _aiormq()
        self._properties = aiormq.spec.Basic.Properties
        client_log = logging.getLogger("aiormq")
        client_log.handlers[:] = [_Quiet(self._log)]
        client_log.propagate = False
        if self.config.url.startswith("amqps:") and self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(cafile=self.config.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise FatalSinkError(
                    f"rabbitmq sink: cannot load ca_file {self.config.ca_file}: {exc}; point "
                    "sink.ca_file at a PEM file of CA certificates",
                    pipeline=self.ctx.name,
                ) from exc

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        self._degraded = False
        if loop is None:
            return
        unconfirmed = len(self._pending)
        try:
            self._call(self._shutdown(), CLOSE_TIMEOUT_S + 2)
        except Exception:  # noqa: BLE001 - close must never raise
            pass
        try:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(5)
            if thread is None or not thread.is_alive():
                loop.close()
        except Exception:  # noqa: BLE001
            pass
        self._loop, self._thread = None, None
        self._pending.clear()
        if unconfirmed:
            try:
                self._log.warning(
                    "rabbitmq_sink_closed_with_messages", message="rabbitmq sink closed with messages the broker has not confirmed; they are "
                    "published again after the restart",
                    messages=unconfirmed,
                )
            except Exception:  # noqa: BLE001
                pass

    async def _shutdown(self) -> None:
        for entry in self._pending:
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
        await self._disconnect()

    # ------------------------------------------------------------------ writing

    def _route(self, sv: SchemaVersion, schema: str, table: str) -> str:
        key = self._routes.get(sv)
        if key is not None:
            return key
        key = render_key(self.config.routing_key, pipeline=self.ctx.name, schema=schema, table=table)
        if len(key.encode()) > MAX_SHORTSTR:
            raise FatalSinkError(
                f"rabbitmq sink: the routing key of table {sv.name} is longer than AMQP's "
                f"{MAX_SHORTSTR} bytes ({key[:60]}...); shorten sink.routing_key",
                pipeline=self.ctx.name,
                table=sv.name,
            )
        self._routes[sv] = key
        return key

    def _dest_key(self, e: ChangeEvent) -> str:
        """The routing key a transform chose (``route``, ``outbox``)."""
        key = str(e.dest)
        if len(key.encode()) > MAX_SHORTSTR:
            raise FatalSinkError(
                f"rabbitmq sink: the routing key a transform chose for event {e.id} is longer "
                f"than AMQP's {MAX_SHORTSTR} bytes ({key[:60]}...)",
                pipeline=self.ctx.name,
                table=e.schema.name,
            )
        return key

    def write_schema(self, schema: SchemaVersion) -> None:
        """Publish the definition (``message_id`` ``name@version``) and wait until the broker
        confirmed it, so it precedes the first event that uses it."""
        key = schema.qualified
        if key in self._schemas_sent:
            return
        props = self._properties(
            content_type="application/json",
            delivery_mode=2,
            message_id=key,
            app_id="cdc",
            message_type="schema",
            headers={"cdc-pipeline": self.ctx.name},
        )
        body = orjson.dumps(schema.definition)
        known = self._ledger_known
        if known is not None and key not in known:
            self._record_in_ledger(key, body, props)
        self._publish([_Entry(self.config.exchange, body, self._schema_key, props, False, key)])
        self._drain(0)
        self._schemas_sent.add(key)

    def _record_in_ledger(self, key: str, body: bytes, props: Any) -> None:
        """Put the definition's copy into the ledger queue and wait for its confirmation,
        before any event using it is published. Best effort: the ledger serves the no-state
        checks, not the delivery guarantee, so a failure is a warning."""
        known = self._ledger_known
        assert known is not None
        refused, error = self._call(self._ledger_publish(body, props), CONNECT_TIMEOUT_S + 5)
        if error is None:
            known.add(key)
            return
        if refused:
            self._ledger_known = None
            self._log.warning(
                "rabbitmq_sink_the_broker_refused_writing", message="rabbitmq sink: the broker refused writing to the ledger queue; the sink works "
                "without it from now on. Grant the user write permission on amq.default (the "
                "default exchange) to keep it",
                queue=self.ledger,
                error=error,
            )
        else:
            self._log.warning(
                "rabbitmq_sink_could_not_record", message="rabbitmq sink could not record a schema version in the ledger queue",
                queue=self.ledger,
                schema=key,
                error=error,
            )

    async def _ledger_publish(self, body: bytes, props: Any) -> tuple[bool, str | None]:
        """(refused, error) of publishing ``body`` to the ledger queue through the default
        exchange, on a confirming channel of its own (a refusal closes only that one)."""
        exc_mod = _aiormq().exceptions
        conn = self._conn
        if conn is None or conn.is_closed:
            return False, "not connected"
        try:
            channel = await conn.channel(publisher_confirms=True)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await channel.basic_publish(
                        body, exchange="", routing_key=self.ledger, properties=props
                    )
            finally:
                await _close_quietly(channel)
        except exc_mod.ChannelAccessRefused as exc:
            return True, _text(exc)
        except (exc_mod.AMQPError, OSError, TimeoutError, RuntimeError) as exc:
            return False, _text(exc)
        return False, None

    def write(self, events: Sequence[ChangeEvent]) -> None:
        """Start publishing the events, in order; wait only when too many are unconfirmed."""
        if not events:
            return
        props_cls = self._properties
        mandatory = self.config.mandatory
        exchange = self.config.exchange
        routes = self._routes
        entries = []
        debezium = self._debezium
        for e in events:
            if debezium is not None:  # format: debezium: the record's value and key
                m = debezium.message(e)
                if m is None:
                    continue  # an operation Debezium skips (skipped.operations)
                data, k = m
            else:
                data, k = e.json, e.key_json
            key = routes.get(e.schema) if e.dest is None else self._dest_key(e)
            if key is None:
                src = e.source
                key = self._route(e.schema, str(src.get("schema", "")), str(src.get("table", "")))
            headers = {
                "cdc-op": e.op,
                "cdc-schema-version": e.schema.qualified,
                "cdc-key": "null" if k is None or e.op == "t" else k.decode(),
            }
            if e.headers:
                headers.update(e.headers)
            props = props_cls(
                content_type="application/json",
                delivery_mode=2,
                message_id=e.id,
                app_id="cdc",
                headers=headers,
            )
            entries.append(_Entry(exchange, data, key, props, mandatory, e.id))
        self._publish(entries)
        if len(self._pending) > MAX_IN_FLIGHT:
            self._drain(MAX_IN_FLIGHT // 2)

    def flush(self) -> str | None:
        """Return once the broker confirmed every message published so far."""
        self._drain(0)
        return None

    def _publish(self, entries: list[_Entry]) -> None:
        self._call(self._start_publishing(entries))
        self._pending.extend(entries)

    async def _start_publishing(self, entries: Sequence[_Entry]) -> None:
        """Start one task per message, in order: aiormq's channel lock is fair, so the frames
        go out in this order; each task ends with the broker's confirmation (or an error)."""
        channel = self._channel
        loop = asyncio.get_running_loop()
        for entry in entries:
            if channel is None:
                task: asyncio.Task[Any] = loop.create_task(_not_connected())
            else:
                task = loop.create_task(
                    channel.basic_publish(
                        entry.body,
                        exchange=entry.exchange,
                        routing_key=entry.routing_key,
                        properties=entry.properties,
                        mandatory=entry.mandatory,
                        wait=False,
                    )
                )
            task.add_done_callback(_retrieve)
            entry.task = task

    # ------------------------------------------------------------------ confirmations

    async def _wait_head(self, keep: int, timeout: float) -> bool:
        """Drop confirmed messages from the head of the pending queue until at most ``keep``
        remain; stop at the first one that failed (True) or after ``timeout`` (False)."""
        pending = self._pending
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(pending) > keep:
            task = pending[0].task
            assert task is not None
            if not task.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                await asyncio.wait([task], timeout=remaining)
                if not task.done():
                    return False
            if not _confirmed(task):
                return True
            pending.popleft()
        return False

    async def _wait_all(self, timeout: float) -> bool:
        """Wait until every pending publish has an outcome; False after ``timeout``."""
        tasks = [e.task for e in self._pending if e.task is not None and not e.task.done()]
        if not tasks:
            return True
        _, running = await asyncio.wait(tasks, timeout=timeout)
        return not running

    def _drain(self, keep: int) -> None:
        """Wait until at most ``keep`` messages are unconfirmed, retrying what failed."""
        progress_at = time.monotonic()
        while True:
            before = len(self._pending)
            failed = self._call(self._wait_head(keep, _STEP_S))
            if len(self._pending) < before:
                progress_at = time.monotonic()
                self._attempt = 0
                self._recovered()
            if failed:
                self._retry()
                progress_at = time.monotonic()
                continue
            if len(self._pending) <= keep:
                if keep == 0:
                    self._recovered()
                return
            self._waiting(progress_at)

    def _waiting(self, progress_at: float) -> None:
        """Nothing confirmed for a while: report it (once), and give up when stopping."""
        now = time.monotonic()
        stalled = now - progress_at
        if not self._degraded and stalled >= DEGRADED_AFTER_S:
            self._degrade(
                RetriableSinkError(
                    f"rabbitmq sink: the broker at {self._where} has not confirmed "
                    f"{len(self._pending)} message(s) for {stalled:.0f}s; waiting, nothing is "
                    "skipped",
                    pipeline=self.ctx.name,
                )
            )
        if self.ctx.stop.is_set():
            if self._stop_seen is None:
                self._stop_seen = now
            if now - self._stop_seen >= STOP_WAIT_S:
                raise RetriableSinkError(
                    f"rabbitmq sink: stopping with {len(self._pending)} message(s) not confirmed "
                    "by the broker; they are published again after the restart",
                    pipeline=self.ctx.name,
                )

    def _retry(self) -> None:
        """A message failed: wait for the outcome of every pending publish, keep what was not
        confirmed (from the first lost one on, everything), wait a backoff, reconnect when the
        connection is gone, and publish what was kept again, in order."""
        aiormq = _aiormq()
        progress_at = time.monotonic()
        while not self._call(self._wait_all(_STEP_S)):
            self._waiting(progress_at)
        entries = list(self._pending)
        too_large = self._too_large(entries)
        if too_large is not None:
            raise too_large
        returned: list[_Entry] = []
        lost_at: int | None = None
        lost_reason = ""
        for i, entry in enumerate(entries):
            task = entry.task
            assert task is not None
            if _confirmed(task):
                continue
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, aiormq.exceptions.PublishError):
                returned.append(entry)
            else:
                lost_at = i
                lost_reason = "cancelled" if exc is None else _describe(exc)
                break
        if lost_at is not None:
            kept = [e for e in entries[:lost_at] if not _confirmed(e.task)] + entries[lost_at:]
        else:
            kept = returned
        self._pending = deque(kept)
        if lost_at is None and returned:
            first = returned[0]
            keys = sorted({e.routing_key for e in returned})
            failure = (
                f"exchange {self.config.exchange!r} has no queue bound for routing key "
                f"{first.routing_key!r} (the broker returned {len(returned)} message(s) as "
                f"unroutable, first {first.label}"
                + (f"; routing keys {', '.join(keys[:5])}" if len(keys) > 1 else "")
                + "): bind a queue to the exchange for it, or set sink.mandatory: false to "
                "let the broker drop unroutable events"
            )
            kind = "sink_unroutable"
        else:
            failure = f"{lost_reason}; the broker at {self._where} may not have them"
            kind = "sink_unavailable"
        while True:
            self._attempt += 1
            delay = random.uniform(
                BACKOFF_BASE_S / 2, min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2 ** (self._attempt - 1))
            )
            error = RetriableError(
                f"rabbitmq sink: {failure}; {len(kept)} message(s) are published again in "
                f"{delay:.1f}s (attempt {self._attempt + 1}), nothing is skipped",
                pipeline=self.ctx.name,
                kind=kind,
            )
            self._degrade(error)
            self._log.warning(
                "rabbitmq_messages_not_delivered_retrying", message="rabbitmq messages not delivered, retrying",
                reason=redact(failure),
                messages=len(kept),
                attempt=self._attempt,
                retry_in_s=round(delay, 3),
            )
            if self.ctx.stop.wait(delay):
                raise RetriableError(
                    f"rabbitmq sink: stopping while {len(kept)} message(s) are not delivered "
                    f"({failure}); they are published again after the restart",
                    pipeline=self.ctx.name,
                    kind=kind,
                )
            if not self._connected():
                try:
                    self._connect_or_raise()
                except RetriableError as exc:
                    failure, kind = str(exc).removeprefix("rabbitmq sink: "), exc.kind
                    continue
                self._log.info("rabbitmq_sink_reconnected", message="rabbitmq sink reconnected")
            break
        self._pending = deque()
        self._publish(kept)

    def _too_large(self, entries: list[_Entry]) -> FatalError | None:
        """The broker closed the channel because a message was over its max_message_size
        (PRECONDITION_FAILED "message size N is larger than configured max size M"): sending
        it again cannot help, so the pipeline stops naming the event, its size and the
        setting."""
        exc_mod = _aiormq().exceptions
        for entry in entries:
            task = entry.task
            if task is None or not task.done() or task.cancelled():
                continue
            exc = task.exception()
            if not isinstance(exc, exc_mod.ChannelPreconditionFailed):
                continue
            found = _TOO_LARGE.search(str(exc))
            if found is None:
                continue
            size, limit = int(found.group(1)), int(found.group(2))
            culprit = next((e for e in entries if len(e.body) == size), None) or next(
                (e for e in entries if len(e.body) > limit), entry
            )
            what = "schema" if culprit.routing_key == self._schema_key else "event"
            return FatalSinkError(
                f"rabbitmq sink: {what} {culprit.label} is {len(culprit.body)} bytes, more than "
                f"the broker's max_message_size ({limit} bytes); the broker at {self._where} "
                "refused it. It is not skipped: raise max_message_size in rabbitmq.conf (the "
                "most is 512 MiB), then restart",
                pipeline=self.ctx.name,
                position=culprit.label,
                kind=Kind.EVENT_TOO_LARGE,
            )
        return None

    def _degrade(self, error: RetriableError) -> None:
        self._degraded = True
        self.ctx.degraded(error)

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            self.ctx.degraded(None)
            self._log.info("rabbitmq_sink_the_broker_confirms_messages", message="rabbitmq sink: the broker confirms messages again")

    # ------------------------------------------------------------------ the ledger

    async def _prepare_ledger(self) -> dict[str, dict[str, Any]] | None:
        """Declare the ledger queue (durable) on a channel of its own and read what it holds;
        None when the broker does not allow it."""
        exc_mod = _aiormq().exceptions
        channel = await self._conn.channel()
        try:
            await channel.queue_declare(self.ledger, durable=True)
            return await self._read_ledger(channel)
        except exc_mod.ChannelAccessRefused:
            return None
        finally:
            await _close_quietly(channel)

    async def _read_ledger(self, channel: Any) -> dict[str, dict[str, Any]]:
        """The ledger's definitions by ``name@version``. Messages are taken without
        acknowledging them: closing the channel gives them back."""
        from pamqp import commands

        held: dict[str, dict[str, Any]] = {}
        while True:
            message = await channel.basic_get(self.ledger, no_ack=False)
            if isinstance(message.delivery, commands.Basic.GetEmpty):
                return held
            props = message.header.properties
            if (props.headers or {}).get("cdc-pipeline") not in (self.ctx.name, None):
                continue
            try:
                definition = orjson.loads(message.body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(definition, dict) and "name" in definition and "version" in definition:
                held[f"{definition['name']}@{definition['version']}"] = definition

    async def _ledger_session(
        self, delete: bool
    ) -> tuple[dict[str, dict[str, Any]], bool, str | None]:
        """On a connection of its own: what the ledger holds, and (``delete``) delete it.
        Returns (definitions, whether the queue exists, the broker's refusal if any)."""
        aiormq = _aiormq()
        conn = aiormq.Connection(
            self.config.url,
            context=self._ssl,
            client_properties={"connection_name": f"cdc {self.ctx.name} (ledger)"},
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await conn.connect()
            try:
                channel = await conn.channel()
                try:
                    await channel.queue_declare(self.ledger, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return {}, False, None
                held = await self._read_ledger(channel)
                await _close_quietly(channel)
                if delete:
                    channel = await conn.channel()
                    await channel.queue_delete(self.ledger)
            except aiormq.exceptions.ChannelAccessRefused as exc:
                return {}, True, _text(exc)
            return held, True, None
        finally:
            try:
                await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_S)
            except BaseException:  # noqa: BLE001
                pass

    def _ledger(self, delete: bool = False) -> tuple[dict[str, dict[str, Any]], bool, str | None]:
        """Run a ledger session from outside an open sink (no state checks, ``cdc drop``)."""
        self._prepare_client()
        started = self._loop is None
        self._start_loop()
        try:
            result: tuple[dict[str, dict[str, Any]], bool, str | None] = self._amqp(
                self._ledger_session(delete), CONNECT_TIMEOUT_S + 30
            )
            return result
        finally:
            if started:
                self.close()

    # ------------------------------------------------------------------ no state, drop

    def _read_held(self) -> dict[str, dict[str, Any]]:
        if self._held is None:
            held, _, refused = self._ledger()
            if refused:
                self._log.warning(
                    "rabbitmq_sink_may_not_read", message="rabbitmq sink may not read its ledger queue, so it cannot tell whether "
                    "this pipeline already published events",
                    queue=self.ledger,
                    error=refused,
                )
            self._held = held
        return self._held

    def holds_events(self) -> bool:
        """Whether the ledger queue holds a schema definition of this pipeline: the pipeline
        published (or was about to publish) events that use it."""
        return bool(self._read_held())

    def held_schemas(self) -> list[dict[str, Any]]:
        return list(self._read_held().values())

    def _kept_line(self, verb: str) -> str:
        return (
            f"{verb} exchange {self.config.exchange!r} at {self._where} and the consumers' "
            "queues bound to it, with their messages (delete them with rabbitmqctl or the "
            "management UI if they should go)"
        )

    def describe_drop(self) -> list[str]:
        try:
            held, exists, refused = self._ledger()
        except CDCError as exc:
            return [
                f"delete the ledger queue {self.ledger} (cannot look at it now: {exc})",
                self._kept_line("keep"),
            ]
        lines = []
        if refused:
            lines.append(f"delete the ledger queue {self.ledger} (the broker refused: {refused})")
        elif exists:
            lines.append(
                f"delete the ledger queue {self.ledger} ({len(held)} schema definition(s) of "
                f"{self.ctx.name}, copies of what was published), so that a fresh start is "
                "allowed"
            )
        lines.append(self._kept_line("keep"))
        return lines

    def drop(self) -> list[str]:
        held, existed, refused = self._ledger(delete=True)
        if refused:
            raise FatalSinkError(
                f"rabbitmq sink: the broker refused deleting the ledger queue {self.ledger} "
                f"({refused}); grant the user configure permission on it, or delete it with "
                "rabbitmqctl, then run cdc drop again",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            )
        self._held = {}
        lines = []
        if existed:
            self._log.info("rabbitmq_sink_deleted_its_ledger_queue", message="rabbitmq sink deleted its ledger queue", queue=self.ledger)
            lines.append(
                f"deleted the ledger queue {self.ledger} ({len(held)} schema definition(s))"
            )
        lines.append(self._kept_line("kept"))
        return lines


async def _close_quietly(channel: Any) -> None:
    try:
        await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_S)
    except BaseException:  # noqa: BLE001 - a channel the broker closed already
        pass


async def _not_connected() -> Any:
    raise ConnectionError("not connected")


def _cert_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a server certificate that does not verify."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _confirmed(task: asyncio.Task[Any] | None) -> bool:
    """The publish was acknowledged by the broker (``basic.ack``, not returned)."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return False
    result = task.result()
    return type(result).__name__ == "Ack"


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "DeliveryError":
        return "the broker refused a message (basic.nack)"
    if name == "ChannelInvalidStateError":
        return "connection lost (the channel was closed)"
    return f"connection lost ({name}: {_text(exc)})"


def _text(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else (str(exc) or repr(exc))
    text = redact(text)
    return text if len(text) <= 300 else text[:300] + "…"
