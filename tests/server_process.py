"""What the throwaway broker launchers of the tests share (tests/nats_harness.py,
tests/redis_harness.py): one server process on a free loopback port that can be started (with a
few tries, as another process may take the port first), paused with SIGSTOP, killed with
SIGKILL and started again on the same port and folder; and a sink harness whose outage is that
pause, reading back what the server held when it began."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from cdc_local.postgres import free_port


class ServerProcess:
    """Subclasses set ``name`` and implement :meth:`_spawn` (start ``self.proc`` on
    ``self.port``) and :meth:`wait_ready` (raise RuntimeError if it does not answer in time)."""

    name = "server"
    proc: subprocess.Popen[bytes] | None = None
    port = 0
    paused = False

    def _spawn(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Any:
        last = ""
        for _ in range(3):  # another process may take the free port first
            self.port = free_port()
            self._spawn()
            try:
                self.wait_ready(timeout)
                return self
            except RuntimeError as exc:
                last = str(exc)
                self.stop()
        raise RuntimeError(f"{self.name} did not start: {last}")

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False
        self.wait_ready(30)

    def kill9(self) -> None:
        """SIGKILL: the server dies at once (what it wrote to disk stays)."""
        assert self.proc is not None
        if self.paused:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.paused = False
        self.proc.kill()
        self.proc.wait(10)

    def restart(self, timeout: float = 30.0) -> None:
        """Start again on the same port with the same folder (after :meth:`kill9`)."""
        deadline = time.monotonic() + timeout
        while True:
            self._spawn()
            try:
                self.wait_ready(max(1.0, deadline - time.monotonic()))
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self.paused:
            os.kill(proc.pid, signal.SIGCONT)
            self.paused = False
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class PausedServerOutage:
    """A sink harness mixin: the outage pauses ``self.server`` (a :class:`ServerProcess`);
    reads inside it return what the server held when it began (``self._frozen``)."""

    server: ServerProcess
    _frozen: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None

    def events(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def schemas(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _settled(self, timeout: float = 30.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        last: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None
        while True:
            now = (self.events(), self.schemas())
            if last is not None and len(now[0]) == len(last[0]) and len(now[1]) == len(last[1]):
                return now
            if time.monotonic() > deadline:
                raise AssertionError("what the server holds did not settle before the outage")
            last = now
            time.sleep(0.3)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The server hangs (SIGSTOP) inside the block; reads return what it held then."""
        frozen = self._settled()
        self.server.pause()
        self._frozen = frozen
        try:
            yield
        finally:
            self._frozen = None
            self.server.resume()
