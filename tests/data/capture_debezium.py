#!/usr/bin/env python3
"""Save real Debezium's records of the `format: debezium` comparisons (tests/data/debezium/).

The comparison tests (tests/integration/test_debezium_pg.py, test_debezium_mariadb.py) run real
Debezium 3.6 beside cdc; on a machine without Java 17 they compare cdc with these saved records
instead (CI always runs the live comparison). Run this where Java runs, after changing what the
tests write to the databases:

    .venv/bin/python tests/data/capture_debezium.py

It runs those two test modules live with ``CDC_DEBEZIUM_CAPTURE=1``, which makes their
fixtures write each run's Debezium records to tests/data/debezium/<run>.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    env = {**os.environ, "CDC_DEBEZIUM_CAPTURE": "1"}
    modules = ["tests/integration/test_debezium_pg.py", "tests/integration/test_debezium_mariadb.py"]
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", *modules], cwd=ROOT, env=env))
