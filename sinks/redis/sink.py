"""The Redis Streams sink: one stream entry per event, one MULTI/EXEC per batch.

What goes where
---------------
* Each event is one ``XADD`` to the stream rendered from ``stream`` (``{pipeline}``,
  ``{schema}`` = ``source.schema``, ``{table}`` = ``source.table``), with the fields ``id``
  (the event id), ``op``, ``key`` (the compact JSON of the event's key, ``null`` for a keyless
  table and for ``t``) and ``value`` (the event JSON). Entry ids are Redis's own (``*``), so
  the entries of a stream are in delivery order. With ``maxlen`` each ``XADD`` trims its stream
  approximately (``MAXLEN ~ N``).
* Each schema version is ``HSET`` into the hash ``cdc:{pipeline}:schemas`` (field
  ``name@version``, value the definition JSON) before the first event that uses it.

Exactly once into Redis
-----------------------
Each :meth:`RedisSink.write` (one batch of the pipeline) is ONE ``MULTI``/``EXEC``: the
``XADD`` of every event of the batch, plus, in the hash ``cdc:{pipeline}:offsets``, the fields
``last_id`` (the batch's last event id) and ``count`` (how many events the sink has written
for this pipeline, ever), plus the batch's event ids appended to the list
``cdc:{pipeline}:since_flush`` (emptied by the first batch after each flush). Redis applies a
transaction whole or not at all, so these always agree with the streams.

:meth:`RedisSink.flush` returns ``count`` as the resume token that the pipeline saves with its
checkpoint. After a crash the pipeline delivers again, in the same order and with the same ids,
every event after its checkpoint; :meth:`RedisSink.open` compares the ``count`` in Redis with
the token: the difference K is how many of them Redis already holds, and the last K ids of
``since_flush`` are exactly those. The sink then skips re-delivered events while they match
those ids one by one, in order (an event that does not match ends the skipping: it is written,
never dropped), so a restart adds no duplicates and loses nothing.

A command that fails (connection lost, timeout, a server that is loading or out of memory) is
retried inside the sink, on a new connection, with a capped backoff, without limit and without
skipping anything; meanwhile the pipeline shows ``retrying`` (``/healthz`` 503) through
:meth:`~cdc.plugin.PluginContext.degraded`. Whether a transaction whose answer was lost was
applied is read back from ``count`` before it is sent again, so a retry never duplicates
(redis-py's own retries are turned off for that reason). A stop request ends the waiting with a
:class:`~cdc.errors.RetriableError`. Refusals a person must fix (authentication, permissions,
a key of another type, a server certificate that does not verify) are
:class:`~cdc.errors.FatalError`. So is an event larger than the server's
``proto-max-bulk-len`` (read at open with ``CONFIG GET``; Redis's default, 512 MB, when that
is refused): Redis would drop the connection on it, so the sink refuses it before sending,
naming the event, its size and the setting to raise.

Durability is Redis's: the guarantee needs persistence (AOF); the sink logs a warning at start
when the server has none (``aof_enabled:0`` in ``INFO persistence``).
"""

from __future__ import annotations

import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

from cdc import names
from cdc.errors import (
    CDCError,
    FatalError,
    FatalSinkError,
    Kind,
    RetriableSinkError,
)
from cdc.log import add_secrets, redact
from cdc.plugin import PluginContext, Sink
from sinks.redis.config import RedisConfig, render_key

if TYPE_CHECKING:
    from cdc.events import ChangeEvent
    from cdc.schema import SchemaVersion

__all__ = ["RedisConfig", "RedisSink"]

#: first retry wait in seconds (doubled per failed attempt, capped at MAX_BACKOFF_S)
BACKOFF_BASE_S = 0.2
MAX_BACKOFF_S = 5.0
#: seconds a command may go unanswered before the pipeline is reported `retrying` (the command
#: itself fails at ``timeout_s``)
DEGRADED_AFTER_S = 3.0
#: seconds a one-off command (reading what the sink holds, `cdc drop`) keeps retrying
ONE_OFF_S = 15.0
#: the JSON written in field ``key`` for an event without a key
NULL_KEY = b"null"
#: Redis's default proto-max-bulk-len (the most one argument of a command may hold), used
#: when the server does not tell (CONFIG GET refused)
DEFAULT_MAX_BULK = 512 * 1024 * 1024
#: what OpenSSL says of a server certificate that does not verify
_CERT_FAILED = "CERTIFICATE_VERIFY_FAILED"


def _redis() -> Any:
    try:
        import redis
        import redis.backoff
        import redis.exceptions
        import redis.retry
    except ImportError as exc:
        raise FatalError(
            f"the redis sink needs the redis package (redis-py): pip install redis ({exc})",
            kind=Kind.PLUGIN_IMPORT,
        ) from exc
    return redis


def _cert_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a server certificate that does not verify."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or _CERT_FAILED in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def display_url(url: str) -> str:
    """``url`` fit for logs and errors: no user information, no query string."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(invalid url)"


_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def _bulk(arg: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def _command(parts: list[bytes], *args: bytes) -> None:
    """Append one command, as RESP, to ``parts``."""
    parts.append(b"*%d\r\n" % len(args))
    parts.extend(map(_bulk, args))


def _get_connection(pool: Any) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name
        return pool.get_connection("MULTI")


def _transact(client: Any, payload: bytes, queued: int) -> list[Any]:
    """Send ``payload`` (MULTI, ``queued`` commands, EXEC) on one connection of ``client``'s
    pool and read every reply. A refused command raises its error once every reply is read
    (as redis-py's pipeline does); a connection error drops the connection."""
    rd = _redis()
    pool = client.connection_pool
    conn = _get_connection(pool)
    try:
        conn.send_packed_command([payload])
        refused: list[Exception] = []
        for _ in range(queued + 1):  # +OK for MULTI, then QUEUED for each command
            try:
                conn.read_response()
            except rd.exceptions.ResponseError as exc:
                refused.append(exc)
        try:
            result = conn.read_response()
        except rd.exceptions.ResponseError as exc:
            raise (refused[0] if refused else exc) from None
        if refused:
            raise refused[0]
        if not isinstance(result, list):
            raise rd.exceptions.ResponseError(f"EXEC answered {result!r}")
        for item in result:
            if isinstance(item, Exception):
                raise item
        return result
    except (rd.exceptions.ConnectionError, rd.exceptions.TimeoutError, OSError):
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


class _Failed(Exception):
    """One attempt failed in a way worth retrying; ``text`` says why."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class RedisSink(Sink):
    """Writes events to Redis streams (see the module doc)."""

    Config = RedisConfig
    destinations = True  # `route` / `outbox` name the stream

    def __init__(self, config: RedisConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.config: RedisConfig = config
        #: ``format: debezium``: messages carry Debezium record values (section 9)
        self._debezium = self.debezium_encoder()
        self._where = display_url(config.url)
        self._log = ctx.log.bind(sink="redis", url=self._where)
        try:
            parts = urlsplit(config.url)
            if parts.password:
                add_secrets([parts.password, unquote(parts.password)])
        except ValueError:
            pass
        name = ctx.name
        self.offsets_key = f"cdc:{name}:offsets"
        self.schemas_key = f"cdc:{name}:schemas"
        self.since_flush_key = f"cdc:{name}:since_flush"
        self._client: Any = None
        #: by schema version, or by a destination a transform chose
        self._streams: dict[SchemaVersion | str, tuple[str, bytes]] = {}
        self._checked: set[str] = set()  # stream keys known to be streams (or absent)
        self._schemas_sent: set[str] = set()
        self._count = 0  # events written for this pipeline, ever (field `count`)
        self._flushed = True  # no batch since the last flush: the next one empties since_flush
        self._skip: deque[str] = deque()  # ids Redis already holds, still to be re-delivered
        self._degraded = False
        self._held: dict[str, dict[str, Any]] | None = None
        self._max_bulk = DEFAULT_MAX_BULK  # the server's proto-max-bulk-len, read at open
        #: time.monotonic() when the command in progress started (None: none in progress)
        self._busy_since: float | None = None
        self._busy_what = ""
        self._watchdog: threading.Thread | None = None
        self._closing = threading.Event()

    # ------------------------------------------------------------------ connection

    def _connect(self) -> Any:
        rd = _redis()
        kwargs: dict[str, Any] = {
            "socket_timeout": self.config.timeout_s,
            "socket_connect_timeout": self.config.timeout_s,
            # no retries inside redis-py: a transaction sent again after a lost answer could
            # be applied twice; the sink retries itself, after checking what was applied
            "retry": rd.retry.Retry(rd.backoff.NoBackoff(), 0),
            "client_name": f"cdc-{self.ctx.name}",
        }
        if self.config.tls_ca_file:
            kwargs["ssl_ca_certs"] = self.config.tls_ca_file
        try:
            return rd.Redis.from_url(self.config.url, **kwargs)
        except (ValueError, TypeError) as exc:
            raise FatalSinkError(
                f"redis sink: cannot use url {self._where}: {redact(str(exc))}",
                pipeline=self.ctx.name,
            ) from exc

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a dead connection
                pass

    def _classify(self, exc: BaseException) -> CDCError | _Failed:
        """A Redis error as a FatalError (a person must act) or a _Failed (retry)."""
        rd = _redis()
        ex = rd.exceptions
        text = redact(str(exc)) or type(exc).__name__
        if isinstance(exc, ex.AuthenticationError | ex.AuthorizationError):
            return FatalSinkError(
                f"redis sink: {self._where} refused the login: {text}; check the user and "
                "password in sink.url",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            )
        if isinstance(exc, ex.NoPermissionError):
            return FatalSinkError(
                f"redis sink: {self._where} refused a command: {text}; grant the user XADD, "
                "HSET, HGET, HMGET, HGETALL, RPUSH, LRANGE, DEL, EXISTS, TYPE, MULTI, EXEC and INFO on the keys "
                f"cdc:{self.ctx.name}:* and the stream keys",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            )
        if isinstance(exc, ex.ResponseError) and (
            "WRONGTYPE" in str(exc) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc)
        ):
            return FatalSinkError(
                f"redis sink: {self._where} refused a command: {text}",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH if "AUTH" in str(exc) or "PASS" in str(exc) else "sink_rejected",
            )
        if isinstance(exc, ex.ExecAbortError):
            inner = str(exc)
            if "WRONGTYPE" in inner or "NOPERM" in inner:
                return FatalSinkError(
                    f"redis sink: {self._where} refused the batch: {text}",
                    pipeline=self.ctx.name,
                    kind=Kind.SINK_REJECTED,
                )
        if _cert_failed(exc):
            return FatalSinkError(
                f"redis sink: the TLS certificate of {self._where} does not verify ({text}); "
                "set sink.tls_ca_file to the PEM file of the CA that signed it",
                pipeline=self.ctx.name,
                kind=Kind.SINK_TLS,
            )
        if isinstance(exc, ex.RedisError | OSError):
            return _Failed(f"{type(exc).__name__}: {text}")
        raise exc

    def _attempt(self, what: str, fn: Any, give_up_s: float | None = None) -> Any:
        """Run ``fn(client)`` until it succeeds: failures are retried on a new connection
        after a capped backoff (the pipeline shows `retrying` meanwhile); a stop request (or
        ``give_up_s`` seconds, for one-off commands like `cdc drop`) ends the waiting with
        RetriableError; refusals are FatalError."""
        attempt = 0
        started = time.monotonic()
        while True:
            try:
                if self._client is None:
                    self._client = self._connect()
                self._busy_what = what
                self._busy_since = time.monotonic()
                try:
                    result = fn(self._client)
                finally:
                    self._busy_since = None
            except Exception as exc:  # noqa: BLE001 - classified below
                verdict = self._classify(exc)
                if isinstance(verdict, CDCError):
                    self._drop_client()
                    raise verdict from exc
                self._drop_client()
                attempt += 1
                if give_up_s is not None and time.monotonic() - started > give_up_s:
                    raise RetriableSinkError(
                        f"redis sink: {what} failed at {self._where}: {verdict.text}",
                        pipeline=self.ctx.name,
                    ) from exc
                delay = random.uniform(
                    BACKOFF_BASE_S / 2, min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2 ** min(attempt, 10))
                )
                error = RetriableSinkError(
                    f"redis sink: {what} failed at {self._where}: {verdict.text}; retrying "
                    f"in {delay:.1f}s (attempt {attempt + 1}), nothing is skipped",
                    pipeline=self.ctx.name,
                )
                if not self._degraded:
                    self._degraded = True
                    self._log.warning("redis_sink_cannot_write_retrying", message="redis sink cannot write, retrying", reason=verdict.text)
                self.ctx.degraded(error)
                if self.ctx.stop.wait(delay):
                    raise RetriableSinkError(
                        f"redis sink: stopping while {self._where} is unavailable "
                        f"({verdict.text}); what is not written is delivered again after a "
                        "restart",
                        pipeline=self.ctx.name,
                    ) from exc
                continue
            if self._degraded:
                self._degraded = False
                self._log.info("redis_sink_writes_again", message="redis sink writes again", attempts=attempt + 1)
                self.ctx.degraded(None)
            return result

    def _watch(self) -> None:
        """Reports a command left unanswered for DEGRADED_AFTER_S (a hung server), long
        before the command itself times out."""
        while not self._closing.wait(0.25):
            since = self._busy_since
            if since is None or self._degraded:
                continue
            waited = time.monotonic() - since
            if waited >= DEGRADED_AFTER_S:
                self._degraded = True
                self._log.warning(
                    "redis_sink_server_not_answering", message="redis sink: the server does not answer", waited_s=round(waited, 1)
                )
                self.ctx.degraded(
                    RetriableSinkError(
                        f"redis sink: {self._busy_what}: no answer from {self._where} for "
                        f"{waited:.0f}s; waiting, nothing is skipped",
                        pipeline=self.ctx.name,
                    )
                )

    # ------------------------------------------------------------------ open / close

    def open(self, resume: str | None) -> None:
        self.close()
        self._closing.clear()
        self._watchdog = threading.Thread(
            target=self._watch, name=f"redis-watch-{self.ctx.name}", daemon=True
        )
        self._watchdog.start()
        self._streams.clear()
        self._checked.clear()
        self._schemas_sent.clear()
        self._skip.clear()
        self._flushed = True

        def prepare(client: Any) -> tuple[int, str | None, list[bytes], dict[str, Any]]:
            info = client.info("persistence")
            self._max_bulk = self._read_max_bulk(client)
            count_raw, last_id = client.hmget(self.offsets_key, ["count", "last_id"])
            count = int(count_raw or 0)
            recent: list[bytes] = []
            if resume is not None and count > int(resume):
                recent = client.lrange(self.since_flush_key, -(count - int(resume)), -1)
            return count, (last_id.decode() if last_id else None), recent, info

        try:
            int(resume) if resume is not None else 0
        except ValueError:
            self._log.warning("redis_sink_ignores_a_resume_token", message="redis sink ignores a resume token it did not write", token=resume)
            resume = None
        count, last_id, recent, info = self._attempt("reading the offsets", prepare)
        self._count = count
        written_after = 0 if resume is None else count - int(resume)
        if written_after > 0:
            self._skip.extend(r.decode() for r in recent)
            if len(self._skip) != written_after:
                self._log.warning(
                    "redis_sink_the_list_of_ids", message="redis sink: the list of ids written after the checkpoint is shorter than "
                    "expected; only those are skipped",
                    expected=written_after,
                    found=len(self._skip),
                )
            self._log.info(
                "redis_sink_resumes_after_a_crash", message="redis sink resumes after a crash: skips the events it already holds",
                events=len(self._skip),
                last_id=last_id,
            )
        elif written_after < 0:
            self._log.error(
                "redis_sink_redis_holds_fewer_events", message="redis sink: Redis holds fewer events than the checkpoint covers: it lost "
                "acknowledged writes (no persistence, a restore, or a flush). Those events are "
                "not in Redis; enable AOF (appendonly yes)",
                offsets_count=count,
                checkpoint_count=resume,
            )
        if not int(info.get("aof_enabled", 0) or 0):
            self._log.warning(
                "redis_sink_no_aof", message="redis sink: the server does not persist with AOF (appendonly no): a Redis "
                "restart can lose events the checkpoint already covers. Set `appendonly yes` "
                "(CONFIG SET appendonly yes, and in redis.conf) for the delivery guarantee",
                url=self._where,
            )
        self._log.info(
            "redis_sink_open", message="redis sink open",
            offsets=self.offsets_key,
            schemas=self.schemas_key,
            count=count,
            maxlen=self.config.maxlen,
        )

    def _read_max_bulk(self, client: Any) -> int:
        """The server's proto-max-bulk-len: a larger argument makes Redis drop the connection
        (the batch would be retried forever), so :meth:`write` refuses such an event first."""
        rd = _redis()
        try:
            raw = client.config_get("proto-max-bulk-len").get("proto-max-bulk-len")
            return int(raw) if raw else DEFAULT_MAX_BULK
        except (rd.exceptions.ResponseError, ValueError) as exc:  # CONFIG refused or renamed
            self._log.info(
                "redis_sink_cannot_read_proto_max", message="redis sink cannot read proto-max-bulk-len; assuming Redis's default",
                error=redact(str(exc)),
                assumed=DEFAULT_MAX_BULK,
            )
            return DEFAULT_MAX_BULK

    def _too_large(self, e: ChangeEvent, size: int) -> FatalError:
        return FatalSinkError(
            f"redis sink: event {e.id} is {size} bytes, more than the server's "
            f"proto-max-bulk-len ({self._max_bulk} bytes), the most one XADD field may hold. "
            "It is not skipped: raise proto-max-bulk-len (CONFIG SET proto-max-bulk-len N, and "
            "in redis.conf), then restart",
            pipeline=self.ctx.name,
            position=e.id,
            kind=Kind.EVENT_TOO_LARGE,
        )

    # ------------------------------------------------------------------ cdc check

    def check(self) -> list[CDCError]:
        """The server answers and takes the login, the keys the sink uses hold nothing of
        another type, and the user may run every command the sink sends on them: each is
        queued inside a ``MULTI`` (Redis checks ACLs when it queues) that is then discarded and
        the connection dropped, so nothing runs and nothing changes."""
        tables = list(getattr(self.ctx.pipeline.source, "tables", None) or [])
        streams = [
            render_key(self.config.stream, pipeline=self.ctx.name, schema=schema, table=table)
            for schema, table in map(names.split, tables)
        ]
        client = None
        try:
            client = self._connect()
            client.ping()
            return self._wrong_types(client, streams) + self._denied(client, streams)
        except Exception as exc:  # noqa: BLE001 - classified: a problem to list
            try:
                verdict = self._classify(exc)
            except Exception:  # noqa: BLE001 - not a Redis error
                verdict = _Failed(f"{type(exc).__name__}: {redact(str(exc))}")
            if isinstance(verdict, CDCError):
                return [verdict]
            return [RetriableSinkError(
                f"redis sink: cannot reach {self._where}: {verdict.text}; check sink.url and "
                "that the server runs and accepts connections from here",
                pipeline=self.ctx.name,
                kind=Kind.SINK_UNAVAILABLE,
            )]
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing only
                    pass

    def _wrong_types(self, client: Any, streams: list[str]) -> list[CDCError]:
        wanted = {self.offsets_key: "hash", self.schemas_key: "hash", self.since_flush_key: "list"}
        wanted.update(dict.fromkeys(streams, "stream"))
        problems: list[CDCError] = []
        for key, want in wanted.items():
            raw = client.type(key)
            have = raw.decode() if isinstance(raw, bytes) else str(raw)
            if have not in (want, "none"):
                problems.append(FatalSinkError(
                    f"redis sink: the key {key} holds a {have}, where the sink keeps a {want}: "
                    "delete it (DEL) if it is not needed, or point sink.stream elsewhere",
                    pipeline=self.ctx.name,
                    kind=Kind.SINK_CONFIG,
                ))
        return problems

    def _denied(self, client: Any, streams: list[str]) -> list[CDCError]:
        """The commands the sink sends that the user may not run (ACL), found by queueing
        them in a transaction that is discarded."""
        rd = _redis()
        commands: list[tuple[str, ...]] = [
            *(("XADD", key, "*", "id", "cdc-check") for key in streams),
            ("HSET", self.offsets_key, "last_id", "x"),
            ("HMGET", self.offsets_key, "count", "last_id"),
            ("HSET", self.schemas_key, "x", "x"),
            ("HGET", self.schemas_key, "x"),
            ("HGETALL", self.schemas_key),
            ("RPUSH", self.since_flush_key, "x"),
            ("LRANGE", self.since_flush_key, "0", "-1"),
            ("DEL", self.since_flush_key),
            ("EXISTS", self.offsets_key),
            ("TYPE", self.offsets_key),
            ("INFO", "persistence"),
        ]
        denied: list[str] = []
        conn = _get_connection(client.connection_pool)
        try:
            conn.send_command("MULTI")
            try:
                conn.read_response()
            except rd.exceptions.NoPermissionError:
                denied.append("MULTI")
                commands = []  # without a transaction the commands would run: not sent
            for args in commands:
                conn.send_command(*args)
                try:
                    conn.read_response()
                except rd.exceptions.NoPermissionError:
                    denied.append(f"{args[0]} {args[1]}" if len(args) > 1 else args[0])
                except rd.exceptions.ResponseError:
                    pass  # refused for another reason: not a permission
            if commands:
                conn.send_command("DISCARD")
                conn.read_response()
        finally:
            conn.disconnect()  # whatever happened, nothing queued can run
            client.connection_pool.release(conn)
        if not denied:
            return []
        return [FatalSinkError(
            f"redis sink: the user may not run {', '.join(denied)} on {self._where}: grant "
            f"the sink's commands on its keys (e.g. `ACL SETUSER <user> ~cdc:{self.ctx.name}:* "
            "+xadd +hset +hget +hmget +hgetall +rpush +lrange +del +exists +type +multi +exec "
            "+discard +info +ping`, plus the stream keys when sink.stream is not under cdc:)",
            pipeline=self.ctx.name,
            kind=Kind.SINK_AUTH,
        )]

    def close(self) -> None:
        self._closing.set()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.join(2)
        self._drop_client()
        self._degraded = False

    # ------------------------------------------------------------------ writing

    def _stream(self, e: ChangeEvent) -> tuple[str, bytes]:
        """The stream key of the event's table (or the destination a transform chose), and
        the RESP of ``XADD key [MAXLEN ~ N] * id`` (the start of each of its XADDs)."""
        dest = e.dest
        cached = self._streams.get(e.schema if dest is None else dest)
        if cached is None:
            src = e.source
            key = dest if dest is not None else render_key(
                self.config.stream,
                pipeline=self.ctx.name,
                schema=src.get("schema", ""),
                table=src.get("table", ""),
            )
            args = [b"XADD", key.encode()]
            if self.config.maxlen is not None:
                args += [b"MAXLEN", b"~", str(self.config.maxlen).encode()]
            args += [b"*", b"id"]
            # 7 more arguments follow: the id's value, then the op, key and value fields
            head = b"*%d\r\n" % (len(args) + 7) + b"".join(map(_bulk, args))
            cached = (key, head)
            self._streams[e.schema if dest is None else dest] = cached
        return cached

    def write_schema(self, schema: SchemaVersion) -> None:
        field = schema.qualified
        if field in self._schemas_sent:
            return
        value = orjson.dumps(schema.definition)
        self._attempt(f"writing schema {field}", lambda c: c.hset(self.schemas_key, field, value))
        self._schemas_sent.add(field)

    def write(self, events: Sequence[ChangeEvent]) -> None:
        if self._skip:
            events = self._skip_held(events)
        if not events:
            return
        max_bulk = self._max_bulk
        streams = self._streams
        # the whole transaction packed here, as RESP (redis-py's per-argument packing cost
        # more than everything else the sink does; see docs/performance.md)
        parts: list[bytes] = [_MULTI]
        used: set[str] = set()
        debezium = self._debezium
        xadds = 0  # one per event, but none for an operation the Debezium format skips
        for e in events:
            if debezium is not None:  # format: debezium: the record's value and key
                m = debezium.message(e)
                if m is None:
                    continue  # an operation Debezium skips (skipped.operations)
                value, dkey = m
            else:
                value, dkey = e.json, e.key_json
            if len(value) > max_bulk:
                raise self._too_large(e, len(value))
            stream = streams.get(e.schema) if e.dest is None else None
            if stream is None:
                stream = self._stream(e)
            used.add(stream[0])
            prefix = stream[1]
            key = dkey
            event_id = e.id.encode()
            op = e.op.encode()
            key = NULL_KEY if key is None else key
            parts += (
                prefix,
                b"$%d\r\n%s\r\n$2\r\nop\r\n$%d\r\n%s\r\n$3\r\nkey\r\n$%d\r\n"
                % (len(event_id), event_id, len(op), op, len(key)),
                key,
                b"\r\n$5\r\nvalue\r\n$%d\r\n" % len(value),
                value,
                b"\r\n",
            )
            xadds += 1
        unchecked = used - self._checked
        if unchecked:
            self._check_types(sorted(unchecked))
        ids = [e.id.encode() for e in events]
        start = self._count
        new_count = start + len(events)
        reset = self._flushed
        queued = xadds + 2 + reset
        count = str(new_count).encode()
        _command(parts, b"HSET", self.offsets_key.encode(), b"last_id", ids[-1], b"count", count)
        if reset:
            _command(parts, b"DEL", self.since_flush_key.encode())
        _command(parts, b"RPUSH", self.since_flush_key.encode(), *ids)
        parts.append(_EXEC)
        payload = b"".join(parts)

        def execute(client: Any) -> None:
            # a transaction whose answer was lost may have been applied: `count` tells
            current = client.hget(self.offsets_key, "count")
            if int(current or 0) == new_count:
                return
            _transact(client, payload, queued)

        self._attempt(f"writing {len(events)} events", execute)
        self._count = new_count
        self._flushed = False

    def _check_types(self, keys: list[str]) -> None:
        """Refuse a stream key that holds another type before a batch touches it: inside
        MULTI/EXEC such an XADD would fail alone while the rest of the batch is applied."""
        types = self._attempt("checking the stream keys", lambda c: [c.type(k) for k in keys])
        for key, kind in zip(keys, types, strict=True):
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind not in ("none", "stream"):
                raise FatalSinkError(
                    f"redis sink: the key {key} holds a {kind}, not a stream; rename or delete "
                    "it, or point sink.stream elsewhere",
                    pipeline=self.ctx.name,
                    kind=Kind.SINK_REJECTED,
                )
            self._checked.add(key)

    def _skip_held(self, events: Sequence[ChangeEvent]) -> Sequence[ChangeEvent]:
        """Leave out the re-delivered events Redis already holds (see the module doc)."""
        skip = self._skip
        i = 0
        while i < len(events) and skip and events[i].id == skip[0]:
            skip.popleft()
            i += 1
        if skip and i < len(events):
            self._log.warning(
                "redis_sink_a_re_delivered_event", message="redis sink: a re-delivered event differs from what Redis holds after the "
                "checkpoint; writing from here on (duplicates are possible, nothing is lost)",
                expected=skip[0],
                got=events[i].id,
            )
            skip.clear()
        if i and not skip:
            self._log.info("redis_sink_skipped_the_events", message="redis sink skipped the events it already held", last=events[i - 1].id)
        return events[i:]

    def flush(self) -> str | None:
        """Every batch is already applied by Redis (each write is one EXEC); the token is the
        number of events written so far."""
        self._flushed = True
        return str(self._count)

    # ------------------------------------------------------------------ no state, drop

    def _read_held(self) -> dict[str, dict[str, Any]]:
        if self._held is not None:
            return self._held

        def read(client: Any) -> tuple[dict[bytes, bytes], bool]:
            return client.hgetall(self.schemas_key), bool(client.exists(self.offsets_key))

        raw, has_offsets = self._attempt("reading the schemas", read, ONE_OFF_S)
        held: dict[str, dict[str, Any]] = {}
        for k, v in raw.items():
            try:
                definition = orjson.loads(v)
            except orjson.JSONDecodeError:
                continue
            if isinstance(definition, dict) and "name" in definition and "version" in definition:
                held[k.decode("utf-8", "replace")] = definition
        if has_offsets and not held:
            held["?"] = {}
        self._held = held
        return held

    def holds_events(self) -> bool:
        return bool(self._read_held())

    def held_schemas(self) -> list[dict[str, Any]]:
        return [d for d in self._read_held().values() if d]

    def _kept_line(self, verb: str) -> str:
        return (
            f"{verb} the event streams ({self.config.stream} for {self.ctx.name}) and their "
            "entries: delete them with redis-cli (DEL) if they should go"
        )

    def _moved_keys(self) -> list[str]:
        return [self.offsets_key, self.schemas_key, self.since_flush_key]

    def describe_drop(self) -> list[str]:
        return [
            f"rename the keys {', '.join(self._moved_keys())} to <key>:dropped-<time> (kept, "
            "not deleted), so that a fresh start is allowed",
            self._kept_line("keep"),
        ]

    def drop(self) -> list[str]:
        suffix = time.strftime("dropped-%Y%m%dT%H%M%SZ", time.gmtime())

        def move(client: Any) -> list[str]:
            moved = []
            for key in self._moved_keys():
                if client.exists(key):
                    client.rename(key, f"{key}:{suffix}")
                    moved.append(f"{key} -> {key}:{suffix}")
            return moved

        moved = self._attempt("moving the offsets and schemas aside", move, ONE_OFF_S)
        self.close()
        self._held = None
        lines = [f"renamed {m}" for m in moved] or [f"no keys of {self.ctx.name} to move"]
        return [*lines, self._kept_line("kept")]
