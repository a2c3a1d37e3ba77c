"""The admin HTTP API (``api.listen``).

A small threaded HTTP server from the standard library. Health, metrics and ``/pipelines``
answer from the pipelines' in-memory status, so they never wait on a database; the snapshot
endpoints read and write snapshot records in the state store (shared by every instance), each
request on its own thread. With ``api.token`` set, every
endpoint but ``/livez`` and ``/healthz`` needs ``Authorization: Bearer <token>`` (compared in
constant time); ``public_metrics`` opens ``/metrics``.
"""

from __future__ import annotations

import base64
import hmac
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from cdc.errors import ConfigError, Refused, UnknownName
from cdc.log import redact

if TYPE_CHECKING:
    from cdc.service import Service

_PAUSE = re.compile(r"^/pipelines/([^/]+)/(pause|resume)/?$")
_SNAPSHOTS = re.compile(r"^/pipelines/([^/]+)/snapshots(?:/([^/]+))?/?$")
_EVENTS = re.compile(r"^/pipelines/([^/]+)/events/?$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class AdminAPI:
    def __init__(self, service: Service, host: str, port: int, token: str | None, public_metrics: bool) -> None:
        self.service = service
        self.token = token
        self.public_metrics = public_metrics
        handler = _make_handler(self)
        self.server = _Server((host.strip("[]"), port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="admin-api", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def authorized(self, header: str | None, *, basic: bool = False) -> bool:
        """The bearer token; with ``basic`` (the status page) also HTTP Basic with the token
        as the password, which a browser can ask its user for."""
        if not self.token:
            return True
        if not header:
            return False
        if header.startswith("Bearer "):
            return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())
        if basic and header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(decoded.partition(":")[2].encode(), self.token.encode())
        return False


def _make_handler(api: AdminAPI) -> type[BaseHTTPRequestHandler]:
    service = api.service

    class Handler(BaseHTTPRequestHandler):
        server_version = "cdc"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
            return

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, doc: Any) -> None:
            self._send(status, redact(orjson.dumps(doc).decode()).encode())

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > 1024 * 1024:
                return None
            try:
                return orjson.loads(self.rfile.read(length))
            except orjson.JSONDecodeError:
                return None

        def _guard(self, public: bool = False, basic: bool = False) -> bool:
            if public or api.authorized(self.headers.get("Authorization"), basic=basic):
                return True
            self.send_response(401)
            body = orjson.dumps({"error": "missing or wrong bearer token"})
            self.send_header("WWW-Authenticate", 'Basic realm="cdc"' if basic else 'Bearer realm="cdc"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return False

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/" and method == "GET":
                if self._guard(basic=True):
                    from cdc import status_page

                    healthy, _ = service.health()
                    page = status_page.render(service.pipelines_status(), healthy)
                    self._send(200, redact(page.decode()).encode(), "text/html; charset=utf-8")
                return
            if path == "/livez" and method == "GET":
                alive = service.alive()
                self._json(200 if alive else 503, {"status": "ok" if alive else "stalled"})
                return
            if path == "/healthz" and method == "GET":
                healthy, health = service.health()
                self._json(200 if healthy else 503, health)
                return
            if path == "/metrics" and method == "GET":
                if self._guard(public=api.public_metrics):
                    self._send(200, service.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
                return
            if path in ("/pipelines", "/pipelines/") and method == "GET":
                if self._guard():
                    self._json(200, {"pipelines": service.pipelines_status()})
                return
            m = _EVENTS.match(path)
            if m and method == "GET":
                if self._guard():
                    self._events(m.group(1))
                return
            if path in ("/reload", "/reload/") and method == "POST":
                if self._guard():
                    self._reload()
                return
            m = _PAUSE.match(path)
            if m and method == "POST":
                if not self._guard():
                    return
                name, action = m.group(1), m.group(2)
                try:
                    fn = service.pause if action == "pause" else service.resume
                    self._json(200, fn(name, self._body()))
                except UnknownName as exc:
                    self._error(404, str(exc))
                except Refused as exc:
                    self._error(400, str(exc))
                return
            m = _SNAPSHOTS.match(path)
            if m:
                if not self._guard():
                    return
                name, snapshot_id = m.group(1), m.group(2)
                status: int
                doc: Any
                try:
                    if snapshot_id is None and method == "POST":
                        created, doc = service.request_snapshot(name, self._body())
                        status = 202 if created else 200
                    elif method == "GET":
                        status, doc = 200, service.snapshots(name, snapshot_id)
                    elif snapshot_id is not None and method == "DELETE":
                        status, doc = 200, service.cancel_snapshot(name, snapshot_id)
                    else:
                        status, doc = 405, {"error": f"method not allowed: {method} {path}"}
                except UnknownName as exc:
                    status, doc = 404, {"error": str(exc)}
                except Refused as exc:
                    status, doc = 400, {"error": str(exc)}
                self._json(status, doc)
                return
            if path.startswith("/pipelines/") and method == "GET":
                if not self._guard():
                    return
                name = path[len("/pipelines/"):].strip("/")
                p = service.pipeline(name)
                if p is None:
                    self._error(404, f"no pipeline named {name!r} in this service")
                else:
                    self._json(200, p.status.as_dict())
                return
            self._error(404 if method in ("GET", "POST", "DELETE") else 405, f"no such endpoint: {method} {path}")

        def _events(self, name: str) -> None:
            """``GET /pipelines/{name}/events?after=SEQ&wait=S``: the pipeline's acknowledged
            events after SEQ (none: start at the end), long-polled (see :mod:`cdc.feed`)."""
            query = parse_qs(self.path.partition("?")[2], keep_blank_values=True)
            unknown = sorted(set(query) - {"after", "wait"})
            if unknown:
                self._error(400, f"unknown query field(s): {', '.join(unknown)} (known: after, wait)")
                return
            try:
                after = int(query["after"][-1]) if "after" in query else None
                wait = float(query["wait"][-1]) if "wait" in query else 0.0
            except ValueError:
                wait = -1.0
            if not wait >= 0.0:  # also NaN
                self._error(400, "after must be an integer and wait a number of seconds")
                return
            p = service.pipeline(name)
            if p is None:
                self._error(404, f"no pipeline named {name!r} in this service")
                return
            self._send(200, p.feed.poll(after, wait))

        def _reload(self) -> None:
            body = self._body()
            if isinstance(body, dict) and body:
                self._error(400, f"unknown field(s) for this endpoint: {', '.join(sorted(body))}")
                return
            try:
                self._json(200, service.reload("api"))
            except ConfigError as exc:
                problems = [problem.render(exc.file) for problem in exc.problems]
                self._json(400, {
                    "error": "the pipeline file is invalid; the service keeps running the "
                    "previous configuration",
                    "problems": problems,
                })
            except Refused as exc:
                self._json(400, {"error": str(exc), "problems": []})

        def do_GET(self) -> None:  # noqa: N802
            self._safely(lambda: self._route("GET"))

        def do_HEAD(self) -> None:  # noqa: N802
            self._safely(lambda: self._route("GET"))

        def do_POST(self) -> None:  # noqa: N802
            self._safely(lambda: self._route("POST"))

        def do_DELETE(self) -> None:  # noqa: N802
            self._safely(lambda: self._route("DELETE"))

        def do_PUT(self) -> None:  # noqa: N802
            self._safely(lambda: self._route("PUT"))

        def _safely(self, fn: Callable[[], None]) -> None:
            try:
                fn()
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as exc:  # never let one request kill the server
                try:
                    self._error(500, f"internal error: {type(exc).__name__}")
                except Exception:
                    pass

    return Handler
