"""Sink harnesses for the sink contract suite (tests/integration/test_sink_contract.py).

A harness knows how to configure one sink type in a pipeline file, how to read back what the
sink delivered (in delivery order, duplicates included), and how to make the sink unavailable
for a while (a real fault: a full disk, a paused broker, a receiver answering errors). Each sink
type registers one harness factory in ``HARNESSES``; the suite runs every test for each.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.helpers import read_events, read_schemas


class SinkHarness:
    name = "?"
    #: False for a sink that keeps state (tables), not events: the suite then checks its rows
    #: (``rows``) and stored position (``position``) instead of ``events``
    keeps_events = True

    def sink_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def events(self) -> list[dict[str, Any]]:
        """Every event the sink holds, in delivery order (duplicates included)."""
        raise NotImplementedError

    def schemas(self) -> list[dict[str, Any]]:
        """Every schema definition the sink holds."""
        raise NotImplementedError

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The sink cannot accept anything inside the block; it works again after it."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        pass


class FileHarness(SinkHarness):
    """The file sink on its own small tmpfs, so that a full disk is a real ENOSPC."""

    name = "file"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], check=True)
        self.mounted = True

    def sink_config(self) -> dict[str, Any]:
        return {"type": "file", "path": str(self.folder / "out")}

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.folder / "out")

    def schemas(self) -> list[dict[str, Any]]:
        return read_schemas(self.folder / "out")

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The disk is full inside the block: a filler file takes every free byte."""
        filler = self.folder / "filler"
        with open(filler, "wb") as f:
            size, chunk = 0, 1 << 26
            while chunk >= 4096:  # take every free block, even while the sink writes
                try:
                    os.posix_fallocate(f.fileno(), size, chunk)
                    size += chunk
                except OSError:
                    chunk //= 2
        try:
            yield
        finally:
            filler.unlink()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)
            self.mounted = False


#: name -> factory(tmp_path) for every sink under the contract suite
HARNESSES: dict[str, Callable[[Path], SinkHarness]] = {
    "file": lambda tmp: FileHarness(tmp / "fs"),
    "kafka": lambda tmp: __import__("tests.kafka_harness", fromlist=["KafkaHarness"]).KafkaHarness(tmp),
    "webhook": lambda tmp: __import__("tests.webhook_harness", fromlist=["WebhookHarness"]).WebhookHarness(tmp),
    "nats": lambda tmp: __import__("tests.nats_harness", fromlist=["NatsHarness"]).NatsHarness(tmp),
    "redis": lambda tmp: __import__("tests.redis_harness", fromlist=["RedisHarness"]).RedisHarness(tmp),
    "rabbitmq": lambda tmp: __import__("tests.rabbitmq_harness", fromlist=["RabbitHarness"]).RabbitHarness(tmp),
    "postgres": lambda tmp: __import__("tests.pg_sink_harness", fromlist=["PostgresSinkHarness"]).PostgresSinkHarness(tmp),
}
