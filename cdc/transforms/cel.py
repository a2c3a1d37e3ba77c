"""CEL (Common Expression Language) expressions over change events.

Theory of operation. Every expression is compiled and type-checked by CEL's reference C++
implementation (the ``cel-expr-python`` wheel, Google's own bindings) against the declared
variables below, so a syntax error, an unknown variable or a type error is found when the file
is validated. The choice and the measurements are in docs/transforms.md.

Evaluating through the C++ library costs several microseconds per event (a Python dict crossing
into C++ values each time), which is more than the rest of the pipeline spends on an event. So
an expression in the common subset (literals, the event variables, field selection, ``has()``,
``== != < <= > >=``, ``in`` a literal list, ``! && ||`` and parentheses) is also translated into
one Python function by :func:`_translate`; that function keeps CEL's semantics for JSON data
(errors are raised and ``||``/``&&`` absorb an error when the other side decides, a field of a
null map is an error, ``true != 1``). Anything outside the subset is evaluated by the C++
library. tests/unit/test_transforms_cel.py checks both paths give the same answers.

Event variables: ``op``, ``table`` (``"public.orders"``) and ``ts_ms`` are typed; ``key``,
``before`` and ``after`` are ``dyn`` (a map or ``null``); ``source`` is a map.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

#: the variables an expression may use, in the order the translated function takes them
VARIABLES = ("op", "table", "key", "before", "after", "source", "ts_ms")


class CelCompileError(Exception):
    """The expression cannot be compiled: syntax, unknown variable or type error."""


class CelRuntimeError(Exception):
    """The expression failed on one event (e.g. a field of a null map). The message names
    fields and types, never values."""


_env: Any = None


def _cel_env() -> Any:
    global _env
    if _env is None:
        from cel_expr_python import cel  # type: ignore[import-untyped]

        dyn = cel.Type.DYN
        _env = cel.NewEnv(
            variables={
                "op": cel.Type.STRING,
                "table": cel.Type.STRING,
                "key": dyn,
                "before": dyn,
                "after": dyn,
                "source": cel.Type.Map(cel.Type.STRING, dyn),
                "ts_ms": cel.Type.INT,
            }
        )
    return _env


_CEL_PREFIX = re.compile(r"^(?:[A-Z_]+: )?(?:ERROR: )?")


def _clean_compile_message(exc: Exception) -> str:
    text = str(exc).strip()
    text = re.sub(r"\s*\[INVALID_ARGUMENT\]\s*$", "", text)
    text = _CEL_PREFIX.sub("", text)
    first = text.splitlines()[0] if text else "invalid expression"
    first = first.replace("<input>:", "at ")
    first = first.replace(" (in container '')", "").replace("\\u003F", "?")
    # keep the ANTLR expectation lists short
    if len(first) > 160:
        first = first[:157] + "..."
    return first


class Expression:
    """A compiled, type-checked CEL expression that yields a bool (``when``)."""

    __slots__ = ("text", "fast", "_program")

    def __init__(self, text: str) -> None:
        self.text = text
        env = _cel_env()
        try:
            program = env.compile(text)
        except Exception as exc:
            raise CelCompileError(_clean_compile_message(exc)) from None
        rtype = program.return_type().name()
        if rtype not in ("bool", "BOOL", "dyn", "DYN"):
            raise CelCompileError(f"the expression must be true or false, it gives {rtype.lower()}")
        self._program = program
        #: the translated Python function, or None when only the C++ library evaluates it
        self.fast: Callable[..., bool] | None = _translate(text)

    def __call__(
        self,
        op: str,
        table: str,
        key: Any,
        before: Any,
        after: Any,
        source: Any,
        ts_ms: int,
    ) -> bool:
        """True or False for one event; raises :class:`CelRuntimeError`."""
        fast = self.fast
        if fast is not None:
            try:
                return fast(op, table, key, before, after, source, ts_ms)
            except CelRuntimeError:
                raise
            except Exception as exc:
                raise CelRuntimeError(_describe(exc)) from None
        return self.slow(op, table, key, before, after, source, ts_ms)

    def slow(
        self,
        op: str,
        table: str,
        key: Any,
        before: Any,
        after: Any,
        source: Any,
        ts_ms: int,
    ) -> bool:
        """Evaluate with the C++ library (also used by tests to compare the two paths)."""
        data = {
            "op": op,
            "table": table,
            "key": _plain(key),
            "before": _plain(before),
            "after": _plain(after),
            "source": _plain(source),
            "ts_ms": ts_ms,
        }
        try:
            result = self._program.eval(data=data)
        except Exception as exc:
            raise CelRuntimeError(_safe(str(exc))) from None
        value = result.value()
        kind = result.type().name().lower()
        if kind == "error":
            raise CelRuntimeError(_safe(str(value)))
        if not isinstance(value, bool):
            raise CelRuntimeError(f"the expression gave {kind}, not a bool")
        return value


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return "no such key in map: " + _safe(repr(exc.args[0]) if exc.args else "?")
    if isinstance(exc, TypeError):
        return "no matching overload (operand types do not fit)"
    return _safe(f"{type(exc).__name__}")


_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,62}$")


def _safe(message: str) -> str:
    """An error message without values: quoted text that is not a plain name is hidden."""

    def hide(m: re.Match[str]) -> str:
        inner = m.group(1) if m.group(1) is not None else m.group(2)
        return m.group(0) if _IDENT.match(inner or "") else '"…"'

    return _QUOTED.sub(hide, message)[:300]


def _plain(value: Any) -> Any:
    """JSON columns arrive as orjson.Fragment (their text); CEL needs the value."""
    if isinstance(value, dict):
        if any(isinstance(v, (orjson.Fragment, dict, list)) for v in value.values()):
            return {k: _plain(v) for k, v in value.items()}
        return value
    if isinstance(value, orjson.Fragment):
        return orjson.loads(orjson.dumps(value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# the fast path: a subset of CEL translated into one Python function


class _Unsupported(Exception):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)(?![\w.])
    | (?P<str>"(?:[^"\\\n]|\\["\\'nt])*"|'(?:[^'\\\n]|\\["\\'nt])*')
    | (?P<op>\|\||&&|==|!=|<=|>=|[<>!()\[\],.])
    | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)

_RESERVED = {"in", "true", "false", "null"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _Unsupported(text[pos:])
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    out.append(("end", ""))
    return out


class _Node:
    """A translated sub-expression: Python source, whether it may raise, whether it is
    certainly a bool, and its literal value (for literals)."""

    __slots__ = ("src", "raises", "is_bool", "literal", "is_literal")

    def __init__(
        self, src: str, raises: bool, is_bool: bool, literal: Any = None, is_literal: bool = False
    ) -> None:
        self.src, self.raises, self.is_bool = src, raises, is_bool
        self.literal, self.is_literal = literal, is_literal


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.consts: list[Any] = []

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i]

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.toks[self.i]
        if value is not None and tok[1] != value:
            raise _Unsupported(value)
        self.i += 1
        return tok

    def const(self, value: Any) -> str:
        self.consts.append(value)
        return f"_k[{len(self.consts) - 1}]"

    def parse(self) -> _Node:
        node = self.or_()
        if self.peek()[0] != "end":
            raise _Unsupported("trailing")
        return node

    def or_(self) -> _Node:
        node = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            node = _logic("or", node, self.and_())
        return node

    def and_(self) -> _Node:
        node = self.rel()
        while self.peek() == ("op", "&&"):
            self.take()
            node = _logic("and", node, self.rel())
        return node

    def rel(self) -> _Node:
        left = self.unary()
        kind, value = self.peek()
        if (kind == "op" and value in ("==", "!=", "<", "<=", ">", ">=")) or (
            kind == "id" and value == "in"
        ):
            self.take()
            if value == "in":
                return self.membership(left)
            right = self.unary()
            return _compare(value, left, right)
        return left

    def membership(self, left: _Node) -> _Node:
        self.take("[")
        items: list[Any] = []
        while self.peek() != ("op", "]"):
            node = self.unary()
            if not node.is_literal or node.literal is None or isinstance(node.literal, bool):
                raise _Unsupported("in: literal strings and numbers only")
            items.append(node.literal)
            if self.peek() == ("op", ","):
                self.take()
            elif self.peek() != ("op", "]"):
                raise _Unsupported("in")
        self.take("]")
        if all(isinstance(x, str) for x in items):
            # a string is in a list of strings; anything else is in it only if equal, i.e. never
            const = self.const(frozenset(items))
            if left.src in VARIABLES[:2]:  # op, table: always strings
                return _Node(f"({left.src} in {const})", left.raises, True)
            return _Node(f"_in_str({left.src}, {const})", left.raises, True)
        return _Node(f"_in({left.src}, {self.const(tuple(items))})", left.raises, True)

    def unary(self) -> _Node:
        if self.peek() == ("op", "!"):
            self.take()
            inner = self.unary()
            return _Node(f"(not {_as_bool(inner)})", inner.raises, True)
        return self.primary()

    def primary(self) -> _Node:
        kind, value = self.take()
        node: _Node
        if kind == "num":
            literal: Any = float(value) if any(c in value for c in ".eE") else int(value)
            node = _Node(repr(literal), False, False, literal, True)
        elif kind == "str":
            literal = _unquote(value)
            node = _Node(self.const(literal), False, False, literal, True)
        elif kind == "op" and value == "(":
            node = self.or_()
            self.take(")")
            return node
        elif kind == "id" and value in ("true", "false"):
            node = _Node(str(value == "true"), False, True, value == "true", True)
        elif kind == "id" and value == "null":
            node = _Node("None", False, False, None, True)
        elif kind == "id" and value == "has" and self.peek() == ("op", "("):
            self.take("(")
            target = self.primary_select()
            self.take(")")
            if not target[1]:
                raise _Unsupported("has() needs a field selection")
            base, fields = target
            obj = base
            for f in fields[:-1]:
                obj = f"_sel({obj}, {self.const(f)})"
            node = _Node(f"_has({obj}, {self.const(fields[-1])})", True, True)
            return node
        elif kind == "id" and value in VARIABLES:
            self.i -= 1
            base, fields = self.primary_select()
            src = base
            for f in fields:
                src = f"_sel({src}, {self.const(f)})"
            return _Node(src, bool(fields), False)
        else:
            raise _Unsupported(value)
        return node

    def primary_select(self) -> tuple[str, list[str]]:
        kind, value = self.take()
        if kind != "id" or value not in VARIABLES:
            raise _Unsupported(value)
        fields: list[str] = []
        while self.peek() == ("op", "."):
            self.take()
            kind, name = self.take()
            if kind != "id" or name in _RESERVED:
                raise _Unsupported(name)
            fields.append(name)
        return value, fields


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(
        r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body
    )


def _as_bool(node: _Node) -> str:
    return node.src if node.is_bool else f"_bool({node.src})"


def _logic(kind: str, left: _Node, right: _Node) -> _Node:
    a, b = _as_bool(left), _as_bool(right)
    raises = left.raises or right.raises or not left.is_bool or not right.is_bool
    if not left.raises and left.is_bool:
        # the left side cannot fail: Python's short-circuit is CEL's
        return _Node(f"({a} {kind} {b})", raises, True)
    return _Node(f"_{kind}(lambda: {a}, lambda: {b})", raises, True)


def _compare(op: str, left: _Node, right: _Node) -> _Node:
    raises = left.raises or right.raises
    if op in ("==", "!="):
        lit = right if right.is_literal else left if left.is_literal else None
        other = left if lit is right else right
        if lit is not None and (lit.literal is None or isinstance(lit.literal, str)):
            # strings and null compare exactly as in Python
            py = ("is" if op == "==" else "is not") if lit.literal is None else op
            return _Node(f"({other.src} {py} {lit.src})", raises, True)
        src = f"_eq({left.src}, {right.src})"
        return _Node(src if op == "==" else f"(not {src})", raises, True)
    # ordering: numbers with numbers, strings with strings; anything else is an error
    return _Node(f"_ord({left.src}, {right.src}, {op!r})", True, True)


def _sel(obj: Any, name: str) -> Any:
    if type(obj) is not dict:
        if isinstance(obj, orjson.Fragment):
            obj = orjson.loads(orjson.dumps(obj))
            if type(obj) is dict:
                return _sel(obj, name)
        if obj is None:
            raise CelRuntimeError(f"field {name!r} of a null value (guard with op or has())")
        raise CelRuntimeError(f"field {name!r} of a value that is not a map")
    try:
        value = obj[name]
    except KeyError:
        raise CelRuntimeError(f"no such key in map: {name!r}") from None
    if type(value) is orjson.Fragment:
        return orjson.loads(orjson.dumps(value))
    return value


def _has(obj: Any, name: str) -> bool:
    if isinstance(obj, orjson.Fragment):
        obj = orjson.loads(orjson.dumps(obj))
    if type(obj) is not dict:
        raise CelRuntimeError(f"has({name}) on a value that is not a map")
    return name in obj


def _bool(value: Any) -> bool:
    if value is True or value is False:
        return bool(value)
    raise CelRuntimeError("a condition is not a bool")


def _eq(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if (ta in (int, float)) != (tb in (int, float)):
        return False
    if ta is dict or ta is list:
        return _deep_eq(a, b)
    return bool(a == b)


def _deep_eq(a: Any, b: Any) -> bool:
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    return _eq(a, b)


def _in_str(value: Any, items: frozenset[str]) -> bool:
    return type(value) is str and value in items


def _in(value: Any, items: tuple[Any, ...]) -> bool:
    return any(_eq(value, item) for item in items)


_NUM = (int, float)


def _ord(a: Any, b: Any, op: str) -> bool:
    ta, tb = type(a), type(b)
    if not ((ta in _NUM and tb in _NUM) or (ta is tb and ta in (str, bool))):
        raise CelRuntimeError("no matching overload for an ordering of these types")
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _or(a: Callable[[], bool], b: Callable[[], bool]) -> bool:
    try:
        left = a()
    except Exception:
        if b():
            return True
        raise
    return True if left else b()


def _and(a: Callable[[], bool], b: Callable[[], bool]) -> bool:
    try:
        left = a()
    except Exception:
        if not b():
            return False
        raise
    return b() if left else False


def _translate(text: str) -> Callable[..., bool] | None:
    """The expression as one Python function of the event variables, or None when it uses
    more than the subset."""
    try:
        parser = _Parser(text)
        node = parser.parse()
    except (_Unsupported, RecursionError):
        return None
    body = _as_bool(node)
    src = f"def _f({', '.join(VARIABLES)}):\n    return {body}\n"
    scope: dict[str, Any] = {
        "_k": parser.consts,
        "_sel": _sel,
        "_has": _has,
        "_bool": _bool,
        "_eq": _eq,
        "_in": _in,
        "_in_str": _in_str,
        "_ord": _ord,
        "_or": _or,
        "_and": _and,
    }
    exec(compile(src, "<cel>", "exec"), scope)  # noqa: S102 - our own generated code
    fn: Callable[..., bool] = scope["_f"]
    return fn


def check(text: str) -> str | None:
    """The problem of a ``when`` expression, or None (for the config validation)."""
    try:
        Expression(text)
    except CelCompileError as exc:
        return str(exc)
    except ImportError as exc:  # pragma: no cover - broken install
        return f"CEL is not installed ({exc}); install the package cel-expr-python"
    return None
