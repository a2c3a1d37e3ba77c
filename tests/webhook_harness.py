"""A real local HTTP receiver for the webhook sink, and its contract-suite harness.

:class:`Receiver` is a stdlib ``ThreadingHTTPServer`` on a free loopback port, in a thread. It
records every request (arrival time, headers, body, the parsed document, the answer it gave),
verifies ``X-CDC-Signature`` when it knows the secret (a bad or missing signature is answered
401 and recorded), and can be scripted:

* ``answer_next(Answer(503), times=3)``: the next requests get these answers, in order;
* ``mode = Answer(503)``: every request gets this answer until ``mode = None``;
* ``max_events = N``: a batch of more than N events is answered 413;
* ``refuse = predicate``: a batch holding an event for which ``predicate(event)`` is true is
  answered 400 (a receiver that cannot take one payload);
* ``Answer(200, delay_s=3)``: sleep before answering (past the sink's ``timeout_s``);
* ``down()`` / ``up()``: close the listening socket and every open connection (connections
  are refused), then listen again on the same port;
* ``tls=(cert, key)``: serve https (``self_signed_certificate`` makes a pair with openssl).

Tests never mock the HTTP server: the sink under test talks to this one over TCP.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from cdc_local.postgres import free_port
from tests.sink_harness import SinkHarness


@dataclass
class Answer:
    status: int = 200
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Received:
    """One request as the receiver saw it."""

    at: float  # time.monotonic() at arrival
    headers: dict[str, str]  # lower-cased names
    body: bytes
    doc: dict[str, Any] | None  # parsed body (None if it is not JSON)
    status: int = 0  # the answer given (0 while it is being decided, e.g. a slow answer)
    signature_ok: bool | None = None  # None: no secret configured

    @property
    def events(self) -> list[dict[str, Any]]:
        return [] if self.doc is None else list(self.doc.get("events", []))

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def batch_id(self) -> str | None:
        return self.headers.get("x-cdc-batch-id")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the sink expects
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.receiver._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.receiver._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        receiver = self.server.receiver
        answer, received = receiver._handle(headers, body)
        if answer.delay_s:
            time.sleep(answer.delay_s)
        receiver._answered(received, answer.status)
        data = answer.body.encode() if isinstance(answer.body, str) else answer.body
        try:
            self.send_response(answer.status)
            for k, v in answer.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up (timeout) or we went down
        finally:
            self.server.receiver._done()


class Receiver:
    """A scriptable webhook receiver on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        secret: str | None = None,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.secret = secret
        self.tls = tls  # (certificate PEM, key PEM): serve https
        self.port = port or free_port()
        self.requests: list[Received] = []
        self.mode: Answer | None = None
        self.max_events: int | None = None
        self.refuse: Callable[[dict[str, Any]], bool] | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self._planned: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    # -- scripting --------------------------------------------------------------------------

    def answer_next(self, answer: Answer, times: int = 1) -> None:
        with self._lock:
            self._planned.extend([answer] * times)

    def up(self) -> None:
        """Listen (again) on the receiver's port."""
        if self._server is not None:
            return
        deadline = time.monotonic() + 10
        while True:
            try:
                server = _Server(("127.0.0.1", self.port), _Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.receiver = self
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening and cut every open connection: new connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def close(self) -> None:
        self.down()

    # -- what was received --------------------------------------------------------------------

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def delivered(self) -> list[Received]:
        """Requests answered with a 2xx, in arrival order."""
        return [r for r in self.snapshot() if r.ok]

    def events(self) -> list[dict[str, Any]]:
        return [e for r in self.delivered() for e in r.events]

    # -- server side ----------------------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _answered(self, received: Received, status: int) -> None:
        with self._lock:
            received.status = status

    def _handle(self, headers: dict[str, str], body: bytes) -> tuple[Answer, Received]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        received = Received(time.monotonic(), headers, body, doc)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.secret is not None:
                received.signature_ok = verify_signature(self.secret, headers, body)
            if received.signature_ok is False:
                answer = Answer(401, "bad signature")
            elif doc is None:
                answer = Answer(400, "body is not JSON")
            elif self._planned:
                answer = self._planned.popleft()
            elif self.mode is not None:
                answer = self.mode
            elif self.refuse is not None and any(map(self.refuse, received.events)):
                answer = Answer(400, "cannot take one of these events")
            elif self.max_events is not None and len(received.events) > self.max_events:
                answer = Answer(413, f"at most {self.max_events} events per request")
            else:
                answer = Answer(200, "ok")
            self.requests.append(received)  # in arrival order; the status once answered
        return answer, received


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = folder / "receiver.pem", folder / "receiver.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute HMAC-SHA256(secret, timestamp + "." + body)."""
    ts = headers.get("x-cdc-timestamp")
    sig = headers.get("x-cdc-signature")
    if not ts or not sig or not sig.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig[len("sha256=") :])


class WebhookHarness(SinkHarness):
    """The webhook sink posting to a local :class:`Receiver` (signed)."""

    name = "webhook"
    secret = "contract-secret"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.receiver = Receiver(secret=self.secret)

    def sink_config(self) -> dict[str, Any]:
        return {
            "type": "webhook",
            "url": self.receiver.url,
            "secret": self.secret,
            "batch_max": 25,
            "timeout_s": 5,
            "max_backoff_s": 0.5,
        }

    def events(self) -> list[dict[str, Any]]:
        return self.receiver.events()

    def schemas(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for r in self.receiver.delivered():
            assert r.doc is not None
            seen.update(r.doc.get("schemas", {}))
        return list(seen.values())

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The receiver answers 503 inside the block."""
        self.receiver.mode = Answer(503, "maintenance")
        try:
            yield
        finally:
            self.receiver.mode = None

    def close(self) -> None:
        self.receiver.close()
