"""A real RabbitMQ node for tests, and the RabbitMQ sink's contract-suite harness.

:class:`RabbitNode` runs Debian's ``rabbitmq-server`` (installed by scripts/setup-test-env.sh)
as a throwaway node, as the current user (root in CI), in a temp folder of its own: its own
node name, AMQP port and distribution port on 127.0.0.1, its own epmd (started here, on a
private port, so no stray epmd is left on the default 4369 and nothing collides with a node
apt may have set up), its own ``.erlang.cookie`` (``HOME`` is the temp folder), config file,
enabled-plugins file (none), data and log folders. It is ready when ``rabbitmqctl
await_startup`` returns. Start-up takes several seconds, so one node serves the whole test
session (:func:`shared_node`); tests isolate themselves with an exchange and queues of their
own. It is stopped with ``rabbitmqctl stop`` at exit, and its process group (beam and its
helpers) and its epmd are killed by id if anything is left; both die with the test process
(PR_SET_PDEATHSIG) when it is killed.

The node has a user ``cdc`` with a random password (``node.url()``); ``guest`` is not used.

:class:`RabbitHarness` gives each test its own exchange and a durable queue bound to it with
``#`` *before* the service starts (the sink declares the exchange again, with the same
settings), and reads back what the sink delivered by consuming that queue (messages are
taken with ``no_ack`` and kept in memory, in arrival order). ``outage()`` first reads until
nothing new arrives, then stops the RabbitMQ application (``rabbitmqctl stop_app``: every
connection is closed and the port refuses new ones) and starts it again after the block.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
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

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = "/usr/bin/epmd"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # noqa: BLE001 - best effort; stop() and atexit still end it
        pass


class RabbitNode:
    """One throwaway RabbitMQ node on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self, *, tls: tuple[Path, Path] | None = None, max_message_size: int | None = None
    ) -> None:
        """``tls``: (certificate, key) PEM files: the node also listens for amqps:// on
        :attr:`tls_port` with them (no client certificates asked). ``max_message_size``: the
        broker's limit on a message body, in bytes (``max_message_size`` in rabbitmq.conf)."""
        self.tls = tls
        self.max_message_size = max_message_size
        self.tls_port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="rabbit-"))
        self.name = f"cdct{uuid.uuid4().hex[:8]}@localhost"
        self.port = 0
        self.user = "cdc"
        self.password = secrets.token_hex(12)
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.app_stopped = False
        self.env: dict[str, str] = {}

    def url(self, vhost: str = "", *, password: str | None = None, tls: bool = False) -> str:
        pw = self.password if password is None else password
        if tls:
            return f"amqps://{self.user}:{pw}@127.0.0.1:{self.tls_port}/{vhost}"
        return f"amqp://{self.user}:{pw}@127.0.0.1:{self.port}/{vhost}"

    def _extra_config(self) -> str:
        lines = []
        if self.max_message_size is not None:
            lines.append(f"max_message_size = {self.max_message_size}")
        if self.tls is not None:
            cert, key = self.tls
            self.tls_port = free_port()
            lines += [
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {cert}",
                f"ssl_options.certfile = {cert}",
                f"ssl_options.keyfile = {key}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        return "".join(f"{line}\n" for line in lines)

    @property
    def log_file(self) -> Path:
        return self.dir / "log" / "node.log"

    def _environment(self, epmd_port: int, dist_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                "HOME": str(self.dir),
                "ERL_EPMD_PORT": str(epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",  # epmd and the distribution on loopback only
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
                "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                "RABBITMQ_LOGS": str(self.log_file),
                "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
                "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
            }
        )
        return env

    def start(self, timeout: float = 90.0) -> RabbitNode:
        cookie = self.dir / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "log").mkdir(exist_ok=True)
        last = ""
        for _ in range(3):  # another process may take a free port before the node binds it
            self.port, dist_port, epmd_port = free_port(), free_port(), free_port()
            (self.dir / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
                f"default_user = {self.user}\n"
                f"default_pass = {self.password}\n"
                "default_vhost = /\n"
                "loopback_users = none\n"
                "disk_free_limit.absolute = 50MB\n" + self._extra_config()
            )
            self.env = self._environment(epmd_port, dist_port)
            self.epmd = subprocess.Popen(
                [EPMD, "-port", str(epmd_port), "-address", "127.0.0.1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                env=self.env,
                preexec_fn=_die_with_parent,
            )
            with open(self.dir / "server.out", "ab") as out:
                self.proc = subprocess.Popen(
                    [SERVER],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    cwd=self.dir,
                    start_new_session=True,  # its own process group: killed as one
                    preexec_fn=_die_with_parent,
                )
            try:
                self.await_startup(timeout)
                return self
            except RuntimeError as exc:
                last = str(exc)
                self.stop(remove=False)  # the next attempt reuses the folder
        raise RuntimeError(f"RabbitMQ did not start: {last}")

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        result = subprocess.run(
            [CTL, "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): "
                f"{result.stdout[-1000:]}{result.stderr[-1000:]}"
            )
        return result.stdout

    def await_startup(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                out = (self.dir / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}: {out}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"RabbitMQ node {self.name} did not start within {timeout}s")
            try:
                self.ctl("await_startup", "--timeout", str(max(1, int(left))), timeout=left + 10)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(0.5)  # the Erlang node is not reachable yet

    def stop_app(self) -> None:
        """The RabbitMQ application stops: connections are closed, the port refuses new ones."""
        self.ctl("stop_app")
        self.app_stopped = True

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")
        self.app_stopped = False

    def pause(self) -> None:
        """SIGSTOP the node's processes: connections stay open and nothing answers."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, *, remove: bool = True) -> None:
        """Stop the node (and its epmd); ``remove``: delete its folder too."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            if self.paused:
                os.killpg(proc.pid, signal.SIGCONT)
                self.paused = False
            with contextlib.suppress(Exception):
                self.ctl("stop", timeout=30, check=False)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # beam's helpers, if any are left
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        epmd, self.epmd = self.epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.kill()
            epmd.wait(5)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)  # the node's data, logs and config


_shared: RabbitNode | None = None


def shared_node() -> RabbitNode:
    """The session's node, started on first use and stopped when the process exits."""
    global _shared
    if _shared is None or _shared.proc is None or _shared.proc.poll() is not None:
        _shared = RabbitNode().start()
        atexit.register(_shared.stop)
    if _shared.paused:  # a test that failed inside an outage
        _shared.resume()
    if _shared.app_stopped:
        _shared.start_app()
    return _shared


# -- talking to the node --------------------------------------------------------------------------


@dataclass
class Message:
    routing_key: str
    exchange: str
    body: bytes
    message_id: str | None
    content_type: str | None
    delivery_mode: int | None
    headers: dict[str, Any]
    type: str | None


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_channel(url: str, work: Any) -> Any:
    import aiormq

    conn = await asyncio.wait_for(aiormq.connect(url), 15)
    try:
        channel = await conn.channel()
        return await work(channel)
    finally:
        await conn.close()


def declare_queue(url: str, exchange: str, queue: str, binding: str = "#") -> None:
    """A durable topic exchange (as the sink declares it) and a durable queue bound to it."""

    async def work(ch: Any) -> None:
        await ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        await ch.queue_declare(queue, durable=True)
        await ch.queue_bind(queue, exchange, routing_key=binding)

    _run(_with_channel(url, work))


def delete_queue(url: str, queue: str) -> None:
    async def work(ch: Any) -> None:
        await ch.queue_delete(queue)

    _run(_with_channel(url, work))


def exchange_exists(url: str, exchange: str) -> bool:
    import aiormq

    async def work(ch: Any) -> bool:
        try:
            await ch.exchange_declare(exchange, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        return True

    return bool(_run(_with_channel(url, work)))


def take(url: str, queue: str) -> list[Message]:
    """Every message in ``queue`` now, taken (no_ack), in queue order."""
    from pamqp import commands

    async def work(ch: Any) -> list[Message]:
        out: list[Message] = []
        while True:
            m = await ch.basic_get(queue, no_ack=True)
            if isinstance(m.delivery, commands.Basic.GetEmpty):
                return out
            p = m.header.properties
            out.append(
                Message(
                    routing_key=m.delivery.routing_key,
                    exchange=m.delivery.exchange,
                    body=bytes(m.body),
                    message_id=p.message_id,
                    content_type=p.content_type,
                    delivery_mode=p.delivery_mode,
                    headers=dict(p.headers or {}),
                    type=p.message_type,
                )
            )

    result: list[Message] = _run(_with_channel(url, work))
    return result


class RabbitHarness(SinkHarness):
    """The RabbitMQ sink on the session's node, with an exchange and a ``#`` queue of its own."""

    name = "rabbitmq"

    def __init__(self, folder: Path, node: RabbitNode | None = None, **sink: Any) -> None:
        self.folder = folder
        self.node = node or shared_node()
        tag = uuid.uuid4().hex[:10]
        self.exchange = f"cdc-{tag}"
        self.queue = f"all-{tag}"
        self.sink = sink
        self.received: list[Message] = []
        self._frozen = False
        declare_queue(self.node.url(), self.exchange, self.queue)

    @property
    def url(self) -> str:
        return self.node.url()

    def sink_config(self) -> dict[str, Any]:
        return {"type": "rabbitmq", "url": self.url, "exchange": self.exchange, **self.sink}

    def messages(self) -> list[Message]:
        """Everything delivered to the harness's queue so far, in arrival order."""
        if not self._frozen:
            self.received.extend(take(self.url, self.queue))
        return list(self.received)

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.body) for m in self.messages() if m.type != "schema"]

    def schemas(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.body) for m in self.messages() if m.type == "schema"]

    def _settle(self, timeout: float = 30.0) -> None:
        """Read until two reads 0.3 s apart find nothing new (nothing in flight)."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            n = len(self.messages())
            if n == last:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the queue did not settle before the outage")
            last = n
            time.sleep(0.3)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The RabbitMQ application is stopped inside the block; reads return what the queue
        had delivered before it."""
        self._settle()
        self.node.stop_app()
        self._frozen = True
        try:
            yield
        finally:
            self._frozen = False
            self.node.start_app()

    def close(self) -> None:
        if self.node.paused:
            self.node.resume()
        if self.node.app_stopped:
            self.node.start_app()
        with contextlib.suppress(Exception):
            delete_queue(self.url, self.queue)
