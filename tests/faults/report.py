"""Render the fault suite's figures (``build/faults.json``) as the table in docs/reliability.md.

``python -m tests.faults.report`` rewrites the part of docs/reliability.md between the
``<!-- faults:begin -->`` and ``<!-- faults:end -->`` markers; ``--check`` only prints it.
"""

from __future__ import annotations

import sys
import time

from tests.faults.conftest import REPORT, ROOT, load_report

DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


def table() -> str:
    records = load_report()
    if not records:
        raise SystemExit(f"no figures in {REPORT}: run `make test` (or pytest tests/faults) first")
    newest = max(float(r["measured_at"]) for r in records.values())  # type: ignore[arg-type]
    lines = [
        f"Produced by `tests/faults` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(newest))}.",
        "",
        "| fault | injected | events lost | duplicates | time to recover | notes |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for r in sorted(records.values(), key=lambda r: str(r["fault"])):
        dup = "-" if r["duplicates"] is None else f"{r['duplicates']:,}"
        rec = "-" if r["recover_s"] is None else f"{r['recover_s']} s"
        lines.append(f"| {r['fault']} | {r['injected']} | {r['lost']} | {dup} | {rec} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = table()
    if "--check" in argv:
        print(text)
        return 0
    doc = DOC.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"wrote the table of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
