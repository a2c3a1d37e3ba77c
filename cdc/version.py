"""``cdc version``: the service's version and the versions of the drivers it runs on.

Theory of operation: one ``name version`` line per component, cdc first, then Python, then
each driver in a fixed order. A driver's version comes from its installed distribution's
metadata (no import needed); the C libraries under a driver (libpq under psycopg,
librdkafka under confluent-kafka) are asked at run time, since a wheel may bundle a
different build than the system's. A component that is not installed prints
``not installed``; one whose library cannot be loaded prints ``unknown`` and why, so the
command itself never fails.
"""

from __future__ import annotations

import platform
from importlib import metadata

import cdc

#: (line name, distribution name), in the order printed
DRIVERS: tuple[tuple[str, str], ...] = (
    ("psycopg", "psycopg"),
    ("PyMySQL", "PyMySQL"),
    ("confluent-kafka", "confluent-kafka"),
    ("httpx", "httpx"),
    ("nats-py", "nats-py"),
    ("redis", "redis"),
    ("aiormq", "aiormq"),
    ("cel-expr-python", "cel-expr-python"),
    ("orjson", "orjson"),
    ("structlog", "structlog"),
    ("PyYAML", "pyyaml"),
)


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _libpq() -> str:
    try:
        import psycopg

        v = psycopg.pq.version()
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return f"unknown ({type(exc).__name__})"
    # libpq's version number: major * 10000 + minor (10 and later)
    text = f"{v // 10000}.{v % 10000}"
    return f"{text} ({psycopg.pq.__impl__})"


def _librdkafka() -> str:
    try:
        import confluent_kafka

        return str(confluent_kafka.libversion()[0])
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return f"unknown ({type(exc).__name__})"


def lines() -> list[str]:
    """The ``name version`` lines ``cdc version`` prints."""
    out = [
        f"cdc {cdc.__version__}",
        f"python {platform.python_version()} ({platform.python_implementation()})",
    ]
    for shown, dist in DRIVERS:
        version = _dist(dist)
        out.append(f"{shown} {version}")
        if dist == "psycopg" and version != "not installed":
            out.append(f"libpq {_libpq()}")
        if dist == "confluent-kafka" and version != "not installed":
            out.append(f"librdkafka {_librdkafka()}")
    return out
