"""The fault-injection suite's ledger: what each test injected and what it measured.

Every test in ``tests/faults`` records its figures with the ``ledger`` fixture::

    ledger.record("PostgreSQL kill -9 loop, file sink", injected=10, lost=0, duplicates=37,
                  recover_s=1.9, note="writer on two tables, 12,400 changes")

At the end of the session the records are written to ``build/faults.json`` (merged with the
records already there, by fault name, so running one test updates its own rows), and
``python -m tests.faults.report`` renders them as the table of ``docs/reliability.md``.
``lost`` is asserted to be 0 by the tests themselves; the ledger only reports.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT = Path(os.environ.get("CDC_FAULTS_REPORT", ROOT / "build" / "faults.json"))


@dataclass
class FaultRecord:
    fault: str
    injected: int
    lost: int
    duplicates: int | None = None
    recover_s: float | None = None
    note: str = ""
    measured_at: float = field(default_factory=time.time)


class Ledger:
    def __init__(self) -> None:
        self.records: list[FaultRecord] = []

    def record(
        self,
        fault: str,
        *,
        injected: int,
        lost: int,
        duplicates: int | None = None,
        recover_s: float | None = None,
        note: str = "",
    ) -> FaultRecord:
        rec = FaultRecord(fault, injected, lost, duplicates, None if recover_s is None else round(recover_s, 2), note)
        self.records.append(rec)
        return rec


def load_report(path: Path = REPORT) -> dict[str, dict[str, object]]:
    if not path.exists():
        return {}
    return {r["fault"]: r for r in orjson.loads(path.read_bytes())}


@pytest.fixture(scope="session")
def ledger() -> Iterator[Ledger]:
    book = Ledger()
    yield book
    if not book.records:
        return
    merged = load_report()
    for rec in book.records:
        merged[rec.fault] = asdict(rec)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_bytes(orjson.dumps(sorted(merged.values(), key=lambda r: str(r["fault"])), option=orjson.OPT_INDENT_2))
