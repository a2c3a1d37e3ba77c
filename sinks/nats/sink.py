"""The NATS JetStream sink: one JetStream message per event, de-duplicated by its id.

What goes where
---------------
* Each event is one message on the subject rendered from ``subject`` (``{pipeline}``,
  ``{schema}`` = ``source.schema``, ``{table}`` = ``source.table``); data = the event JSON;
  headers ``Nats-Msg-Id`` (the event id: JetStream drops a message whose id it already holds
  within the stream's duplicate window), ``cdc-id`` (the same id), ``cdc-op``,
  ``cdc-schema-version`` (``name@version``) and ``cdc-key`` (the compact JSON of the key,
  ``null`` for a keyless table and for ``t``: NATS messages have no key slot).
* Each schema version is one message on ``schema_subject`` (default
  ``cdc.{pipeline}.schemas``), data = the definition JSON, headers ``cdc-schema-version``,
  ``cdc-pipeline`` and ``Nats-Msg-Id: schema:<pipeline>:<name@version>``; JetStream
  acknowledges it before the first event using it is published.

The stream
----------
At open the sink looks the stream up (``stream``, default ``CDC``). Missing, it is created
(file storage, JetStream's default 2-minute duplicate window) with two subject filters: the
event subjects (the template with ``*`` for the tokens holding ``{schema}``/``{table}``) and
the schema subject. Existing but not covering them, the filters are added to it. With
``create_stream: false`` the sink only checks, and a missing stream or uncovered subjects are a
:class:`~cdc.errors.FatalError` naming what to create.

Delivery (the guarantee)
------------------------
nats-py is asyncio; the sink runs its own event loop on a thread and the pipeline's dispatcher
thread hands work to it. :meth:`NatsSink.write` publishes without waiting (nats-py's
``publish_async``: the PubAck comes back on an inbox) and keeps each message with its pending
acknowledgement, in order. :meth:`NatsSink.flush` returns only once JetStream acknowledged
(PubAck) every message published so far, so a checkpoint never covers an unacknowledged event.

When acknowledgements stop (a server that is down, hung or restarting, a lost connection), the
pipeline is reported ``retrying`` (``/healthz`` 503) after :data:`DEGRADED_AFTER_S` without
progress, or at once on an error; then the sink reconnects with a capped backoff and publishes
again, in order, every message not acknowledged yet, without limit and without skipping any.
Messages the server had already stored are dropped by JetStream as duplicates (same
``Nats-Msg-Id``), so this adds nothing to the stream; the same holds for a restart of the
service after a crash, as long as it comes back within the stream's duplicate window. A stop
request ends the waiting after :data:`STOP_WAIT_S` with a :class:`~cdc.errors.RetriableError`.

An event larger than the server's ``max_payload`` (or the stream's ``max_msg_size``, when it
has a smaller one) is a FatalError naming the event, its size and the setting to raise; it is
never dropped. A server certificate that does not verify is a FatalError naming
``tls_ca_file``. Authentication and authorization refusals are
FatalError.

No state
--------
The schema messages tell whether this pipeline already wrote events: :meth:`holds_events` reads
the schema subject's messages in the stream (those with ``cdc-pipeline`` naming this
pipeline). ``cdc drop`` purges them (the schema subject only), so a fresh start is allowed;
event messages are never deleted.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

from cdc.errors import (
    CDCError,
    EventUndeliverable,
    FatalError,
    FatalSinkError,
    Kind,
    RetriableSinkError,
)
from cdc.log import add_secrets, redact
from cdc.plugin import PluginContext, Sink
from sinks.nats.config import NatsConfig, covers, render_subject, subject_pattern

if TYPE_CHECKING:
    from cdc.events import ChangeEvent
    from cdc.schema import SchemaVersion

__all__ = ["NatsConfig", "NatsSink"]

T = TypeVar("T")

#: JetStream's default duplicate window, in seconds, used for streams the sink creates
DUPLICATE_WINDOW_S = 120.0
#: seconds without an acknowledgement before the pipeline is reported degraded
DEGRADED_AFTER_S = 3.0
#: seconds without an acknowledgement before the sink reconnects and publishes again
REPUBLISH_AFTER_S = 8.0
#: seconds ``flush`` keeps waiting once the service is stopping
STOP_WAIT_S = 5.0
#: seconds allowed to connect, and for one JetStream API request
CONNECT_TIMEOUT_S = 5.0
API_TIMEOUT_S = 10.0
#: most messages published and not acknowledged yet (write waits beyond it)
MAX_IN_FLIGHT = 10_000
#: first retry wait, and the cap
BACKOFF_BASE_S = 0.2
MAX_BACKOFF_S = 5.0
#: bytes allowed for the headers when checking an event against max_payload
HEADER_ALLOWANCE = 512
_STEP_S = 0.1
#: what OpenSSL says of a server certificate that does not verify
_CERT_FAILED = "CERTIFICATE_VERIFY_FAILED"


def _nats() -> Any:
    try:
        import nats
        import nats.errors
        import nats.js.api
        import nats.js.errors
    except ImportError as exc:
        raise FatalError(
            f"the nats sink needs the nats-py package: pip install nats-py ({exc})",
            kind=Kind.PLUGIN_IMPORT,
        ) from exc
    return nats


def display_url(url: str) -> str:
    """``url`` fit for logs and errors: no user information."""
    shown = []
    for one in url.split(","):
        try:
            parts = urlsplit(one.strip())
            netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
            shown.append(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
        except ValueError:
            shown.append("(invalid url)")
    return ",".join(shown)


@dataclass(slots=True)
class _Msg:
    subject: str
    data: bytes
    headers: dict[str, str]
    event_id: str | None  # None for a schema message


class _Failed(Exception):
    """Publishing failed in a way worth retrying; ``text`` says why."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Loop:
    """An asyncio event loop on a thread of its own, for nats-py."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            if not self.thread.is_alive():
                self.loop.close()
        except Exception:  # noqa: BLE001 - close must never raise
            pass


class NatsSink(Sink):
    """Publishes events to NATS JetStream (see the module doc)."""

    Config = NatsConfig

    def __init__(self, config: NatsConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.config: NatsConfig = config
        #: ``format: debezium``: messages carry Debezium record values (section 9)
        self._debezium = self.debezium_encoder()
        self._where = display_url(config.url)
        self._log = ctx.log.bind(sink="nats", url=self._where)
        secrets = [s for s in (config.password, config.token) if s]
        for one in config.url.split(","):
            try:
                pw = urlsplit(one.strip()).password
            except ValueError:
                continue
            if pw:
                secrets += [pw, unquote(pw)]
        add_secrets(secrets)
        self.schema_subject = render_subject(config.schema_subject, pipeline=ctx.name)
        self.event_filter = subject_pattern(config.subject, ctx.name)
        self._loop: _Loop | None = None
        self._nc: Any = None
        self._js: Any = None
        self._max_payload = 1024 * 1024
        #: the stream's max_msg_size (0 or less: no limit of its own)
        self._stream_max_msg = 0
        #: messages published and not acknowledged yet, in order, with their ack futures
        self._inflight: deque[tuple[_Msg, Any]] = deque()
        self._subjects: dict[SchemaVersion, str] = {}
        self._schemas_sent: set[str] = set()
        self._degraded = False
        self._stop_seen: float | None = None
        self._last_error: str | None = None
        self._held: dict[str, dict[str, Any]] | None = None
        self._pipeline = ctx.name

    # ------------------------------------------------------------------ connection

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop is None:
            self._loop = _Loop(f"nats-{self.ctx.name}")
        return self._loop.run(coro, timeout)

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls_ca_file and "tls://" not in self.config.url:
            return None
        try:
            return ssl.create_default_context(cafile=self.config.tls_ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise FatalSinkError(
                f"nats sink: cannot load tls_ca_file {self.config.tls_ca_file}: {exc}; point "
                "sink.tls_ca_file at a PEM file of CA certificates",
                pipeline=self.ctx.name,
            ) from exc

    def _auth_kwargs(self) -> dict[str, Any]:
        c = self.config
        kwargs: dict[str, Any] = {}
        if (c.user is None) != (c.password is None):
            raise FatalSinkError(
                "nats sink: set both user and password, or neither",
                pipeline=self.ctx.name,
            )
        if c.user is not None:
            kwargs["user"], kwargs["password"] = c.user, c.password
        if c.token is not None:
            kwargs["token"] = c.token
        if c.creds is not None:
            kwargs["user_credentials"] = c.creds
        return kwargs

    async def _connect(self) -> None:
        nats = _nats()
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            text = redact(str(exc) or type(exc).__name__)
            errors.append(text)
            self._last_error = text

        kwargs = self._auth_kwargs()
        tls = self._tls()
        if tls is not None:
            kwargs["tls"] = tls
        servers = [s.strip() for s in self.config.url.split(",")]
        try:
            # nats-py tries each server until it has failed more than max_reconnect_attempts
            # times, and never gives up with 0 (a server unreachable at start would hang the
            # sink without a report): one retry, quickly, then the sink's own backoff
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=servers,
                    name=f"cdc-{self.ctx.name}",
                    connect_timeout=CONNECT_TIMEOUT_S,
                    allow_reconnect=False,  # the sink reconnects itself and publishes again
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,
                    error_cb=on_error,
                    pending_size=64 * 1024 * 1024,
                    **kwargs,
                ),
                CONNECT_TIMEOUT_S * 2 * len(servers) + 1,
            )
        except nats.errors.NoServersError as exc:
            detail = errors[-1] if errors else "no server answered"
            if any("authorization" in e.lower() or "authentication" in e.lower() for e in errors):
                raise self._auth_error(detail) from exc
            if any(_CERT_FAILED in e for e in errors):
                raise self._tls_error(detail) from exc
            raise _Failed(f"cannot connect: {detail}") from exc
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            text = redact(str(exc) or type(exc).__name__)
            if isinstance(exc, ssl.SSLCertVerificationError) or _CERT_FAILED in text:
                raise self._tls_error(text) from exc
            if "authorization" in text.lower() or isinstance(exc, nats.errors.AuthorizationError):
                raise self._auth_error(text) from exc
            if isinstance(exc, nats.errors.InvalidUserCredentialsError):
                raise FatalSinkError(
                    f"nats sink: the creds file {self.config.creds} is not valid: {text}",
                    pipeline=self.ctx.name,
                ) from exc
            raise _Failed(f"cannot connect: {type(exc).__name__} {text}") from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=API_TIMEOUT_S, publish_async_max_pending=MAX_IN_FLIGHT * 2)
        self._max_payload = int(getattr(nc, "max_payload", 0) or self._max_payload)

    def _tls_error(self, detail: str) -> FatalError:
        return FatalSinkError(
            f"nats sink: the TLS certificate of {self._where} does not verify ({detail}); set "
            "sink.tls_ca_file to the PEM file of the CA that signed it",
            pipeline=self.ctx.name,
            kind=Kind.SINK_TLS,
        )

    def _auth_error(self, detail: str) -> FatalError:
        return FatalSinkError(
            f"nats sink: {self._where} refused the login: {detail}; check sink.user/password, "
            "sink.token or sink.creds",
            pipeline=self.ctx.name,
            kind=Kind.SINK_AUTH,
        )

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.close(), 2)
        except Exception:  # noqa: BLE001 - a dead connection
            pass

    async def _ensure_stream(self) -> None:
        nats = _nats()
        js = self._js
        name = self.config.stream
        wanted = [self.event_filter, self.schema_subject]
        self._stream_max_msg = 0
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            info = None
        except nats.errors.NoRespondersError as exc:
            raise _Failed(
                "JetStream does not answer (is it enabled? start nats-server with -js)"
            ) from exc
        except nats.js.errors.ServiceUnavailableError as exc:
            raise _Failed(f"JetStream is unavailable: {exc}") from exc
        if info is None:
            if not self.config.create_stream:
                raise self._no_stream_error()
            try:
                await js.add_stream(
                    name=name,
                    subjects=wanted,
                    storage=nats.js.api.StorageType.FILE,
                    duplicate_window=DUPLICATE_WINDOW_S,
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code == 10058:  # created meanwhile by another pipeline
                    await self._ensure_stream()
                    return
                raise self._stream_refused(f"cannot create the stream {name}", exc) from exc
            self._log.info(
                "nats_sink_created_a_stream", message="nats sink created a stream",
                stream=name,
                subjects=wanted,
                duplicate_window_s=DUPLICATE_WINDOW_S,
            )
            return
        self._stream_max_msg = int(info.config.max_msg_size or 0)
        subjects = list(info.config.subjects or [])
        missing = [w for w in wanted if not any(covers(s, w) for s in subjects)]
        if missing:
            if not self.config.create_stream:
                raise self._uncovered_error(missing, subjects)
            config = info.config
            config.subjects = subjects + missing
            try:
                await js.update_stream(config)
            except nats.js.errors.APIError as exc:
                raise self._stream_refused(
                    f"cannot add the subjects {', '.join(missing)} to the stream {name}", exc
                ) from exc
            self._log.info("nats_sink_added_subjects", message="nats sink added subjects to a stream", stream=name, subjects=missing)
        window = float(info.config.duplicate_window or 0)
        if window < 1:
            self._log.warning(
                "nats_sink_the_stream_has_no", message="nats sink: the stream has no duplicate window, so events published again after "
                "a restart are stored twice; give it one (JetStream's default is 2m)",
                stream=name,
            )
        others = [s for s in subjects if s not in wanted]
        if others:
            self._log.warning(
                "nats_sink_the_stream_holds_other", message="nats sink: the stream holds other subjects too. JetStream de-duplicates by "
                "Nats-Msg-Id (the event id) per stream, and two pipelines reading the same "
                "database server can produce the same ids: give each such pipeline its own "
                "stream",
                stream=name,
                other_subjects=others[:10],
            )

    def _no_stream_error(self) -> FatalError:
        name = self.config.stream
        return FatalSinkError(
            f"nats sink: the stream {name} does not exist and create_stream is false. "
            f"Create it covering the subjects {self.event_filter} and {self.schema_subject} (e.g. "
            f"`nats stream add {name} --subjects '{self.event_filter}' --subjects "
            f"'{self.schema_subject}' --storage file --dupe-window 2m`), or set "
            "create_stream: true",
            pipeline=self.ctx.name,
            kind=Kind.SINK_CONFIG,
        )

    def _uncovered_error(self, missing: list[str], subjects: list[str]) -> FatalError:
        return FatalSinkError(
            f"nats sink: the stream {self.config.stream} does not cover the subject(s) "
            f"{', '.join(missing)} (it has {', '.join(subjects) or 'none'}) and "
            "create_stream is false: add them to the stream (`nats stream edit "
            f"{self.config.stream} --subjects ...`), or set create_stream: true",
            pipeline=self.ctx.name,
            kind=Kind.SINK_CONFIG,
        )

    # ------------------------------------------------------------------ cdc check

    def check(self) -> list[CDCError]:
        """The server answers and takes the login, JetStream is enabled, and with
        ``create_stream: false`` the stream exists and covers the subjects. Reads only: the
        stream is looked up, never created or changed."""

        async def look() -> list[CDCError]:
            nats = _nats()
            await self._connect()
            try:
                info = await self._js.stream_info(self.config.stream)
            except nats.js.errors.NotFoundError:
                return [] if self.config.create_stream else [self._no_stream_error()]
            except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
                    nats.errors.TimeoutError) as exc:
                return [FatalSinkError(
                    f"nats sink: JetStream does not answer at {self._where} "
                    f"({type(exc).__name__}): enable it (nats-server -js, or a `jetstream {{}}` "
                    "block in its configuration) and give the account JetStream access",
                    pipeline=self.ctx.name,
                    kind=Kind.SINK_CONFIG,
                )]
            subjects = list(info.config.subjects or [])
            wanted = [self.event_filter, self.schema_subject]
            missing = [w for w in wanted if not any(covers(s, w) for s in subjects)]
            if missing and not self.config.create_stream:
                return [self._uncovered_error(missing, subjects)]
            return []

        try:
            return self._run(look(), API_TIMEOUT_S + CONNECT_TIMEOUT_S * 4)
        except CDCError as exc:
            return [exc]
        except _Failed as failed:
            return [RetriableSinkError(
                f"nats sink: cannot reach {self._where}: {failed.text}; check sink.url and "
                "that nats-server runs and accepts connections from here",
                pipeline=self.ctx.name,
                kind=Kind.SINK_UNAVAILABLE,
            )]
        except TimeoutError:
            return [RetriableSinkError(
                f"nats sink: {self._where} did not answer in time; check sink.url",
                pipeline=self.ctx.name,
                kind=Kind.SINK_UNAVAILABLE,
            )]
        except Exception as exc:  # noqa: BLE001 - a client error: reported, not raised
            return [RetriableSinkError(
                f"nats sink: cannot check {self._where}: {type(exc).__name__}: "
                f"{redact(str(exc))}",
                pipeline=self.ctx.name,
                kind=Kind.SINK_UNAVAILABLE,
            )]
        finally:
            self.close()

    def _stream_refused(self, what: str, exc: Any) -> FatalError:
        return FatalSinkError(
            f"nats sink: {what}: {redact(str(getattr(exc, 'description', None) or exc))}; "
            "create or change the stream yourself, or check the account's JetStream "
            "permissions and limits",
            pipeline=self.ctx.name,
        )

    def _attempt(self, what: str, make: Any, give_up_s: float | None = None) -> Any:
        """Run the coroutine ``make()`` on a connection until it succeeds, reconnecting with a
        capped backoff (the pipeline shows `retrying` meanwhile); FatalError passes through."""
        attempt = 0
        started = time.monotonic()
        while True:
            try:
                return self._run(self._connected(make))
            except _Failed as failed:
                attempt += 1
                self._run(self._disconnect())
                if give_up_s is not None and time.monotonic() - started > give_up_s:
                    raise RetriableSinkError(
                        f"nats sink: {what} at {self._where}: {failed.text}",
                        pipeline=self.ctx.name,
                    ) from failed
                self._wait_retry(what, failed.text, attempt)

    async def _connected(self, make: Any) -> Any:
        if self._nc is None or self._nc.is_closed:
            await self._connect()
        try:
            return await make()
        except (_Failed, CDCError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified
            nats = _nats()
            if isinstance(exc, nats.errors.Error | OSError | asyncio.TimeoutError):
                raise _Failed(f"{type(exc).__name__}: {redact(str(exc))}") from exc
            raise

    def _wait_retry(self, what: str, text: str, attempt: int) -> None:
        delay = random.uniform(
            BACKOFF_BASE_S / 2, min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2 ** min(attempt, 10))
        )
        self._report_degraded(
            f"nats sink: {what} at {self._where}: {text}; retrying in {delay:.1f}s "
            f"(attempt {attempt + 1}), nothing is skipped"
        )
        if self.ctx.stop.wait(delay):
            raise RetriableSinkError(
                f"nats sink: stopping while {self._where} is unavailable ({text}); what was "
                "not acknowledged is published again after the restart",
                pipeline=self.ctx.name,
            )

    def _report_degraded(self, message: str) -> None:
        if not self._degraded:
            self._degraded = True
            self._log.warning("nats_sink_cannot_publish_retrying", message="nats sink cannot publish, retrying", reason=message)
        self.ctx.degraded(RetriableSinkError(message, pipeline=self.ctx.name))

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            self._log.info("nats_sink_jetstream_acknowledges_again", message="nats sink: JetStream acknowledges again")
            self.ctx.degraded(None)

    # ------------------------------------------------------------------ open / close

    def open(self, resume: str | None) -> None:
        self.close()
        self._inflight.clear()
        self._subjects.clear()
        self._schemas_sent.clear()
        self._stop_seen = None
        self._attempt("opening the stream", lambda: self._ensure_stream())
        self._log.info(
            "nats_sink_open", message="nats sink open",
            stream=self.config.stream,
            subjects=self.event_filter,
            schema_subject=self.schema_subject,
            max_payload=self._max_payload,
        )

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            if self._inflight:
                self._log.warning(
                    "nats_sink_closed_with_messages_jetstream", message="nats sink closed with messages JetStream has not acknowledged; they are "
                    "published again after the restart",
                    messages=len(self._inflight),
                )
            try:
                loop.run(self._disconnect(), 5)
            except Exception:  # noqa: BLE001 - close must never raise
                pass
            loop.close()
        self._nc = self._js = None
        self._inflight.clear()
        self._degraded = False

    # ------------------------------------------------------------------ writing

    def _subject(self, e: ChangeEvent) -> str:
        subject = self._subjects.get(e.schema)
        if subject is None:
            src = e.source
            subject = render_subject(
                self.config.subject,
                pipeline=self.ctx.name,
                schema=src.get("schema", ""),
                table=src.get("table", ""),
            )
            self._subjects[e.schema] = subject
        return subject

    def write_schema(self, schema: SchemaVersion) -> None:
        key = schema.qualified
        if key in self._schemas_sent:
            return
        msg = _Msg(
            self.schema_subject,
            orjson.dumps(schema.definition),
            {
                "Nats-Msg-Id": f"schema:{self._pipeline}:{key}",
                "cdc-schema-version": key,
                "cdc-pipeline": self._pipeline,
            },
            None,
        )
        self._publish([msg])
        self._wait_acked(0)
        self._schemas_sent.add(key)

    def write(self, events: Sequence[ChangeEvent]) -> None:
        limit = self._max_payload
        if 0 < self._stream_max_msg < limit:
            limit = self._stream_max_msg
        msgs: list[_Msg] = []
        debezium = self._debezium
        for e in events:
            if debezium is not None:  # format: debezium: the record's value and key
                m = debezium.message(e)
                if m is None:
                    continue  # an operation Debezium skips (skipped.operations)
                data, key = m
            else:
                data, key = e.json, e.key_json
            if len(data) + HEADER_ALLOWANCE > limit:
                if msgs:  # what came before it goes first: the pipeline may go on after it
                    if len(self._inflight) + len(msgs) > MAX_IN_FLIGHT:
                        self._wait_acked(max(0, MAX_IN_FLIGHT - len(msgs)))
                    self._publish(msgs)
                raise self._too_large(e.id, len(data), event=e)
            msgs.append(
                _Msg(
                    self._subject(e),
                    data,
                    {
                        "Nats-Msg-Id": e.id,
                        "cdc-id": e.id,
                        "cdc-op": e.op,
                        "cdc-schema-version": e.schema.qualified,
                        "cdc-key": "null" if key is None else key.decode(),
                    },
                    e.id,
                )
            )
        if len(self._inflight) + len(msgs) > MAX_IN_FLIGHT:
            self._wait_acked(max(0, MAX_IN_FLIGHT - len(msgs)))
        self._publish(msgs)

    def _too_large(
        self, event_id: str | None, size: int, event: ChangeEvent | None = None
    ) -> FatalError:
        stream_max = self._stream_max_msg
        if 0 < stream_max < self._max_payload:
            why = (
                f"more than the stream {self.config.stream}'s max_msg_size ({stream_max} bytes, "
                "headers included). It is not skipped: raise the stream's max_msg_size (`nats "
                f"stream edit {self.config.stream} --max-msg-size N`), then restart"
            )
        else:
            why = (
                f"more than the server's max_payload ({self._max_payload} bytes, headers "
                "included). It is not skipped: raise max_payload in the nats-server "
                "configuration (up to 64 MB), then restart"
            )
        message = f"nats sink: event {event_id} is {size} bytes, {why}"
        if event is not None:  # found before publishing it: the pipeline may dead-letter it
            return EventUndeliverable(
                message, event=event, pipeline=self.ctx.name, position=event_id,
                kind=Kind.EVENT_TOO_LARGE,
            )
        return FatalSinkError(
            message, pipeline=self.ctx.name, position=event_id, kind=Kind.EVENT_TOO_LARGE
        )

    def _publish(self, msgs: list[_Msg]) -> None:
        """Publish in order, keeping each message with its pending acknowledgement. A failure
        is handled by the waiting (the messages stay in flight and are published again)."""
        try:
            self._run(self._publish_async(msgs))
        except _Failed as failed:
            self._last_error = failed.text  # _wait_acked reconnects and publishes them again

    async def _publish_async(self, msgs: list[_Msg]) -> None:
        nats = _nats()
        inflight = self._inflight
        js = self._js
        failure: str | None = None
        for msg in msgs:
            if failure is None and js is not None:
                try:
                    future = await js.publish_async(msg.subject, msg.data, headers=msg.headers)
                except nats.errors.MaxPayloadError as exc:
                    raise self._too_large(msg.event_id, len(msg.data)) from exc
                except (nats.errors.Error, OSError) as exc:
                    failure = f"{type(exc).__name__}: {redact(str(exc))}"
                    future = None
            else:
                future = None
            inflight.append((msg, future))
        if failure is not None or js is None:
            raise _Failed(failure or "not connected")

    async def _reap(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the oldest acknowledgement; drop the acknowledged head of
        the in-flight queue; raise _Failed for a refused or missing one, FatalError for one a
        person must fix."""
        nats = _nats()
        inflight = self._inflight
        if inflight:
            head = inflight[0][1]
            if head is None:
                raise _Failed(self._last_error or "not published")
            if not head.done():
                await asyncio.wait([head], timeout=timeout)
        done = 0
        while inflight:
            msg, future = inflight[0]
            if future is None:
                raise _Failed(self._last_error or "not published")
            if not future.done():
                break
            if future.cancelled():
                raise _Failed("the acknowledgement was cancelled")
            exc = future.exception()
            if exc is not None:
                raise self._refused(msg, exc)
            inflight.popleft()
            done += 1
        if inflight and (self._nc is None or self._nc.is_closed):
            raise _Failed(f"the connection is closed ({self._last_error or 'lost'})")
        del nats
        return done

    def _refused(self, msg: _Msg, exc: BaseException) -> Exception:
        nats = _nats()
        what = f"event {msg.event_id}" if msg.event_id else f"schema on {msg.subject}"
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return _Failed(
                f"no JetStream stream answers for subject {msg.subject} (stream "
                f"{self.config.stream} deleted, or JetStream restarting)"
            )
        if isinstance(exc, nats.js.errors.APIError):
            code = getattr(exc, "code", None)
            text = redact(str(getattr(exc, "description", None) or exc))
            if code in (400, 403, 413) and "timeout" not in text.lower():
                if "maximum" in text.lower() and "size" in text.lower():
                    return self._too_large(msg.event_id, len(msg.data))
                return FatalSinkError(
                    f"nats sink: JetStream refused {what} on {msg.subject}: {text}",
                    pipeline=self.ctx.name,
                    position=msg.event_id,
                    kind=Kind.SINK_REJECTED,
                )
            return _Failed(f"JetStream refused {what}: {text}")
        return _Failed(f"{type(exc).__name__}: {redact(str(exc))}")

    async def _republish(self) -> None:
        """A new connection, and every message in flight published again, in order."""
        await self._disconnect()
        await self._connect()
        msgs = [m for m, _ in self._inflight]
        for _, future in self._inflight:
            if future is not None and not future.done():
                future.cancel()
        self._inflight.clear()
        await self._publish_async(msgs)

    def _wait_acked(self, keep: int) -> None:
        """Return once at most ``keep`` messages are waiting for their acknowledgement."""
        progress_at = time.monotonic()
        attempt = 0
        while len(self._inflight) > keep:
            try:
                if self._nc is None:
                    raise _Failed(self._last_error or "not connected")
                done = self._run(self._reap(_STEP_S))
            except _Failed as failed:
                attempt += 1
                self._wait_retry(
                    f"{len(self._inflight)} message(s) not acknowledged", failed.text, attempt
                )
                try:
                    self._run(self._republish())
                except _Failed as again:
                    self._last_error = again.text
                progress_at = time.monotonic()
                continue
            now = time.monotonic()
            if done:
                progress_at = now
                attempt = 0
                self._recovered()
                continue
            stalled = now - progress_at
            if stalled >= DEGRADED_AFTER_S:
                self._report_degraded(
                    f"nats sink: JetStream at {self._where} has not acknowledged "
                    f"{len(self._inflight)} message(s) for {stalled:.0f}s; waiting, nothing is "
                    "skipped"
                )
            if stalled >= REPUBLISH_AFTER_S:
                attempt += 1
                self._wait_retry(
                    f"{len(self._inflight)} message(s) not acknowledged",
                    f"no acknowledgement for {stalled:.0f}s",
                    attempt,
                )
                try:
                    self._run(self._republish())
                except _Failed as again:
                    self._last_error = again.text
                progress_at = time.monotonic()
            if self.ctx.stop.is_set():
                if self._stop_seen is None:
                    self._stop_seen = now
                if now - self._stop_seen >= STOP_WAIT_S:
                    raise RetriableSinkError(
                        f"nats sink: stopping with {len(self._inflight)} message(s) not "
                        "acknowledged by JetStream; they are published again after the restart",
                        pipeline=self.ctx.name,
                    )
        self._recovered()

    def flush(self) -> str | None:
        self._wait_acked(0)
        return None

    # ------------------------------------------------------------------ no state, drop

    async def _read_schema_msgs(self) -> dict[str, dict[str, Any]]:
        nats = _nats()
        jsm = self._nc.jsm(timeout=API_TIMEOUT_S)
        held: dict[str, dict[str, Any]] = {}
        seq = 1
        while True:
            try:
                raw = await jsm.get_msg(
                    self.config.stream, seq=seq, subject=self.schema_subject, next=True
                )
            except nats.js.errors.NotFoundError:
                return held
            seq = int(raw.seq) + 1
            headers = raw.headers or {}
            if headers.get("cdc-pipeline", self._pipeline) != self._pipeline:
                continue
            try:
                definition = orjson.loads(raw.data or b"")
            except orjson.JSONDecodeError:
                continue
            if isinstance(definition, dict) and "name" in definition and "version" in definition:
                held[f"{definition['name']}@{definition['version']}"] = definition

    def _read_held(self) -> dict[str, dict[str, Any]]:
        if self._held is not None:
            return self._held
        nats = _nats()

        async def read() -> dict[str, dict[str, Any]]:
            try:
                await self._js.stream_info(self.config.stream)
            except nats.js.errors.NotFoundError:
                return {}
            return await self._read_schema_msgs()

        self._held = self._attempt("reading the schema subject", read, API_TIMEOUT_S)
        return self._held

    def holds_events(self) -> bool:
        return bool(self._read_held())

    def held_schemas(self) -> list[dict[str, Any]]:
        return list(self._read_held().values())

    def _kept_line(self, verb: str) -> str:
        return (
            f"{verb} the event messages ({self.event_filter} in stream {self.config.stream}): "
            "delete them with the nats CLI if they should go"
        )

    def describe_drop(self) -> list[str]:
        try:
            held = self._read_held()
        except CDCError as exc:
            self.close()
            return [
                f"purge this pipeline's schema messages ({self.schema_subject} in stream "
                f"{self.config.stream}; cannot count them now: {exc})",
                self._kept_line("keep"),
            ]
        self.close()
        lines = []
        if held:
            lines.append(
                f"purge the {len(held)} schema message(s) of {self.ctx.name} ({self.schema_subject} "
                f"in stream {self.config.stream}), so that a fresh start is allowed"
            )
        return [*lines, self._kept_line("keep")]

    def drop(self) -> list[str]:
        self._held = None
        held = self._read_held()
        if not held:
            self.close()
            return [self._kept_line("kept")]

        async def purge() -> None:
            jsm = self._nc.jsm(timeout=API_TIMEOUT_S)
            await jsm.purge_stream(self.config.stream, subject=self.schema_subject)

        try:
            self._attempt("purging the schema subject", purge, API_TIMEOUT_S)
        finally:
            self.close()
        self._held = {}
        self._log.info(
            "nats_sink_purged_the_schema_subject", message="nats sink purged the schema subject",
            stream=self.config.stream,
            subject=self.schema_subject,
            count=len(held),
        )
        return [
            f"purged the {len(held)} schema message(s) of {self.ctx.name} ({self.schema_subject} "
            f"in stream {self.config.stream})",
            self._kept_line("kept"),
        ]
