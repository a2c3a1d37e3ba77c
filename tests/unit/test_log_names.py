"""One log event-name style: every log call of the service names its event in snake_case (the
human sentence, where there is one, goes in ``message``), so logs can be filtered by event."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = [p for d in ("cdc", "cdc_local", "sources", "sinks") for p in sorted((ROOT / d).rglob("*.py"))]
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def test_log_event_names_are_snake_case() -> None:
    seen, wrong = 0, []
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if node.func.attr not in LEVELS or "log" not in owner_name.lower():
                continue
            if not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            event = node.args[0].value
            if isinstance(event, str):
                seen += 1
                if not NAME.match(event):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {event!r}")
    assert seen > 100, f"the scan found {seen} log calls: it no longer matches the code"
    assert not wrong, wrong
