"""The error tree (cdc/errors.py): each error says its side by its class, its kind is a
:class:`Kind` (the text /healthz shows), and the code keeps it that way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cdc.errors import (
    FatalError,
    FatalSinkError,
    FatalSourceError,
    FatalStateError,
    Kind,
    ProtocolError,
    RetriableError,
    RetriableSinkError,
    RetriableSourceError,
    RetriableStateError,
    SinkError,
    SourceError,
    StateError,
)

ROOT = Path(__file__).resolve().parents[2]
CODE = [p for d in ("cdc", "cdc_local", "sources", "sinks") for p in sorted((ROOT / d).rglob("*.py"))]


@pytest.mark.parametrize(
    ("cls", "side", "retriable", "kind"),
    [
        (RetriableSourceError, "source", True, "source_unreachable"),
        (FatalSourceError, "source", False, "source_error"),
        (RetriableSinkError, "sink", True, "sink_unavailable"),
        (FatalSinkError, "sink", False, "sink_config"),
        (RetriableStateError, "state", True, "state_unreachable"),
        (FatalStateError, "state", False, "state_error"),
        (ProtocolError, "source", False, "protocol"),
    ],
)
def test_classes(cls: type, side: str, retriable: bool, kind: str) -> None:
    err = cls("x")
    assert err.side == side and err.retriable is retriable and err.kind == kind
    assert isinstance(err, RetriableError if retriable else FatalError)
    assert isinstance(err, {"source": SourceError, "sink": SinkError, "state": StateError}[side])


def test_a_kind_given_keeps_the_class_side() -> None:
    err = RetriableSinkError("full", kind=Kind.SINK_DELIVERY)
    assert err.kind == "sink_delivery" and err.side == "sink"
    # a plugin's own kind string still counts as the side its prefix names
    assert RetriableError("x", kind="sink_quota").side == "sink"
    assert FatalError("x", kind="config").side == "service"


def _calls() -> list[tuple[Path, int, str, ast.keyword]]:
    found = []
    for path in CODE:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                for kw in node.keywords:
                    if kw.arg == "kind" and node.func.id.endswith("Error"):
                        found.append((path, node.lineno, node.func.id, kw))
    return found


def test_kinds_are_members_of_the_enum() -> None:
    calls = _calls()
    assert len(calls) > 50, "the scan found too little: it no longer matches the code"
    literal = [
        f"{p.relative_to(ROOT)}:{line}"
        for p, line, _, kw in calls
        if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)
    ]
    assert not literal, f"kind given as free text (use a Kind member): {literal}"


def test_side_errors_use_the_side_classes() -> None:
    """A source, sink or state error raised as a bare RetriableError/FatalError would lose its
    side when a plugin's kind string does not name it: the class must say it."""
    wrong = []
    for p, line, func, kw in _calls():
        if func not in ("RetriableError", "FatalError"):
            continue
        value = kw.value
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "Kind":
            if Kind[value.attr].side in ("source", "sink", "state"):
                wrong.append(f"{p.relative_to(ROOT)}:{line} {func}(kind=Kind.{value.attr})")
    assert not wrong, wrong
