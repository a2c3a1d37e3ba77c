"""The one code-generation helper (cdc._codegen): constants bound as globals, source lines in
tracebacks, dumps on request."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from cdc._codegen import DUMP_ENV, make_function, source_of


def test_generated_function_uses_its_constants_and_shows_its_source() -> None:
    fn = make_function("row", ["values"], ["return {'id': _c0(values[0]), 'v': values[1]}"], {"_c0": int}, "row public.t v1")
    assert fn(["7", "x"]) == {"id": 7, "v": "x"}
    assert source_of(fn) == "def row(values, _c0=_c0):\n    return {'id': _c0(values[0]), 'v': values[1]}\n"
    assert "row public.t v1" in fn.__code__.co_filename


def test_a_traceback_through_generated_code_shows_the_generated_line() -> None:
    fn = make_function("convert", ["v"], ["x = v + 1", "return _boom(x)"], {"_boom": lambda x: 1 / 0}, "convert t")
    with pytest.raises(ZeroDivisionError) as info:
        fn(1)
    text = "".join(traceback.format_exception(info.value))
    assert "<row" not in text and "convert t #" in text and "return _boom(x)" in text


def test_dump_writes_each_generated_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DUMP_ENV, str(tmp_path))
    make_function("f", [], ["return 1"], None, "dump me")
    (dumped,) = tmp_path.glob("*dump_me*.py")
    assert dumped.read_text() == "def f():\n    return 1\n"
