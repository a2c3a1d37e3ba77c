"""Real NATS servers for tests, and the NATS sink's contract-suite harness.

:class:`LocalNats` runs Debian's ``nats-server`` (installed by scripts/setup-test-env.sh) with
JetStream on (``-js -sd DIR``) on a free loopback port, optionally with a user/password or a
token. It can be paused with SIGSTOP (a hung server) and resumed, killed with SIGKILL and
started again on the same port with the same store folder (JetStream recovers its streams, and
their duplicate windows), and it dies with the test process (PR_SET_PDEATHSIG).

:class:`NatsHarness` gives each test its own server and reads back what the sink wrote with a
real nats-py client (an ephemeral pull consumer with no acks over the stream, from its first
message to its last): every message in stream order, duplicates included. Like the Kafka
harness, ``outage()`` reads what the stream holds once nothing more arrives, pauses the server,
and ``events()``/``schemas()`` inside the block return that content.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.server_process import PausedServerOutage, ServerProcess
from tests.sink_harness import SinkHarness

NATS_SERVER = "/usr/sbin/nats-server"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # noqa: BLE001 - best effort; stop() still ends it
        pass


class LocalNats(ServerProcess):
    """One nats-server process with JetStream on 127.0.0.1, its store in ``folder``."""

    name = "nats-server"

    def __init__(
        self,
        folder: Path,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        max_payload: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``max_payload``: the server's limit on a message (bytes, headers included);
        ``tls``: (certificate, key) PEM files: clients must speak TLS (no client certificates
        asked)."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.user, self.password, self.token = user, password, token
        self.max_payload, self.tls = max_payload, tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.paused = False
        self.log_path = folder / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def client_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.tls is not None:
            import ssl

            opts["tls"] = ssl.create_default_context(cafile=str(self.tls[0]))
        if self.user:
            opts["user"], opts["password"] = self.user, self.password
        if self.token:
            opts["token"] = self.token
        return opts

    def _spawn(self) -> None:
        if not Path(NATS_SERVER).exists():
            raise RuntimeError(f"{NATS_SERVER} not found: run scripts/setup-test-env.sh")
        args = [
            NATS_SERVER,
            "-js",
            "-sd",
            str(self.folder / "store"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-l",
            str(self.log_path),
        ]
        if self.max_payload is not None:
            config = self.folder / "nats.conf"
            config.write_text(f"max_payload: {self.max_payload}\n")
            args += ["-c", str(config)]
        if self.tls is not None:
            cert, key = self.tls
            args += ["--tls", "--tlscert", str(cert), "--tlskey", str(key)]
        if self.user:
            args += ["--user", self.user, "--pass", str(self.password)]
        if self.token:
            args += ["--auth", self.token]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once the server greets a client and JetStream answers."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (
                    self.log_path.read_text(errors="replace")[-2000:]
                    if self.log_path.exists()
                    else ""
                )
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"INFO") and self._jetstream_ready():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server on port {self.port} did not answer in {timeout}s")
            time.sleep(0.05)

    def _jetstream_ready(self) -> bool:
        async def check() -> bool:
            nc = await self.connect()
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:  # noqa: BLE001 - not ready yet
                return False
            finally:
                await nc.close()

        try:
            return asyncio.run(check())
        except Exception:  # noqa: BLE001
            return False

    async def connect(self) -> Any:
        import nats

        return await nats.connect(
            self.url, connect_timeout=2, allow_reconnect=False, **self.client_options()
        )


# -- reading back -------------------------------------------------------------------------------


@dataclass
class Message:
    subject: str
    seq: int
    headers: dict[str, str]
    data: bytes


async def _read(server: LocalNats, stream: str, subject: str | None) -> list[Message]:
    import nats.errors
    import nats.js.api
    import nats.js.errors

    nc = await server.connect()
    try:
        js = nc.jetstream(timeout=10)
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        last = int(info.state.last_seq)
        if info.state.messages == 0:
            return []
        config = nats.js.api.ConsumerConfig(
            ack_policy=nats.js.api.AckPolicy.NONE,
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
            inactive_threshold=30,
        )
        sub = await js.pull_subscribe(subject or ">", durable=None, stream=stream, config=config)
        out: list[Message] = []
        try:
            while True:
                try:
                    batch = await sub.fetch(2000, timeout=1)
                except nats.errors.TimeoutError:
                    return out
                for m in batch:
                    meta = m.metadata
                    out.append(
                        Message(m.subject, meta.sequence.stream, dict(m.headers or {}), m.data)
                    )
                    if meta.sequence.stream >= last or meta.num_pending == 0:
                        return out
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


def read_messages(
    server: LocalNats, stream: str = "CDC", subject: str | None = None
) -> list[Message]:
    """Every message of ``stream`` (on ``subject``, a filter, when given), in stream order."""
    return asyncio.run(_read(server, stream, subject))


def stream_info(server: LocalNats, stream: str = "CDC") -> Any:
    """The stream's info (config and state), or None when it does not exist."""
    import nats.js.errors

    async def get() -> Any:
        nc = await server.connect()
        try:
            return await nc.jetstream().stream_info(stream)
        except nats.js.errors.NotFoundError:
            return None
        finally:
            await nc.close()

    return asyncio.run(get())


class NatsHarness(PausedServerOutage, SinkHarness):
    """The NATS sink on a server of its own, default stream and subjects."""

    name = "nats"

    def __init__(self, folder: Path, server: LocalNats | None = None, **sink: Any) -> None:
        self.folder = folder
        self.server = server or LocalNats(folder / "nats").start()
        self.sink = sink
        self._frozen: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None

    @property
    def stream(self) -> str:
        return str(self.sink.get("stream", "CDC"))

    def sink_config(self) -> dict[str, Any]:
        return {"type": "nats", "url": self.server.url, **self.server.client_options(), **self.sink}

    def messages(self) -> list[Message]:
        return read_messages(self.server, self.stream)

    def events(self) -> list[dict[str, Any]]:
        if self._frozen is not None:
            return list(self._frozen[0])
        return [orjson.loads(m.data) for m in self.messages() if "cdc-op" in m.headers]

    def schemas(self) -> list[dict[str, Any]]:
        if self._frozen is not None:
            return list(self._frozen[1])
        return [orjson.loads(m.data) for m in self.messages() if "cdc-op" not in m.headers]

    def streams(self) -> list[list[dict[str, Any]]]:
        """The events of the JetStream stream, in stream order (one stream)."""
        return [self.events()]

    def close(self) -> None:
        self.server.stop()
