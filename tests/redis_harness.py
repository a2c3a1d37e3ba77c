"""Real Redis servers for tests, and the Redis sink's contract-suite harness.

:class:`LocalRedis` runs Debian's ``redis-server`` (installed by scripts/setup-test-env.sh) on a
free loopback port with its data in a temp folder, AOF on (``appendonly yes``, ``appendfsync
always`` unless told otherwise), no RDB snapshots. It can be paused with SIGSTOP (a hung server:
connections stay open and nothing answers) and resumed, killed with SIGKILL and started again
on the same port with the same folder (it reloads its AOF), and it dies with the test process
(PR_SET_PDEATHSIG), so nothing is left behind.

:class:`RedisHarness` gives each test its own server and reads back what the sink wrote with a
real redis-py client: every entry of every stream of the pipeline, in each stream's order.
Like the Kafka harness, ``outage()`` reads what the server holds once nothing more arrives,
pauses the server, and ``events()``/``schemas()`` inside the block return that content.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from tests.server_process import PausedServerOutage, ServerProcess
from tests.sink_harness import SinkHarness

REDIS_SERVER = "/usr/bin/redis-server"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # noqa: BLE001 - best effort; stop() still ends it
        pass


class LocalRedis(ServerProcess):
    """One redis-server process on 127.0.0.1 with its data in ``folder``."""

    name = "redis-server"

    def __init__(
        self,
        folder: Path,
        *,
        appendonly: bool = True,
        appendfsync: str = "always",
        requirepass: str | None = None,
        proto_max_bulk_len: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``proto_max_bulk_len``: the server's limit on one argument (e.g. ``1mb``, its
        least); ``tls``: (certificate, key) PEM files: the server speaks only TLS (rediss://),
        no client certificates asked."""
        self.proto_max_bulk_len = proto_max_bulk_len
        self.tls = tls
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.requirepass = requirepass
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.paused = False
        self.log_path = folder / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{self.requirepass}@" if self.requirepass else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def _spawn(self) -> None:
        if not Path(REDIS_SERVER).exists():
            raise RuntimeError(f"{REDIS_SERVER} not found: run scripts/setup-test-env.sh")
        args = [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
            "--protected-mode",
            "no",
        ]
        if self.requirepass:
            args += ["--requirepass", self.requirepass]
        if self.proto_max_bulk_len:
            args += ["--proto-max-bulk-len", self.proto_max_bulk_len]
        if self.tls:
            cert, key = self.tls
            args[args.index("--port") + 1] = "0"
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(cert)]
            args += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
            args += ["--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def client(self) -> Any:
        import redis

        tls: dict[str, Any] = {}
        if self.tls:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls[0])}
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.requirepass, socket_timeout=10, **tls
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (
                    self.log_path.read_text(errors="replace")[-2000:]
                    if self.log_path.exists()
                    else ""
                )
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            try:
                c = self.client()
                try:
                    if c.ping():
                        return
                finally:
                    c.close()
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout}s")
            time.sleep(0.05)


# -- reading back -------------------------------------------------------------------------------


def lsn_int(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def delivery_order(event: dict[str, Any]) -> tuple[int, int]:
    tx = event.get("transaction") or {}
    return (lsn_int(event["source"].get("lsn") or "0/0"), int(tx.get("seq", -1)))


def stream_keys(client: Any, pattern: str) -> list[str]:
    """Every key of type stream matching ``pattern``."""
    return sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000, _type="stream"))


def read_stream(client: Any, key: str) -> list[dict[str, bytes]]:
    """Every entry of a stream, in order, as {field: value} (plus ``_entry``: the entry id)."""
    out: list[dict[str, bytes]] = []
    start = "-"
    while True:
        chunk = client.xrange(key, min=start, max="+", count=5000)
        if not chunk:
            return out
        for entry_id, fields in chunk:
            row = {k.decode(): v for k, v in fields.items()}
            row["_entry"] = entry_id
            out.append(row)
        start = "(" + chunk[-1][0].decode()


class RedisHarness(PausedServerOutage, SinkHarness):
    """The Redis sink on a server of its own (AOF on)."""

    name = "redis"

    def __init__(self, folder: Path, server: LocalRedis | None = None, **sink: Any) -> None:
        self.folder = folder
        self.server = server or LocalRedis(folder / "redis").start()
        self.sink = sink
        self._frozen: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None

    def sink_config(self) -> dict[str, Any]:
        return {"type": "redis", "url": self.server.url, **self.sink}

    def entries(self, pattern: str = "cdc:*") -> dict[str, list[dict[str, bytes]]]:
        """Every stream's entries (stream key -> entries in order)."""
        c = self.server.client()
        try:
            return {k: read_stream(c, k) for k in stream_keys(c, pattern)}
        finally:
            c.close()

    def streams(self) -> list[list[dict[str, Any]]]:
        """Each stream's events in entry order (duplicates included)."""
        return [[orjson.loads(e["value"]) for e in es] for es in self.entries().values()]

    def events(self) -> list[dict[str, Any]]:
        if self._frozen is not None:
            return list(self._frozen[0])
        events = [e for s in self.streams() for e in s]
        events.sort(key=delivery_order)
        return events

    def schemas(self) -> list[dict[str, Any]]:
        if self._frozen is not None:
            return list(self._frozen[1])
        c = self.server.client()
        try:
            raw: dict[bytes, bytes] = {}
            for key in c.scan_iter(match="cdc:*:schemas", _type="hash"):
                raw.update(c.hgetall(key))
        finally:
            c.close()
        return [orjson.loads(v) for v in raw.values()]

    def close(self) -> None:
        self.server.stop()
