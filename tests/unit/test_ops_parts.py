"""Pure parts of partial snapshots and replay: the condition check made before the database
sees a `--where`, and the exact text of JSON columns taken back from an archived line."""

from __future__ import annotations

import orjson
import pytest

from cdc.replay import _exact_json_columns, parse_time
from cdc.snapshot import condition_problem


@pytest.mark.parametrize(
    ("condition", "needle"),
    [
        ("created_at >= '2026-01-01'", None),
        ("note = 'a;b -- c /* d'", None),
        ("s = 'it''s'", None),
        ('"we;ird" > 1', None),
        ("", "empty"),
        ("a = 1; DELETE FROM t", "';'"),
        ("a = 1 -- rest", "'--'"),
        ("a = 1 /* x */", "'/*'"),
        ("a = 1 # x", "'#'"),
        ("a = 'open", "unclosed"),
        # PostgreSQL ends '\' at the second quote, MySQL does not: refused either way
        ("x = '\\' OR 1=1; --'", "unclosed"),
    ],
)
def test_condition_problem(condition: str, needle: str | None) -> None:
    problem = condition_problem(condition)
    if needle is None:
        assert problem is None
    else:
        assert problem is not None and needle in problem


def test_hash_is_an_operator_on_postgresql() -> None:
    assert condition_problem("doc #>> '{a,b}' = 'x'", hash_comments=False) is None
    assert condition_problem("doc #>> '{a,b}' = 'x'") is not None


def test_json_columns_keep_their_archived_text() -> None:
    doc_text = '{"a": 1.10, "b": [1, {"c": "}\\"]"}], "big": 123456789012345678901234567890}'
    line = (
        b'{"id":"pg:1","op":"u","before":{"id":1,"doc":{"x": 1.0}},'
        b'"after":{"id":1,"s":"{\\"not\\": 1.10}","doc":' + doc_text.encode() + b',"n":null}}'
    )
    doc = orjson.loads(line)
    _exact_json_columns(doc, line, frozenset({"doc", "n"}))
    assert orjson.dumps(doc["after"]["doc"]) == doc_text.encode()
    assert orjson.dumps(doc["before"]["doc"]) == b'{"x": 1.0}'
    assert doc["after"]["n"] is None and doc["after"]["s"] == '{"not": 1.10}'


def test_parse_time() -> None:
    assert parse_time("2026-11-28T13:45:01Z", "--since") == 1795873501000
    assert parse_time("2026-11-28T13:45:01", "--since") == 1795873501000  # UTC without a zone
    assert parse_time("2026-11-28T14:45:01.5+01:00", "--since") == 1795873501500
    with pytest.raises(Exception, match="ISO 8601"):
        parse_time("yesterday", "--since")
