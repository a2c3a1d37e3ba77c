"""The webhook sink: batches of events POSTed to an HTTP endpoint (``type: webhook``).

Theory of operation
-------------------
:meth:`WebhookSink.write` accumulates events and :meth:`WebhookSink.flush` delivers them:
it cuts what was accumulated into batches of at most ``batch_max`` events and sends them one
at a time, strictly in order, over one keep-alive :class:`httpx.Client`; it returns only when
every batch got a 2xx answer. The pipeline saves its checkpoint after ``flush`` returns, so a
checkpoint never covers an event the receiver has not acknowledged (at-least-once). ``write``
already sends the *full* batches it can cut (the same batches ``flush`` would send), so a long
stretch of events between two flushes (a backlog after an outage) never piles up in memory;
sending early is safe because nothing is checkpointed before ``flush`` returns.

A request's body is built from the events' already-encoded JSON (``event.json``), joined
without decoding or re-encoding::

    {"pipeline":"shop","events":[{...},{...}],"schemas":{"public.orders@2":{...}}}

``schemas`` holds the definitions of the schema versions the batch's events use, so every
request can be read on its own. Headers: ``Content-Type: application/json``,
``X-CDC-Batch-Id`` (hex SHA-256 of the batch's event ids joined by ``\\n``: the same for every
attempt of the same batch, so a receiver can de-duplicate whole batches), with a ``secret``
``X-CDC-Timestamp`` and ``X-CDC-Signature: sha256=<hex HMAC-SHA256(secret, ts + "." + body)>``
(signed again at each attempt, so the timestamp is fresh), and the configured ``headers``.

Answers:

* 2xx: the batch is delivered; the next one goes.
* 408, 429, 5xx, a timeout or a connection error: the *same* batch is sent again, without
  limit, after an exponential backoff with full jitter (``Retry-After``, in seconds or as an
  HTTP date, replaces the computed wait; every wait is capped at ``max_backoff_s``). Nothing
  is ever skipped. Meanwhile the pipeline shows ``retrying`` (``/healthz`` 503) through
  :meth:`~cdc.plugin.PluginContext.degraded`, and ``running`` again after the next success.
  A stop request ends the wait at once with a :class:`~cdc.errors.RetriableError`: the
  service is not held up, and the batches not yet acknowledged are sent again after a restart
  (the checkpoint does not cover them).
* 413: the batch is halved (and the smaller size is kept while the sink is open); a single
  event that is still too large is a :class:`~cdc.errors.FatalError` naming its id and size.
* any other answer (another 4xx, a redirect): :class:`~cdc.errors.FatalError` of kind
  ``sink_rejected`` showing the status and the start of the response body. The pipeline stops
  and ``/healthz`` names it; after a fix, a restart resends from the checkpoint.

Neither the secret nor any header value is ever logged or put into an error message; URLs in
messages are shown without user information and query string.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import hmac
import random
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from cdc.errors import (
    CDCError,
    EventUndeliverable,
    FatalError,
    FatalSinkError,
    Kind,
    RetriableSinkError,
)
from cdc.events import encode_lines
from cdc.plugin import PluginContext, Sink, setting

if TYPE_CHECKING:
    from cdc.events import ChangeEvent
    from cdc.schema import SchemaVersion

__all__ = [
    "WebhookConfig",
    "WebhookSink",
    "batch_id",
    "parse_retry_after",
    "sign",
]

#: headers the sink sets itself; ``headers:`` may not override them
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "transfer-encoding",
        "host",
        "x-cdc-batch-id",
        "x-cdc-timestamp",
        "x-cdc-signature",
    }
)
#: statuses that mean "try the same batch again later"
RETRIABLE_STATUSES = frozenset({408, 429})
#: first backoff step in seconds (doubled per failed attempt, capped at max_backoff_s)
BACKOFF_BASE_S = 1.0
#: shortest wait a Retry-After can ask for (``Retry-After: 0`` must not become a busy loop)
MIN_RETRY_AFTER_S = 0.1
#: characters of a refusing response's body shown in the error
BODY_EXCERPT = 200
#: bytes of a response body read at most (the rest is discarded with the connection)
MAX_RESPONSE_BYTES = 64 * 1024


# ---------------------------------------------------------------------------- settings


def _check_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "expected an http:// or https:// URL"
    if not parts.hostname:
        return "the URL has no host"
    return None


def _check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _check_headers(value: dict[str, str]) -> str | None:
    bad = sorted(k for k in value if k.lower() in RESERVED_HEADERS)
    if bad:
        return f"may not set {', '.join(bad)} (the sink sets it itself)"
    for name in value:
        if not name or any(c in name for c in " \t\r\n:") or not name.isascii():
            return f"{name!r} is not a valid header name"
    for name, v in value.items():
        if not v.isascii() or any(c in v for c in "\r\n\0"):
            return f"the value of {name} must be ASCII text on one line"
    return None


@dataclass
class WebhookConfig:
    url: str = setting(
        doc="endpoint that receives POSTed batches",
        check=_check_url,
        example="https://hooks.example.com/cdc",
    )
    secret: str | None = setting(
        None, doc="HMAC-SHA256 key signing each request (X-CDC-Signature)", secret=True
    )
    headers: dict[str, str] = setting(
        default_factory=dict,
        doc="extra request headers (e.g. Authorization); may not set Content-Type or X-CDC-*",
        check=_check_headers,
        secret=True,
    )
    batch_max: int = setting(500, doc="most events per request", check=_check_positive)
    timeout_s: float = setting(
        10,
        doc="timeout of each phase of a request (connect, send, wait for the answer)",
        check=_check_positive,
    )
    max_backoff_s: float = setting(
        300, doc="cap on retry waits, Retry-After included", check=_check_positive
    )
    ca_file: str | None = setting(
        None,
        doc="PEM file of the CA(s) to trust for https instead of the default bundle (pinning); "
        "relative to the config file",
        path=True,
    )


# ---------------------------------------------------------------------------- pure helpers


def batch_id(events: Sequence[ChangeEvent]) -> str:
    """Hex SHA-256 of the events' ids joined by ``\\n``: the same for every attempt."""
    return hashlib.sha256("\n".join(e.id for e in events).encode()).hexdigest()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-CDC-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``ts + "." + body``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or
    ``None`` when absent or unreadable. A date in the past gives 0."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN: unreadable
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def display_url(url: str) -> str:
    """``url`` fit for logs and errors: no user information, no query string or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(invalid url)"


# ---------------------------------------------------------------------------- the sink


class _Body(httpx.SyncByteStream):
    """A request body that can be released once the request is over (see ``_post``)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data

    def release(self) -> None:
        self._data = b""


class _TooLarge(Exception):
    """The receiver answered 413 to a batch."""

    def __init__(self, status_line: str) -> None:
        super().__init__(status_line)
        self.status_line = status_line


class _Refused(Exception):
    """The receiver refused a batch (a 4xx other than 408/413/429, or a redirect)."""

    def __init__(self, error: FatalError, status: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.status = status


class WebhookSink(Sink):
    """POSTs batches of events to ``url``; see the module docstring."""

    Config = WebhookConfig

    def __init__(self, config: WebhookConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.config: WebhookConfig = config
        self._url = config.url
        self._where = display_url(config.url)
        self._secret = config.secret.encode() if config.secret else None
        self._client: httpx.Client | None = None
        self._pending: list[ChangeEvent] = []
        #: qualified name -> b'"name@version":{definition}', from write_schema (or the event)
        self._definitions: dict[str, bytes] = {}
        #: ``format: debezium``: the items of ``events`` are Debezium record values
        self._debezium = self.debezium_encoder()
        self._limit = max(1, int(config.batch_max))
        self._degraded = False
        self._log = ctx.log.bind(sink="webhook", url=self._where)
        self._head = b'{"pipeline":' + orjson.dumps(ctx.name) + b',"events":['

    # ------------------------------------------------------------------ lifecycle

    def check(self) -> list[CDCError]:
        """The receiver's host and port accept a connection (no request is sent: a test
        delivery would be an event the receiver must handle)."""
        parts = urlsplit(self._url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=5):
                return []
        except OSError as exc:
            return [RetriableSinkError(
                f"webhook sink: nothing accepts connections at {self._where} "
                f"({exc.strerror or exc}); start the receiver or fix sink.url",
                pipeline=self.ctx.name,
                kind=Kind.SINK_UNAVAILABLE,
            )]

    def open(self, resume: str | None) -> None:
        """Create the HTTP client (no request yet: the receiver may be down at start)."""
        self.close()
        self._pending = []
        self._limit = max(1, int(self.config.batch_max))
        verify: ssl.SSLContext | bool = True
        if self.config.ca_file:
            try:
                verify = ssl.create_default_context(cafile=self.config.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise FatalSinkError(
                    f"webhook sink: cannot load ca_file {self.config.ca_file}: {exc}; "
                    "point sink.ca_file at a PEM file of CA certificates",
                    pipeline=self.ctx.name,
                ) from exc
        from cdc import __version__

        base_headers = {"User-Agent": f"cdc/{__version__}", **self.config.headers}
        self._client = httpx.Client(
            headers=base_headers,
            timeout=httpx.Timeout(self.config.timeout_s),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=verify,
            follow_redirects=False,
            trust_env=True,  # SSL_CERT_FILE / SSL_CERT_DIR, HTTPS_PROXY / NO_PROXY
        )
        self._log.info(
            "webhook_sink_open", message="webhook sink open",
            batch_max=self.config.batch_max,
            signed=self._secret is not None,
            headers=sorted(self.config.headers),  # names only, never values
        )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - close must never raise
                try:
                    self._log.warning("webhook_sink_could_not_close", message="webhook sink could not close its client", error=repr(exc))
                except Exception:  # noqa: BLE001
                    pass

    # ------------------------------------------------------------------ writing

    def write_schema(self, schema: SchemaVersion) -> None:
        """Record the definition; it travels in the ``schemas`` of each batch that uses it."""
        self._definitions[schema.qualified] = _schema_entry(schema)

    def write(self, events: Sequence[ChangeEvent]) -> None:
        """Accumulate events; full batches are sent at once (see :meth:`_send`), so memory
        stays bounded when the pipeline delivers a long stretch between two flushes."""
        self._pending.extend(events)
        if len(self._pending) >= self._limit:
            self._send(final=False)

    def flush(self) -> str | None:
        """Send everything written since the last flush, in order; return when every batch
        was acknowledged with a 2xx. Raises RetriableError only when the service is stopping
        while the receiver is unavailable, FatalError when the receiver refuses a batch."""
        if self._pending:
            self._send(final=True)
        return None

    def _send(self, *, final: bool) -> None:
        """Send the pending events in batches of ``self._limit``, one at a time, in order;
        without ``final`` only full batches go and the rest waits for more events or the
        flush. Batches are cut the same way either way: from the oldest pending event."""
        pending = self._pending
        done = 0
        probe = self._limit  # smaller while finding the one event a receiver refuses
        try:
            while done < len(pending):
                available = len(pending) - done
                if available < self._limit and not final and probe >= self._limit:
                    break
                size = min(self._limit, probe, available)
                batch = pending[done : done + size]
                try:
                    self._deliver(batch)
                except _Refused as refused:
                    if self.ctx.pipeline.dead_letter is None or not 400 <= refused.status < 500:
                        raise refused.error from None
                    if size > 1:  # halve until the refused event is alone
                        probe = max(1, size // 2)
                        continue
                    del pending[done]  # the rest stays pending: the pipeline flushes again
                    raise EventUndeliverable(
                        f"webhook {self._where} refused event {batch[0].id} with "
                        f"{refused.status}",
                        event=batch[0],
                        kept_rest=True,
                        pipeline=self.ctx.name,
                        table=batch[0].table,
                        kind=Kind.SINK_REJECTED,
                    ) from None
                except _TooLarge as too_large:
                    if size == 1:
                        raise self._event_too_large(batch[0], too_large.status_line) from None
                    self._limit = max(1, size // 2)
                    self._log.warning(
                        "webhook_batch_too_large_halving", message="webhook receiver refused a batch as too large; halving",
                        events=size,
                        batch_max_now=self._limit,
                    )
                    continue
                done += size
                probe = self._limit
        finally:
            if done:
                self._pending = pending[done:]

    # ------------------------------------------------------------------ one batch

    def _body(self, batch: Sequence[ChangeEvent]) -> bytes:
        used: dict[str, bytes] = {}
        seen: set[int] = set()
        for e in batch:
            sv = e.schema
            if id(sv) in seen:
                continue
            seen.add(id(sv))
            q = sv.qualified
            if q not in used:
                entry = self._definitions.get(q)
                if entry is None:
                    entry = self._definitions[q] = _schema_entry(sv)
                used[q] = entry
        if self._debezium is not None:  # format: debezium: each item is a record's value
            items = b",".join(self._debezium.values(batch))
        else:
            items = encode_lines(batch, b",")
        parts = [self._head, items, b'],"schemas":{']
        parts.append(b",".join(used[q] for q in sorted(used)))
        parts.append(b"}}")
        return b"".join(parts)

    def _deliver(self, batch: Sequence[ChangeEvent]) -> None:
        """POST one batch until a 2xx; raise _TooLarge on 413, FatalError on a refusal,
        RetriableError when stopping while the receiver is unavailable."""
        client = self._client
        if client is None:
            raise RetriableSinkError(
                f"webhook sink for {self._where} is not open",
                pipeline=self.ctx.name,
            )
        body = self._body(batch)
        bid = batch_id(batch)
        attempt = 0
        while True:
            headers = {"Content-Type": "application/json", "X-CDC-Batch-Id": bid}
            if self._secret is not None:
                ts = str(int(time.time()))
                headers["X-CDC-Timestamp"] = ts
                headers["X-CDC-Signature"] = sign(self._secret, ts, body)
            retry_after: float | None = None
            try:
                status, reason, excerpt, retry_after_header, location = self._post(
                    client, body, headers
                )
            except httpx.TimeoutException as exc:
                failure = (
                    f"no answer within timeout_s={self.config.timeout_s:g} ({type(exc).__name__})"
                )
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {_short(exc)}"
            else:
                if 200 <= status < 300:
                    if self._degraded:
                        self._degraded = False
                        self._log.info(
                            "webhook_receiver_accepts_batches_again", message="webhook receiver accepts batches again", attempts=attempt + 1
                        )
                        self.ctx.degraded(None)
                    return
                if status == 413:
                    raise _TooLarge(f"{status} {reason}".strip())
                if status in RETRIABLE_STATUSES or status >= 500:
                    failure = f"answered {status} {reason}".strip()
                    if excerpt:
                        failure += f": {excerpt}"
                    retry_after = parse_retry_after(retry_after_header)
                else:
                    raise _Refused(
                        self._rejected(batch, bid, status, reason, excerpt, location), status
                    )
            attempt += 1
            cap = float(self.config.max_backoff_s)
            if retry_after is not None:
                delay = min(max(retry_after, MIN_RETRY_AFTER_S), cap)
            else:
                delay = random.uniform(0, min(cap, BACKOFF_BASE_S * 2 ** min(attempt - 1, 30)))
            error = RetriableSinkError(
                f"webhook {self._where}: {failure}; the batch of {len(batch)} events "
                f"(batch id {bid[:16]}…) is sent again in {delay:.1f}s (attempt {attempt + 1})",
                pipeline=self.ctx.name,
            )
            self._degraded = True
            self.ctx.degraded(error)
            self._log.warning(
                "webhook_batch_not_delivered_retrying", message="webhook batch not delivered, retrying",
                reason=failure,
                events=len(batch),
                batch_id=bid,
                attempt=attempt,
                retry_in_s=round(delay, 3),
                retry_after_s=retry_after,
            )
            if self.ctx.stop.wait(delay):
                raise RetriableSinkError(
                    f"webhook {self._where}: stopping while the receiver is unavailable "
                    f"({failure}); unacknowledged batches are sent again after a restart",
                    pipeline=self.ctx.name,
                )

    def _post(
        self, client: httpx.Client, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, str, str | None, str | None]:
        """(status, reason, body excerpt for errors, Retry-After, Location)."""
        request = client.build_request("POST", self._url, content=body, headers=headers)
        # httpx's request objects end up in reference cycles that only the cyclic GC frees;
        # a body we can let go of keeps those from holding every batch sent until then
        stream = request.stream = _Body(body)
        try:
            response = client.send(request, stream=True)
        except BaseException:
            stream.release()
            raise
        try:
            status = response.status_code
            excerpt = ""
            if 200 <= status < 300:
                # read (and drop) a normal answer so the connection can be reused
                read = 0
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read > MAX_RESPONSE_BYTES:
                        break
            else:
                data = bytearray()
                try:
                    for chunk in response.iter_bytes():
                        data += chunk
                        if len(data) > MAX_RESPONSE_BYTES:
                            break
                    excerpt = _excerpt(bytes(data), response.encoding or "utf-8")
                except httpx.DecodingError:
                    excerpt = "(a body that cannot be decoded)"
            return (
                status,
                response.reason_phrase,
                excerpt,
                response.headers.get("retry-after"),
                response.headers.get("location"),
            )
        finally:
            response.close()
            stream.release()

    # ------------------------------------------------------------------ errors

    def _rejected(
        self,
        batch: Sequence[ChangeEvent],
        bid: str,
        status: int,
        reason: str,
        excerpt: str,
        location: str | None,
    ) -> FatalError:
        what = f"{status} {reason}".strip()
        message = (
            f"webhook {self._where} refused a batch of {len(batch)} events "
            f"({batch[0].id} .. {batch[-1].id}, batch id {bid}) with {what}"
        )
        if excerpt:
            message += f": {excerpt}"
        if 300 <= status < 400:
            target = display_url(location) if location else "(no Location)"
            message += f"; the sink does not follow redirects: point sink.url at {target}"
        else:
            message += (
                "; fix the receiver or the sink settings (url, headers, secret), then restart: "
                "the batch is sent again from the checkpoint"
            )
        self._log.error(
            "webhook_receiver_refused_a_batch", message="webhook receiver refused a batch", status=status, events=len(batch), batch_id=bid
        )
        return FatalSinkError(
            message, pipeline=self.ctx.name, table=batch[0].table, kind=Kind.SINK_REJECTED
        )

    def _event_too_large(self, event: ChangeEvent, status_line: str) -> FatalError:
        size = len(event.json)
        body = len(self._body([event]))
        self._log.error(
            "webhook_receiver_refused_a_single_event", message="webhook receiver refused a single event as too large", event_id=event.id, bytes=size
        )
        return FatalSinkError(
            f"webhook {self._where} answered {status_line} to event {event.id} alone "
            f"({size} bytes of event JSON, a {body}-byte request): raise the receiver's "
            "request size limit; the event is never dropped, the pipeline resends it from "
            "the checkpoint after a restart",
            pipeline=self.ctx.name,
            table=event.table,
            kind=Kind.SINK_EVENT_TOO_LARGE,
        )

    # ------------------------------------------------------------------ facts

    def holds_events(self) -> bool:
        """A receiver cannot be asked what it holds: always False."""
        return False

    def describe_drop(self) -> list[str]:
        return [
            f"nothing at the webhook receiver {self._where}: cdc keeps nothing there, and the "
            "events it already received are the receiver's to keep"
        ]

    def drop(self) -> list[str]:
        return [f"left the webhook receiver {self._where} alone (cdc keeps nothing there)"]


def _schema_entry(schema: SchemaVersion) -> bytes:
    return orjson.dumps(schema.qualified) + b":" + orjson.dumps(schema.definition)


def _excerpt(data: bytes, encoding: str) -> str:
    try:
        text = data.decode(encoding, errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    if len(text) > BODY_EXCERPT:
        text = text[:BODY_EXCERPT] + "…"
    return text


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"
