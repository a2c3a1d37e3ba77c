"""The core (cdc/) imports no database or broker client and no plugin: sources, sinks and
commands such as the demo are found through entry points. The PostgreSQL state store is the
one core module with a driver, and it is imported only when `state.dsn` asks for it."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import cdc

CORE = Path(cdc.__file__).parent
DRIVERS = ("psycopg", "pymysql", "pymysqlreplication", "confluent_kafka", "httpx", "nats", "redis", "pika")


def test_importing_every_core_module_loads_no_driver_and_no_plugin() -> None:
    modules = [f"cdc.{m.name}" for m in pkgutil.iter_modules([str(CORE)]) if m.name not in ("state_pg", "__main__")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    bad = sorted(m for m in loaded if m.split(".")[0] in (*DRIVERS, "sources", "sinks"))
    assert not bad, f"the core imported {bad}"


def test_only_the_service_imports_the_postgres_state_store_and_only_inside_a_function() -> None:
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.module == "cdc.state_pg":
                raise AssertionError(f"{path.name} imports cdc.state_pg at module level")
            if isinstance(node, ast.Import) and any(a.name == "cdc.state_pg" for a in node.names):
                raise AssertionError(f"{path.name} imports cdc.state_pg at module level")
