"""`cdc version` / `cdc --version`: cdc's version, then its drivers' (contract section 1)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import cdc


@pytest.mark.parametrize("argv", [["version"], ["--version"]])
def test_version_lists_cdc_and_its_drivers(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "cdc", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"cdc {cdc.__version__}"
    found = dict(line.split(" ", 1) for line in lines)
    assert found["psycopg"] == metadata.version("psycopg")
    assert found["PyMySQL"] == metadata.version("PyMySQL")
    assert found["confluent-kafka"] == metadata.version("confluent-kafka")
    import confluent_kafka
    import psycopg

    assert found["librdkafka"] == confluent_kafka.libversion()[0]
    major = psycopg.pq.version() // 10000
    assert found["libpq"].startswith(f"{major}.")
    for name in ("httpx", "nats-py", "redis", "aiormq"):
        assert found[name] == metadata.version(name)
