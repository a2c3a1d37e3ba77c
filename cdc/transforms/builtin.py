"""The built-in transforms: ``filter``, ``mask``, ``route``, ``unwrap``, ``outbox``.

Each is a small class built once from its (validated) settings, whose ``apply(event)`` returns
the event, a new event (:func:`cdc.transforms.derive`) or ``None`` (dropped). :func:`check`
validates settings from the file alone (CEL expressions compiled and type-checked, mask names,
required keys), for ``cdc validate``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from cdc.events import ChangeEvent
from cdc.transforms import TransformError, derive
from cdc.transforms.cel import Expression
from cdc.transforms.cel import check as cel_check

_TRUNCATE = re.compile(r"^truncate\((\d{1,9})\)$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: keys each built-in takes (``tables`` scopes filter, route and unwrap)
KEYS: dict[str, tuple[str, ...]] = {
    "filter": ("tables", "when"),
    "mask": ("key", "columns"),
    "route": ("tables", "rules"),
    "unwrap": ("tables",),
    "outbox": ("table", "to"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "filter": ("when",),
    "mask": ("key", "columns"),
    "route": ("rules",),
    "unwrap": (),
    "outbox": ("table",),
}


def _args(e: ChangeEvent) -> tuple[Any, ...]:
    return (e.op, e.schema.name, e.key, e.before, e.after, e.source, e.ts_ms)


class Filter:
    """Keep the events for which ``when`` is true."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.when = Expression(settings["when"])
        self._fast = self.when.fast

    def apply(self, e: ChangeEvent) -> ChangeEvent | None:
        fast = self._fast
        if fast is not None:
            try:
                keep = fast(e.op, e.schema.name, e.key, e.before, e.after, e.source, e.ts_ms)
            except Exception:
                keep = self.when(*_args(e))  # again, for the error's message
        else:
            keep = self.when(*_args(e))
        return e if keep else None


class Hmac:
    """HMAC-SHA256 with a fixed key, its two padded key blocks hashed once (RFC 2104), so each
    value costs two C-level hash copies instead of the ``hmac`` module's Python layers."""

    __slots__ = ("_inner", "_outer", "_seen")

    #: hashes kept for values seen recently (an update repeats most of its row's values)
    CACHE = 4096

    def __init__(self, key: bytes) -> None:
        self._seen: dict[bytes, str] = {}
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def hexdigest(self, data: bytes) -> str:
        seen = self._seen
        found = seen.get(data)
        if found is not None:
            return found
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        result: str = outer.hexdigest()
        if len(seen) >= self.CACHE:
            seen.clear()
        seen[data] = result
        return result


def mask_value(mask: str, value: Any, mac: Hmac) -> Any:
    """One value masked; ``mac`` is keyed with the mask's secret."""
    if value is None:
        return None
    if mask == "redact":
        return None
    if isinstance(value, orjson.Fragment):
        value = orjson.loads(orjson.dumps(value))
    if mask == "hash":
        return mac.hexdigest(orjson.dumps(value))
    m = _TRUNCATE.match(mask)
    assert m is not None
    n = int(m.group(1))
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text[:n]


class Mask:
    """Mask columns of ``key``, ``before`` and ``after``."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from cdc import names

        key = settings["key"]
        self._mac = Hmac(str(key).encode())
        self.columns: dict[str, dict[str, str]] = {
            names.normalize(t): dict(cols) for t, cols in settings["columns"].items()
        }

    def _row(self, row: dict[str, Any] | None, masks: dict[str, str]) -> dict[str, Any] | None:
        if not row:
            return row
        out: dict[str, Any] | None = None
        mac = self._mac
        for column, mask in masks.items():
            if column in row:
                if out is None:
                    out = dict(row)
                out[column] = mask_value(mask, row[column], mac)
        return row if out is None else out

    def apply(self, e: ChangeEvent) -> ChangeEvent:
        masks = self.columns.get(e.schema.name)
        if not masks:
            return e
        row = self._row
        key, before, after = row(e.key, masks), row(e.before, masks), row(e.after, masks)
        key_change = e.key_change
        if key_change is not None:
            key_change = {
                k: row(v, masks) if isinstance(v, dict) else v for k, v in key_change.items()
            }
        if type(e) is ChangeEvent:  # the common case: a plain event is cheaper to make
            return ChangeEvent(
                e.id, e.op, e.ts_ms, e.source, e.transaction, e.schema, key, before, after,
                e.unchanged, key_change, e.pos,
            )
        changes: dict[str, Any] = {
            "key": key, "before": before, "after": after, "key_change": key_change
        }
        if isinstance(e.value, dict):
            changes["value"] = row(e.value, masks)
        return derive(e, **changes)


class Route:
    """The first rule whose ``when`` is true names the event's destination."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.rules = [(Expression(r["when"]), str(r["to"])) for r in settings["rules"]]

    def apply(self, e: ChangeEvent) -> ChangeEvent:
        args = _args(e)
        for when, to in self.rules:
            if when(*args):
                return derive(e, dest=to)
        return e


class Unwrap:
    """Debezium's ExtractNewRecordState: the record is the row plus ``__`` fields."""

    def __init__(self, settings: dict[str, Any]) -> None:
        pass

    def apply(self, e: ChangeEvent) -> ChangeEvent:
        op = e.op
        if op == "d":
            row = dict(e.before or e.key or {})
        elif op == "t":
            row = {}
        else:
            row = dict(e.after or {})
        row["__op"] = op
        row["__table"] = e.schema.name
        row["__source_ts_ms"] = e.source.get("ts_ms")
        row["__id"] = e.id
        if op == "d":
            row["__deleted"] = True
        return derive(e, value=row)


class Outbox:
    """Debezium's outbox event router: inserted outbox rows become the events."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from cdc import names

        self.table = names.normalize(settings["table"])
        self.to = str(settings.get("to") or "outbox.event.{aggregatetype}")
        self.fields = _PLACEHOLDER.findall(self.to)

    def apply(self, e: ChangeEvent) -> ChangeEvent | None:
        if e.schema.name != self.table:
            return e
        if e.op != "c":
            return None  # updates, deletes, truncates, snapshot reads of the outbox: nothing
        row = e.after or {}
        for column in ("id", "aggregatetype", "aggregateid", "type", "payload", *self.fields):
            if column not in row:
                raise TransformError(f"the outbox row has no column {column!r}")
        payload = row["payload"]
        if isinstance(payload, str):
            try:
                orjson.loads(payload)
                payload = orjson.Fragment(payload)
            except orjson.JSONDecodeError:
                pass
        if payload is None:
            payload = orjson.Fragment(b"null")
        dest = _PLACEHOLDER.sub(lambda m: _text(row[m.group(1)]), self.to)
        aggregate = row["aggregateid"]
        return derive(
            e,
            value=payload,
            raw_key=None if aggregate is None else _text(aggregate).encode(),
            dest=dest,
            headers=(("id", _text(row["id"])), ("type", _text(row["type"]))),
        )


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, orjson.Fragment):
        value = orjson.loads(orjson.dumps(value))
        if isinstance(value, str):
            return value
    return orjson.dumps(value).decode()


# ---------------------------------------------------------------------------------------------
# validation from the file alone


def _when(value: Any, path: str, problems: list[tuple[str, str]], lenient: bool) -> None:
    if not isinstance(value, str):
        problems.append((path, "expected a CEL expression (a string)"))
        return
    if lenient and "${" in value:
        return  # an unset variable's placeholder (`cdc validate --no-env`)
    message = cel_check(value)
    if message:
        problems.append((path, f"CEL: {message}"))


def _table(value: str, path: str, problems: list[tuple[str, str]], tables: set[str] | None) -> None:
    from cdc import names

    problem = names.problem(value)
    if problem:
        problems.append((path, problem))
    elif tables is not None and names.normalize(value) not in tables:
        problems.append((path, f"table {value!r} is not in this pipeline's source.tables"))


def _tables(
    value: Any, path: str, problems: list[tuple[str, str]], tables: set[str] | None
) -> None:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        problems.append((path, "expected a list of tables (schema.table)"))
        return
    for t in value:
        _table(t, path, problems, tables)


def check(
    name: str,
    settings: dict[str, Any],
    *,
    tables: set[str] | None = None,
    lenient: bool = False,
) -> list[tuple[str, str]]:
    """Problems of one built-in's settings, as ``(sub-path, message)``; see
    :func:`cdc.transforms.check`."""
    problems: list[tuple[str, str]] = []
    allowed = KEYS[name]
    for key in settings:
        if key not in allowed:
            problems.append(
                (f".{key}", f"unknown key {key!r} for {name} (valid keys: {', '.join(allowed)})")
            )
    for key in REQUIRED[name]:
        if key not in settings:
            problems.append(("", f"{name} needs {key!r}"))
    if "tables" in settings and "tables" in allowed:
        _tables(settings["tables"], ".tables", problems, tables)
    if name == "filter" and "when" in settings:
        _when(settings["when"], ".when", problems, lenient)
    elif name == "route" and "rules" in settings:
        rules = settings["rules"]
        if not isinstance(rules, list) or not rules:
            problems.append((".rules", "expected a list of {when, to} rules"))
        else:
            for j, rule in enumerate(rules):
                path = f".rules[{j}]"
                if not isinstance(rule, dict) or set(rule) != {"when", "to"}:
                    problems.append((path, "each rule is {when: CEL, to: destination}"))
                    continue
                _when(rule["when"], f"{path}.when", problems, lenient)
                if not isinstance(rule["to"], str) or not rule["to"]:
                    problems.append((f"{path}.to", "expected a destination name"))
    elif name == "mask":
        secret = settings.get("key")
        if "key" in settings and (not isinstance(secret, str) or not secret):
            problems.append((".key", "the mask's secret key must be a non-empty string"))
        columns = settings.get("columns")
        if "columns" in settings:
            if not isinstance(columns, dict) or not columns:
                problems.append((".columns", "expected {table: {column: mask}}"))
            else:
                for table, cols in columns.items():
                    path = f".columns[{orjson.dumps(table).decode()}]"
                    _table(table, path, problems, tables)
                    if not isinstance(cols, dict) or not cols:
                        problems.append((path, "expected {column: mask}"))
                        continue
                    for column, mask in cols.items():
                        if mask not in ("hash", "redact") and not (
                            isinstance(mask, str) and _TRUNCATE.match(mask)
                        ):
                            problems.append(
                                (f"{path}.{column}",
                                 f"unknown mask {mask!r}; masks: hash, redact, truncate(n)")
                            )
    elif name == "outbox":
        if "table" in settings:

            table = settings["table"]
            if isinstance(table, str):
                _table(table, ".table", problems, tables)
            else:
                problems.append((".table", "expected a table name"))
        to = settings.get("to")
        if to is not None and not isinstance(to, str):
            problems.append((".to", "expected a destination template"))
    return problems
