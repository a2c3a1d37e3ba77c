"""Loading and validating the pipeline file (docs/configuration.md).

Theory of operation
-------------------

1. **Read.** The file is read as bytes (at most :data:`MAX_BYTES`) and decoded (UTF-8, or
   UTF-16 with a BOM). A missing or unreadable file is a problem like any other.
2. **Compose, not construct.** PyYAML's pure-Python ``SafeLoader`` (subclassed as
   :class:`_Loader`) *composes* the document into a node graph, so every key and value keeps its
   line. While composing, each node's *expanded* size and depth (counting every alias use) are
   measured bottom-up; a document that would expand to more than :data:`MAX_NODES` values or
   nest deeper than :data:`MAX_DEPTH`, or an alias that refers to its own container, is
   refused right there. After that, walking the graph is bounded: an alias bomb is a problem,
   never a hang or a ``MemoryError``.
3. **Validate against the dataclasses.** The graph is walked along the typed model
   (:class:`cdc.config.ServiceConfig` and the ``Config`` dataclass of each source and sink
   plugin, found with :func:`cdc.registry.load` from the section's ``type``). Mappings are
   read pair by pair (duplicate keys are problems; YAML merge keys ``<<`` are honoured), and
   scalars are built with the SafeLoader's own constructors, so ``yes``, ``1_000`` or dates mean
   what YAML 1.1 says. Types are strict: a string field wants a YAML string, an integer field
   an integer, and so on, with a message that says how to fix the value.
4. **Environment substitution** happens on string scalars before the type check:
   ``${NAME}``, ``${NAME:-default}`` (default also when NAME is empty, like the shell) and
   ``$${`` for a literal ``${``. Only a string that had a substitution is converted to its
   field's type (``port: ${PORT}`` is an integer); a literal ``"5432"`` never is. With
   ``no_env`` an unset variable becomes a placeholder that satisfies its field's type, and
   the field's ``check`` is skipped.
5. **After the types**, each field's ``check`` runs, ``path`` fields are made absolute against
   the config file's folder, secret values (and DSN passwords) are collected, and the
   cross-field rules run (unique pipeline names, a token for a non-loopback API, excluded
   columns only for captured tables).

Every problem found is collected as a :class:`cdc.errors.ConfigProblem` (YAML path such as
``pipelines[1].sink.url`` and 1-based line) and all of them are raised together in one
:class:`cdc.errors.ConfigError`. No other exception leaves :func:`load_config`, whatever the
file contains.

Choices beyond the contract: a path field may start with ``~`` (the home folder); a
substituted value that is empty in an optional field (``token: ${TOKEN:-}``) means null; the
``type`` of a source or sink may use ``${VAR}`` but, with ``no_env`` and the variable unset, the
section cannot be checked and that is reported.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Union
from urllib.parse import unquote, urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cdc import registry
from cdc.config import PipelineConfig, ServiceConfig, check_debezium, is_loopback
from cdc.errors import ConfigError, ConfigProblem, FatalError
from cdc.names import normalize as table_name

__all__ = ["MISSING", "load_config", "iter_settings", "substitute"]

#: the value :func:`iter_settings` gives for a required setting
MISSING: Any = dataclasses.MISSING

#: largest file read (a pipeline file is a few kilobytes; the pure-Python parser reads about
#: 250 KB a second, so this also bounds the time spent on a hostile file)
MAX_BYTES = 1024 * 1024
#: deepest nesting allowed, aliases expanded
MAX_DEPTH = 64
#: most values (nodes) the document may expand to, aliases expanded
MAX_NODES = 200_000
#: stop collecting after this many problems
MAX_PROBLEMS = 200

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


# --------------------------------------------------------------------------------------------
# public API


def load_config(
    path: str, *, no_env: bool = False, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Read, validate and return the pipeline file at ``path``.

    Raises :class:`ConfigError` listing every problem found. ``environ`` (default
    ``os.environ``) supplies ``${VARS}``; with ``no_env`` unset variables become placeholders
    that satisfy their field's type (for ``cdc validate --no-env``).
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    file_abs = os.path.abspath(path)
    checker = _Checker(env, no_env, os.path.dirname(file_abs))
    result: ServiceConfig | None = None
    try:
        result = checker.run(path)
    except _TooManyProblems:
        pass
    except RecursionError:
        checker.problem("", None, "the file is nested too deeply to be read")
    except MemoryError:
        checker.problem("", None, "the file is too large to be read")
    except Exception as exc:  # the safety net: a bug must not escape as a traceback
        checker.problem(
            "", None, f"internal error while checking the file ({type(exc).__name__}: {exc})"
        )
    problems = checker.sorted_problems()
    if problems or result is None:
        if not problems:  # pragma: no cover - defensive
            problems = [ConfigProblem("", None, "the file is invalid")]
        raise ConfigError(path, problems)
    result.file = file_abs
    result.config_dir = os.path.dirname(file_abs)
    result.secrets = checker.secrets
    return result


def iter_settings(cls: type[Any]) -> Iterator[tuple[str, Any, Any, Mapping[str, Any]]]:
    """The settings of a config dataclass, in declaration order, for the docs generator.

    Yields ``(name, type_hint, default, metadata)``; ``default`` is :data:`MISSING` for a
    required setting and the built value for one with a ``default_factory``. Fields marked
    ``internal`` (filled by the loader) and fields not taken by ``__init__`` are skipped.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal") or not f.init:
            continue
        default: Any = MISSING
        if not isinstance(f.default, dataclasses._MISSING_TYPE):
            default = f.default
        elif not isinstance(f.default_factory, dataclasses._MISSING_TYPE):
            default = f.default_factory()
        yield f.name, hints.get(f.name, f.type), default, f.metadata


@dataclasses.dataclass
class Substitution:
    """The result of :func:`substitute` on one string."""

    text: str
    #: whether at least one ``${NAME}`` was replaced (the value may then be converted)
    substituted: bool = False
    #: whether an unset variable was left in as a placeholder (``no_env``)
    placeholder: bool = False
    names: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


_REF_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def substitute(text: str, environ: Mapping[str, str], *, no_env: bool = False) -> Substitution:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in ``text``; ``$${`` gives a literal ``${``."""
    if "${" not in text:
        return Substitution(text)
    out: list[str] = []
    result = Substitution(text)
    pos = 0
    for m in _REF_RE.finditer(text):
        out.append(text[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token == "$${":
            out.append("${")
            continue
        inner = m.group(1)
        if inner is None:
            result.errors.append("'${' is not closed by '}' (write $${ for a literal ${)")
            out.append(token)
            continue
        vm = _VAR_RE.fullmatch(inner)
        if vm is None:
            result.errors.append(
                f"{token!r} is not a variable reference: write ${{NAME}} or "
                "${NAME:-default} (or $${ for a literal ${)"
            )
            out.append(token)
            continue
        name, default = vm.group(1), vm.group(2)
        result.substituted = True
        result.names.append(name)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                out.append(default)
            elif no_env:
                result.placeholder = True
                out.append("${" + name + "}")
            else:
                result.errors.append(f"environment variable {name} is not set")
        else:
            out.append(value)
    out.append(text[pos:])
    result.text = "".join(out)
    return result


# --------------------------------------------------------------------------------------------
# reading and composing


class _Limit(Exception):
    """The document is too big, too deep or recursive."""

    def __init__(self, message: str, node_or_mark: Any) -> None:
        super().__init__(message)
        self.message = message
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        self.line: int | None = mark.line + 1 if mark is not None else None


class _TooManyProblems(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """A SafeLoader that measures the expanded size and depth of what it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.cdc_depth = 0
        self.cdc_count = 0
        #: id(node) -> (expanded node count, expanded depth); a node is in it once complete
        self.cdc_sizes: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self._peek_mark()
            node = super().compose_node(parent, index)
            if node is None or id(node) not in self.cdc_sizes:
                raise _Limit("this alias refers to a mapping or list that contains it", mark)
            return node
        self.cdc_depth += 1
        self.cdc_count += 1
        try:
            if self.cdc_count > MAX_NODES:
                raise _Limit(f"the file has more than {MAX_NODES} values", self._peek_mark())
            if self.cdc_depth > MAX_DEPTH:
                raise _Limit(
                    f"values are nested more than {MAX_DEPTH} levels deep",
                    self._peek_mark(),
                )
            node = super().compose_node(parent, index)
        finally:
            self.cdc_depth -= 1
        if node is not None:
            self._measure(node)
        return node

    def _peek_mark(self) -> Any:
        untyped: Any = self  # peek_event has no type hints in types-PyYAML
        return untyped.peek_event().start_mark

    def _measure(self, node: Node) -> None:
        if id(node) in self.cdc_sizes:
            return
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                children.append(k)
                children.append(v)
        total, depth = 1, 0
        for child in children:
            size = self.cdc_sizes.get(id(child))
            if size is None:  # pragma: no cover - caught when the alias is composed
                raise _Limit("an alias refers to a mapping or list that contains it", child)
            total += size[0]
            depth = max(depth, size[1])
        if total > MAX_NODES:
            raise _Limit(
                f"the document expands to more than {MAX_NODES} values "
                "(aliases repeating aliases?)",
                node,
            )
        if depth + 1 > MAX_DEPTH:
            raise _Limit(
                f"values are nested more than {MAX_DEPTH} levels deep (aliases expanded)", node
            )
        self.cdc_sizes[id(node)] = (total, depth + 1)


def _decode(data: bytes) -> str | ConfigProblem:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        # utf-8-sig counts positions after the byte-order mark it skipped
        start = exc.start + (3 if encoding == "utf-8-sig" and data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:start].count(b"\n") + 1
        return ConfigProblem(
            "",
            line,
            f"the file is not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text "
            f"(byte 0x{data[start]:02x} cannot be decoded)",
        )


def _yaml_problem(exc: yaml.YAMLError, text: str) -> ConfigProblem:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
        char = exc.character
        if isinstance(char, str) and len(char) == 1:
            char = ord(char)
        shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        return ConfigProblem("", line, f"character {shown} is not allowed in a YAML file")
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        parts = [p for p in (exc.context, exc.problem) if p]
        message = "; ".join(parts) or "invalid YAML"
        if exc.problem and "'\\t'" in exc.problem:
            message += " (YAML does not allow tabs for indentation; use spaces)"
        if exc.context_mark is not None and exc.problem_mark is not None and exc.context:
            if exc.context_mark.line != exc.problem_mark.line:
                message += f" (see line {exc.context_mark.line + 1})"
        return ConfigProblem("", line, f"invalid YAML: {message}")
    return ConfigProblem("", None, f"invalid YAML: {exc}")


# --------------------------------------------------------------------------------------------
# validation


class _Bad:
    """Marker for a value that failed validation (its problems are already recorded)."""


_BAD = _Bad()


@dataclasses.dataclass
class _V:
    """A validated value; ``placeholder`` when it holds (or is) an unset-variable placeholder."""

    value: Any
    placeholder: bool = False


_Result = _V | _Bad


@dataclasses.dataclass
class _Item:
    key: str
    key_line: int
    node: Node


def _line(node: Node | None) -> int | None:
    mark = getattr(node, "start_mark", None)
    return mark.line + 1 if mark is not None else None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _key_path(path: str, key: str) -> str:
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def _got(value: Any, raw: str | None) -> str:
    return _kind(value) if value is None or raw is None else f"{_kind(value)} ({raw})"


def _node_kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a value"


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is Any:
        return "a single value (string, number or boolean)"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping (key: value)"
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a) for a in arms)
        return text + (" or null" if len(arms) < len(typing.get_args(tp)) else "")
    return str(tp)


def _placeholder_for(tp: Any, text: str) -> Any:
    """A value of type ``tp`` standing for an unset variable (``no_env``)."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return False
    if tp is int:
        return 0
    if tp is float:
        return 0.0
    if origin is Literal:
        return typing.get_args(tp)[0]
    if origin is list:
        return []
    if origin is dict:
        return {}
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        return _placeholder_for(arms[0], text) if arms else None
    return text


def _dsn_passwords(value: str) -> list[str]:
    """The password parts of a connection URI or libpq key=value string."""
    found: list[str] = []
    if "://" in value:
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            found.append(password)
            decoded = unquote(password)
            if decoded != password:
                found.append(decoded)
    for m in re.finditer(r"(?:^|\s)password\s*=\s*('((?:\\.|[^'\\])*)'|\S+)", value):
        raw = m.group(2) if m.group(2) is not None else m.group(1)
        password = re.sub(r"\\(.)", r"\1", raw) if m.group(2) is not None else raw
        if password:
            found.append(password)
    for m in re.finditer(r"[?&]password=([^&#]+)", value):
        found.append(unquote(m.group(1)))
    return found


_AUTH_RE = re.compile(r"^(?:Bearer|Basic|Token)\s+(\S+)$", re.IGNORECASE)


class _Checker:
    def __init__(self, environ: Mapping[str, str], no_env: bool, config_dir: str) -> None:
        self.environ = environ
        self.no_env = no_env
        self.config_dir = config_dir
        self.problems: list[ConfigProblem] = []
        self._seen_problems: set[tuple[str, int | None, str]] = set()
        self.secrets: list[str] = []
        self.loader: _Loader | None = None
        #: line of each key read, by path
        self.lines: dict[str, int] = {}
        #: every validated field value, by path (for the cross-field rules)
        self.values: dict[str, _V] = {}
        #: paths of source/sink sections -> their type name
        self.plugin_types: dict[str, str] = {}
        self.sink_formats: dict[str, tuple[str, dict[str, Any]]] = {}
        #: the sink plugin class by pipeline sink path (for its formats and refused transforms)
        self.pipeline_count = 0
        self._hints: dict[type[Any], dict[str, Any]] = {}
        self._plugins: dict[str, list[str]] = {}

    # ---- problems

    def problem(self, path: str, line: int | None, message: str) -> None:
        key = (path, line, message)
        if key in self._seen_problems:
            return
        self._seen_problems.add(key)
        self.problems.append(ConfigProblem(path, line, message))
        if len(self.problems) >= MAX_PROBLEMS:
            raise _TooManyProblems()

    def sorted_problems(self) -> list[ConfigProblem]:
        problems = sorted(self.problems, key=lambda p: p.line or 0)
        if len(problems) >= MAX_PROBLEMS:
            problems.append(
                ConfigProblem("", None, f"too many problems; stopped after {MAX_PROBLEMS}")
            )
        return problems

    def add_secret(self, value: str) -> None:
        # A DSN's secret is its password: masking the whole DSN would hide the host and
        # database from every error message that names them.
        is_dsn = "://" in value or re.match(r"^\s*\w+\s*=", value) is not None
        candidates = _dsn_passwords(value) if is_dsn else [value]
        m = _AUTH_RE.match(value)
        if m:
            candidates.append(m.group(1))
        for c in candidates:
            if c and c not in self.secrets:
                self.secrets.append(c)

    # ---- top level

    def run(self, path: str) -> ServiceConfig | None:
        root = self._compose(path)
        if root is None:
            return None
        if isinstance(root, ScalarNode) and root.tag == _NULL_TAG:
            self.problem("", _line(root), "the file is empty; it needs at least 'pipelines:'")
            return None
        if not isinstance(root, MappingNode):
            self.problem(
                "",
                _line(root),
                f"the file must be a mapping with a 'pipelines' key, got {_node_kind(root)}",
            )
            return None
        result = self._section(ServiceConfig, root, "", _line(root) or 1)
        self._cross_checks()
        if isinstance(result, _Bad):
            return None
        config = result.value
        assert isinstance(config, ServiceConfig)
        self._resolve_paths(config, "")
        return config

    def _compose(self, path: str) -> Node | None:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.problem("", None, f"cannot read the file: {reason}")
            return None
        if len(data) > MAX_BYTES:
            self.problem("", None, f"the file is larger than {MAX_BYTES // 1024} KiB")
            return None
        text = _decode(data)
        if isinstance(text, ConfigProblem):
            self.problem(text.path, text.line, text.message)
            return None
        try:
            loader = _Loader(text)  # the reader checks the characters right away
            self.loader = loader
            node = loader.get_single_node()
        except _Limit as exc:
            self.problem("", exc.line, exc.message)
            return None
        except yaml.YAMLError as exc:
            p = _yaml_problem(exc, text)
            self.problem(p.path, p.line, p.message)
            return None
        if node is None:
            self.problem("", 1, "the file is empty; it needs at least 'pipelines:'")
        return node

    # ---- mappings

    def _items(self, node: MappingNode, path: str) -> list[_Item]:
        """The key/value pairs of a mapping, merge keys applied; reports bad and duplicate
        keys."""
        own: list[_Item] = []
        merged: list[_Item] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path))
                continue
            key_line = _line(key_node) or _line(node) or 0
            if not isinstance(key_node, ScalarNode):
                self.problem(
                    path, key_line, f"a key must be a plain string, not {_node_kind(key_node)}"
                )
                continue
            key = self._construct(key_node, path)
            if isinstance(key, _Bad):
                continue
            if not isinstance(key, str):
                self.problem(
                    _join(path, str(key_node.value)),
                    key_line,
                    f"the key {_shorten(repr(key_node.value))} is read as {_kind(key)}; keys "
                    f'must be strings (quote it: "{_shorten(str(key_node.value))}")',
                )
                continue
            if key in first_line:
                self.problem(
                    _join(path, key),
                    key_line,
                    f"duplicate key {key!r} (first at line {first_line[key]})",
                )
                continue
            first_line[key] = key_line
            own.append(_Item(key, key_line, value_node))
        for item in merged:
            if item.key not in first_line:
                first_line[item.key] = item.key_line
                own.append(item)
        return own

    def _merge_sources(self, value: Node, path: str) -> list[_Item]:
        if isinstance(value, MappingNode):
            return self._items(value, path)
        if isinstance(value, SequenceNode) and all(isinstance(v, MappingNode) for v in value.value):
            out: list[_Item] = []
            seen: set[str] = set()
            for sub in value.value:  # earlier mappings win
                for item in self._items(sub, path):
                    if item.key not in seen:
                        seen.add(item.key)
                        out.append(item)
            return out
        self.problem(
            path, _line(value), "a merge key '<<' needs a mapping or a list of mappings (aliases)"
        )
        return []

    # ---- sections (dataclasses)

    def _type_hints(self, cls: type[Any], path: str, line: int | None) -> dict[str, Any] | None:
        if cls not in self._hints:
            try:
                self._hints[cls] = typing.get_type_hints(cls)
            except Exception as exc:
                self.problem(
                    path,
                    line,
                    f"the settings of {cls.__module__}.{cls.__qualname__} cannot be read "
                    f"({type(exc).__name__}: {exc})",
                )
                return None
        return self._hints[cls]

    def _section(
        self,
        cls: type[Any],
        node: Node,
        path: str,
        anchor_line: int | None,
        skip: frozenset[str] = frozenset(),
    ) -> _Result:
        """Validate a mapping against the dataclass ``cls``; ``anchor_line`` is where a
        missing key is reported (the line of the key that holds this mapping)."""
        if not isinstance(node, MappingNode):
            self._wrong_kind(cls, node, path)
            return _BAD
        if node.tag != _MAP_TAG:
            self.problem(path, _line(node), f"unsupported YAML tag {node.tag!r} on a mapping")
            return _BAD
        hints = self._type_hints(cls, path, anchor_line)
        if hints is None:
            return _BAD
        fields = {
            f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")
        }
        values: dict[str, Any] = {}
        ok = True
        seen: set[str] = set()
        for item in self._items(node, path):
            if item.key in skip:
                continue
            field_path = _join(path, item.key)
            seen.add(item.key)
            f = fields.get(item.key)
            if f is None:
                self.problem(field_path, item.key_line, self._unknown_key(item.key, fields))
                ok = False
                continue
            self.lines[field_path] = item.key_line
            result = self._field(
                cls, f, hints.get(f.name, Any), item.node, field_path, item.key_line
            )
            if isinstance(result, _Bad):
                ok = False
            else:
                values[f.name] = result.value
        for f in fields.values():
            if f.name in seen:
                continue
            required = isinstance(f.default, dataclasses._MISSING_TYPE) and isinstance(
                f.default_factory, dataclasses._MISSING_TYPE
            )
            if required:
                self.problem(
                    _join(path, f.name), anchor_line, f"required key {f.name!r} is missing"
                )
                ok = False
        if not ok:
            return _BAD
        try:
            instance = cls(**values)
        except Exception as exc:
            self.problem(path, anchor_line, f"invalid settings: {exc}")
            return _BAD
        if isinstance(instance, PipelineConfig):
            instance.source_type = self.plugin_types.get(_join(path, "source"), "")
            instance.sink_type = self.plugin_types.get(_join(path, "sink"), "")
            instance.dead_letter_type = self.plugin_types.get(_join(path, "dead_letter"), "")
            fmt, debezium = self.sink_formats.get(_join(path, "sink"), ("cdc", {}))
            instance.sink_format, instance.debezium = fmt, debezium
            shaping = [
                next(iter(t)) for t in (instance.transforms or [])
                if isinstance(t, dict) and t and next(iter(t)) in ("unwrap", "outbox")
            ]
            if fmt == "debezium" and shaping:
                where = _join(path, "transforms")
                self.problem(where, self.lines.get(where),
                             f"the {shaping[0]} transform makes its own record shape, which "
                             "`format: debezium` cannot take (Debezium's own is the envelope); "
                             "remove one of them")
                return _BAD
            if (
                fmt == "debezium"
                and instance.source_type == "mysql"
                and debezium.get("time.precision.mode") == "adaptive"
            ):
                where = _join(_join(path, "sink"), "debezium")
                self.problem(where, self.lines.get(where),
                             "time.precision.mode: adaptive is not supported by Debezium's MySQL "
                             "connector (MySQL and MariaDB sources): use "
                             "adaptive_time_microseconds (the default) or connect")
                return _BAD
        return _V(instance)

    @staticmethod
    def _unknown_key(key: str, fields: Mapping[str, Any]) -> str:
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
        if close:
            return f"unknown key {key!r} (did you mean {close[0]!r}?)"
        valid = ", ".join(fields) or "none"
        return f"unknown key {_shorten(repr(key))} (valid keys: {valid})"

    def _field(
        self,
        cls: type[Any],
        f: dataclasses.Field[Any],
        hint: Any,
        node: Node,
        path: str,
        key_line: int,
    ) -> _Result:
        meta = f.metadata
        if cls is ServiceConfig and f.name == "pipelines" and isinstance(node, SequenceNode):
            self.pipeline_count = len(node.value)
        if cls is PipelineConfig and f.name in ("source", "sink", "dead_letter"):
            result = self._plugin("source" if f.name == "source" else "sink", node, path, key_line)
        else:
            result = self._value(hint, node, path, bool(meta.get("secret")))
        if isinstance(result, _Bad):
            return result
        value = result.value
        if cls is PipelineConfig and f.name == "transforms" and isinstance(value, list):
            for item in value:  # a mask's key is a secret: never logged or printed
                mask = item.get("mask") if isinstance(item, dict) else None
                if isinstance(mask, dict) and isinstance(mask.get("key"), str):
                    self.add_secret(mask["key"])
        if cls is ServiceConfig and f.name == "pipelines":
            if not value:
                self.problem(path, key_line, "list at least one pipeline")
                return _BAD
        if meta.get("path") and value == "" and not result.placeholder:
            self.problem(path, key_line, "must not be empty")
            return _BAD
        check = meta.get("check")
        if check is not None and value is not None and not result.placeholder:
            try:
                message = check(value)
            except Exception as exc:
                message = f"this value cannot be checked ({type(exc).__name__}: {exc})"
            if message:
                self.problem(path, key_line, str(message))
                return _BAD
        self.values[path] = result
        return result

    # ---- plugins

    def _installed(self, kind: str) -> list[str]:
        """Names of the installed plugins of ``kind`` (read once per load: it scans the
        installed packages' metadata)."""
        if kind not in self._plugins:
            try:
                self._plugins[kind] = sorted(registry.available(kind))
            except Exception:  # pragma: no cover - broken package metadata
                self._plugins[kind] = []
        return self._plugins[kind]

    def _plugin(self, kind: str, node: Node, path: str, key_line: int) -> _Result:
        if not isinstance(node, MappingNode) or node.tag != _MAP_TAG:
            got = _node_kind(node) if not isinstance(node, ScalarNode) else None
            if got is None:
                value = self._construct(node, path)
                got = "a value" if isinstance(value, _Bad) else _kind(value)
            self.problem(path, _line(node), f"expected a mapping with a 'type' key, got {got}")
            return _BAD
        type_path = _join(path, "type")
        type_item = next((i for i in self._items(node, path) if i.key == "type"), None)
        installed = self._installed(kind)
        if type_item is None:
            self.problem(
                type_path,
                key_line,
                f"required key 'type' is missing (the {kind} plugin: {', '.join(installed)})",
            )
            return _BAD
        self.lines[type_path] = type_item.key_line
        named = self._value(str, type_item.node, type_path, False)
        if isinstance(named, _Bad):
            return _BAD
        if named.placeholder:
            self.problem(
                type_path,
                type_item.key_line,
                f"the {kind} type comes from an unset variable, so this section cannot be "
                "checked; set the variable or write the type literally",
            )
            return _BAD
        name = named.value
        assert isinstance(name, str)
        if name not in installed:
            close = difflib.get_close_matches(name, installed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.problem(
                type_path,
                type_item.key_line,
                f"unknown {kind} type {name!r}{hint}; installed: {', '.join(installed) or 'none'}",
            )
            return _BAD
        try:
            plugin = registry.load(kind, name)
        except FatalError as exc:
            self.problem(type_path, type_item.key_line, exc.message)
            return _BAD
        except Exception as exc:
            self.problem(
                type_path,
                type_item.key_line,
                f"the {kind} plugin {name!r} cannot be loaded ({type(exc).__name__}: {exc})",
            )
            return _BAD
        config_cls = getattr(plugin, "Config", None)
        if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
            self.problem(
                type_path,
                type_item.key_line,
                f"the {kind} plugin {name!r} has no Config dataclass describing its settings",
            )
            return _BAD
        self.plugin_types[path] = name
        self.values[type_path] = _V(name)
        skip = frozenset({"type"})
        if kind == "sink":  # keys every sink takes (`format`, `debezium`), not the plugin's own
            skip = frozenset({"type", "format", "debezium"})
            if not self._sink_format(node, path, plugin, name):
                self._section(config_cls, node, path, key_line, skip=skip)
                return _BAD
        return self._section(config_cls, node, path, key_line, skip=skip)

    def _sink_format(self, node: MappingNode, path: str, plugin: Any = None, name: str = "") -> bool:
        """Validate a sink's ``format`` and ``debezium`` keys into ``self.sink_formats``; a
        sink class whose ``formats`` lacks the chosen one refuses it here."""
        ok = True
        fmt: Any = "cdc"
        debezium: dict[str, Any] = {}
        for item in self._items(node, path):
            if item.key not in ("format", "debezium"):
                continue
            item_path = _join(path, item.key)
            self.lines[item_path] = item.key_line
            if item.key == "format":
                result = self._value(Literal["cdc", "debezium"], item.node, item_path, False)
                if isinstance(result, _Bad):
                    ok = False
                else:
                    fmt = result.value
                continue
            result = self._value(dict[str, object], item.node, item_path, False)
            if isinstance(result, _Bad):
                ok = False
                continue
            problem = check_debezium(result.value)
            if problem:
                self.problem(item_path, item.key_line, problem)
                ok = False
            else:
                debezium = dict(result.value)
        if debezium and fmt != "debezium":
            self.problem(_join(path, "debezium"), self.lines.get(_join(path, "debezium")),
                         "the debezium block applies with `format: debezium` only")
            ok = False
        formats = getattr(plugin, "formats", ("cdc", "debezium"))
        if ok and fmt not in formats:
            self.problem(_join(path, "format"), self.lines.get(_join(path, "format")),
                         f"the {name} sink does not take `format: {fmt}` (it takes "
                         f"{', '.join(formats)})")
            ok = False
        self.sink_formats[path] = (str(fmt), debezium)
        return ok

    # ---- values

    def _construct(self, node: Node, path: str) -> Any:
        """A scalar built by the SafeLoader's constructors, or _BAD."""
        assert self.loader is not None
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.problem(path, _line(node), f"cannot read the value: {exc.problem or exc}")
        except Exception as exc:
            reason = str(exc)
            if "integer string conversion" in reason:  # Python's limit on digits (4,300)
                reason = "the number has too many digits"
            self.problem(
                path, _line(node), f"cannot read the value {_shorten(repr(node.value))}: {_shorten(reason)}"
            )
        return _BAD

    def _wrong_kind(self, tp: Any, node: Node, path: str, shown: str | None = None) -> None:
        got = shown or _node_kind(node)
        self.problem(path, _line(node), f"expected {_describe(tp)}, got {got}")

    def _value(self, tp: Any, node: Node, path: str, secret: bool) -> _Result:
        if tp is object:  # any YAML value: settings a check function looks at
            if isinstance(node, SequenceNode):
                tp = list[object]
            elif isinstance(node, MappingNode):
                tp = dict[str, object]
            else:
                tp = Any
        if isinstance(node, ScalarNode):
            return self._scalar(tp, node, path, secret)
        if _is_union(tp):
            return self._union(tp, node, path, secret)
        origin = typing.get_origin(tp)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self.problem(path, _line(node), f"unsupported YAML tag {node.tag!r} on a list")
                return _BAD
            if origin is list:
                return self._list(tp, node, path, secret)
            self._wrong_kind(tp, node, path)
            return _BAD
        if isinstance(node, MappingNode):
            if dataclasses.is_dataclass(tp) and isinstance(tp, type):
                return self._section(tp, node, path, self.lines.get(path, _line(node)))
            if origin is dict:
                return self._dict(tp, node, path, secret)
            self._wrong_kind(tp, node, path)
            return _BAD
        self.problem(path, _line(node), "unsupported YAML node")  # pragma: no cover
        return _BAD

    def _union(self, tp: Any, node: Node, path: str, secret: bool) -> _Result:
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return self._value(arms[0], node, path, secret)
        return self._first_fit(arms, lambda arm: self._value(arm, node, path, secret))

    def _list(self, tp: Any, node: SequenceNode, path: str, secret: bool) -> _Result:
        (item_tp,) = typing.get_args(tp) or (Any,)
        out: list[Any] = []
        placeholder = False
        ok = True
        for i, item in enumerate(node.value):
            result = self._value(item_tp, item, f"{path}[{i}]", secret)
            if isinstance(result, _Bad):
                ok = False
            else:
                out.append(result.value)
                placeholder = placeholder or result.placeholder
        return _V(out, placeholder) if ok else _BAD

    def _dict(self, tp: Any, node: MappingNode, path: str, secret: bool) -> _Result:
        if node.tag != _MAP_TAG:
            self.problem(path, _line(node), f"unsupported YAML tag {node.tag!r} on a mapping")
            return _BAD
        args = typing.get_args(tp)
        value_tp = args[1] if len(args) == 2 else Any
        out: dict[str, Any] = {}
        placeholder = False
        ok = True
        for item in self._items(node, path):
            item_path = _key_path(path, item.key)
            self.lines[item_path] = item.key_line
            result = self._value(value_tp, item.node, item_path, secret)
            if isinstance(result, _Bad):
                ok = False
            else:
                out[item.key] = result.value
                placeholder = placeholder or result.placeholder
        return _V(out, placeholder) if ok else _BAD

    def _scalar(self, tp: Any, node: ScalarNode, path: str, secret: bool) -> _Result:
        value = self._construct(node, path)
        if isinstance(value, _Bad):
            return _BAD
        optional = _is_union(tp) and type(None) in typing.get_args(tp)
        if value is None and (optional or tp is Any):
            return _V(None)
        if isinstance(value, str) and node.tag == _STR_TAG and "${" in value:
            sub = substitute(value, self.environ, no_env=self.no_env)
            for error in sub.errors:
                self.problem(path, _line(node), error)
            if sub.errors:
                return _BAD
            if sub.substituted:
                return self._from_env(tp, sub, node, path, secret)
            value = sub.text  # only $${ escapes
        return self._strict(tp, value, node, path, secret)

    def _first_fit(self, arms: list[Any], attempt: Callable[[Any], _Result]) -> _Result:
        """Try ``attempt`` on each type of a union; the first that fits wins, else the first
        arm's problems are reported."""
        first: list[ConfigProblem] | None = None
        for arm in arms:
            saved = (self.problems, self._seen_problems)
            self.problems, self._seen_problems = [], set()
            try:
                result = attempt(arm)
            finally:
                tried = self.problems
                self.problems, self._seen_problems = saved
            if not isinstance(result, _Bad):
                return result
            if first is None:
                first = tried
        for p in first or []:
            self.problem(p.path, p.line, p.message)
        return _BAD

    def _strict(self, tp: Any, value: Any, node: ScalarNode, path: str, secret: bool) -> _Result:
        """Type-check a scalar that was written literally (no substitution)."""
        raw: str | None
        if secret:
            raw = None  # a secret's value is never shown
        elif isinstance(value, str):
            raw = _shorten(json.dumps(value, ensure_ascii=False))
        else:
            raw = _shorten(str(node.value))
        line = _line(node)
        origin = typing.get_origin(tp)
        if _is_union(tp):
            arms = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(arms) == 1:
                return self._strict(arms[0], value, node, path, secret)
            return self._first_fit(arms, lambda arm: self._strict(arm, value, node, path, secret))
        if origin in (list, dict) or dataclasses.is_dataclass(tp):
            self._wrong_kind(tp, node, path, _kind(value))
            return _BAD
        if tp is Any:
            if isinstance(value, str) and secret:
                self.add_secret(value)
            return _V(value)
        if tp is str:
            if isinstance(value, str):
                if secret:
                    self.add_secret(value)
                return _V(value)
            if value is None:
                self.problem(path, line, "expected a string, got nothing (null)")
            elif raw is None:
                self.problem(path, line, f"expected a string, got {_kind(value)}; quote it")
            else:
                self.problem(
                    path,
                    line,
                    f'expected a string, got {_kind(value)} ({raw}); quote it: "{raw}"',
                )
            return _BAD
        if tp is bool:
            if isinstance(value, bool):
                return _V(value)
            hint = (
                "; write it without quotes"
                if isinstance(value, str) and (value.lower() in _TRUE | _FALSE)
                else ""
            )
            self.problem(path, line, f"expected true or false, got {_got(value, raw)}{hint}")
            return _BAD
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return _V(value)
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9_]+", value.strip()):
                hint = "; write it without quotes"
            elif isinstance(value, float):
                hint = "; a whole number is needed"
            self.problem(path, line, f"expected an integer, got {_got(value, raw)}{hint}")
            return _BAD
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return self._finite(float_value=value, path=path, line=line)
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = "; write it without quotes"
                except ValueError:
                    pass
            self.problem(path, line, f"expected a number, got {_got(value, raw)}{hint}")
            return _BAD
        if origin is Literal:
            allowed = typing.get_args(tp)
            for a in allowed:
                if type(a) is type(value) and a == value:
                    return _V(value)
            self.problem(
                path,
                line,
                f"must be one of {', '.join(str(a) for a in allowed)} "
                f"(got {raw if value is not None and raw is not None else _kind(value)})",
            )
            return _BAD
        self.problem(path, line, f"this setting has a type the loader does not support: {tp}")
        return _BAD

    def _finite(self, *, float_value: float, path: str, line: int | None) -> _Result:
        try:
            number = float(float_value)
        except OverflowError:
            self.problem(path, line, "the number is too large")
            return _BAD
        if not math.isfinite(number):
            self.problem(path, line, "expected a finite number")
            return _BAD
        return _V(number)

    def _from_env(
        self, tp: Any, sub: Substitution, node: ScalarNode, path: str, secret: bool
    ) -> _Result:
        """Convert a string that had ``${VAR}`` substitutions to the field's type."""
        line = _line(node)
        text = sub.text
        if sub.placeholder:
            if typing.get_origin(tp) is not dict and dataclasses.is_dataclass(tp):
                self._wrong_kind(tp, node, path, "a string")
                return _BAD
            return _V(_placeholder_for(tp, text), placeholder=True)
        names = ", ".join("${" + n + "}" for n in dict.fromkeys(sub.names))
        gives = "gives" if len(dict.fromkeys(sub.names)) == 1 else "give"
        if _is_union(tp):
            arms = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(arms) < len(typing.get_args(tp)) and text == "":
                return _V(None)
            if len(arms) == 1:
                tp = arms[0]
            else:
                return self._first_fit(
                    arms, lambda arm: self._from_env(arm, sub, node, path, secret)
                )
        origin = typing.get_origin(tp)
        if tp is str or tp is Any:
            if secret:
                self.add_secret(text)
            return _V(text)
        if tp is int:
            try:
                return _V(int(text.strip()))
            except ValueError:
                self.problem(
                    path, line, f"expected an integer, but {names} {gives} {_shorten(repr(text))}"
                )
                return _BAD
        if tp is float:
            try:
                number = float(text.strip())
            except ValueError:
                self.problem(
                    path, line, f"expected a number, but {names} {gives} {_shorten(repr(text))}"
                )
                return _BAD
            return self._finite(float_value=number, path=path, line=line)
        if tp is bool:
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return _V(True)
            if lowered in _FALSE:
                return _V(False)
            self.problem(
                path,
                line,
                f"expected true or false (or yes/no, on/off, 1/0), but {names} {gives} {_shorten(repr(text))}",
            )
            return _BAD
        if origin is Literal:
            allowed = typing.get_args(tp)
            for a in allowed:
                if str(a) == text:
                    return _V(a)
            self.problem(
                path,
                line,
                f"must be one of {', '.join(str(a) for a in allowed)}, but {names} {gives} "
                f"{_shorten(repr(text))}",
            )
            return _BAD
        if origin in (list, dict) or dataclasses.is_dataclass(tp):
            self.problem(path, line, f"expected {_describe(tp)}, got a string from {names}")
            return _BAD
        self.problem(path, line, f"this setting has a type the loader does not support: {tp}")
        return _BAD

    # ---- after the types

    def _cross_checks(self) -> None:
        names: dict[str, str] = {}
        for i in range(self.pipeline_count):
            base = f"pipelines[{i}]"
            name = self.values.get(f"{base}.name")
            if name is not None and not name.placeholder:
                if name.value in names:
                    self.problem(
                        f"{base}.name",
                        self.lines.get(f"{base}.name"),
                        f"duplicate pipeline name {name.value!r} (also {names[name.value]})",
                    )
                else:
                    names[name.value] = base
            tables = self.values.get(f"{base}.source.tables")
            exclude = self.values.get(f"{base}.columns.exclude")
            if (
                tables is not None
                and not tables.placeholder
                and isinstance(tables.value, list)
                and exclude is not None
                and isinstance(exclude.value, dict)
            ):
                listed = {table_name(t) for t in tables.value if isinstance(t, str)}
                for table in exclude.value:
                    if table_name(table) not in listed:
                        key_path = _key_path(f"{base}.columns.exclude", table)
                        self.problem(
                            key_path,
                            self.lines.get(key_path),
                            f"table {table!r} is not in this pipeline's source.tables",
                        )
            self._check_transforms(base)
        listen = self.values.get("api.listen")
        token = self.values.get("api.token")
        if listen is not None and not listen.placeholder and isinstance(listen.value, str):
            host = listen.value.rpartition(":")[0]
            has_token = token is not None and (token.placeholder or bool(token.value))
            if host and not is_loopback(host) and not has_token:
                self.problem(
                    "api.listen",
                    self.lines.get("api.listen"),
                    "listening on a non-loopback address needs api.token",
                )

    def _check_transforms(self, base: str) -> None:
        """The transforms list in depth (CEL compiled and type-checked, masks, route against
        the sink's destinations): see :func:`cdc.transforms.check`."""
        found = self.values.get(f"{base}.transforms")
        sink_type = self.plugin_types.get(f"{base}.sink")
        if found is None or not found.value or sink_type is None:
            return
        from cdc import transforms

        try:
            sink_cls = registry.load("sink", sink_type)
        except FatalError:
            return
        listed = self.values.get(f"{base}.source.tables")
        tables = None
        if listed is not None and not listed.placeholder and isinstance(listed.value, list):
            tables = {table_name(t) for t in listed.value if isinstance(t, str)}
        problems = transforms.check(
            found.value, sink_type, sink_cls, tables=tables, lenient=found.placeholder
        )
        for sub, message in problems:
            path = f"{base}.transforms{sub}"
            self.problem(path, self._transform_line(base, sub), message)

    def _transform_line(self, base: str, sub: str) -> int | None:
        """The line of ``sub`` (``[0].filter.rules[1].when``) below a pipeline's transforms:
        the deepest part of it whose key line was recorded."""
        key_path = f"{base}.transforms"
        best = self.lines.get(key_path)
        for part in re.findall(r"\[\d+\]|\[\"[^\"]*\"\]|\.[^.\[]+", sub):
            key_path += part if part.startswith("[") else _key_path("", part[1:])
            best = self.lines.get(key_path, best)
        return best

    def _resolve_paths(self, obj: Any, path: str) -> None:
        """Make every ``path`` setting absolute against the config file's folder (defaults
        included)."""
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                self._resolve_paths(item, f"{path}[{i}]")
            return
        if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
            return
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            field_path = _join(path, f.name)
            value = getattr(obj, f.name)
            if f.metadata.get("path") and isinstance(value, str) and value:
                found = self.values.get(field_path)
                if found is not None and found.placeholder:
                    continue
                expanded = os.path.expanduser(value)
                if not os.path.isabs(expanded):
                    expanded = os.path.join(self.config_dir, expanded)
                setattr(obj, f.name, os.path.normpath(expanded))
            else:
                self._resolve_paths(value, field_path)
