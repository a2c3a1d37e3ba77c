#!/usr/bin/env python3
"""Benchmark: Python CEL libraries, evaluating one filter expression per event.

The expression is the contract's example, ``op in ["d","t"] || after.status != "draft"``,
over one update event. For each library that is installed it prints microseconds per
evaluation, then a few correctness probes: a type error and an unknown variable at compile
time, a field of a null map at run time, and ``int`` against ``double`` comparison.

Libraries (install the ones to compare into the project's virtual environment):

* ``cel-expr-python``: CEL's C++ implementation with Google's Python bindings (what cdc uses
  to compile and type-check);
* ``common-expression-language``: the Rust implementation (cel-rust) with Python bindings;
* ``cel-python``: a pure Python implementation (module ``celpy``);
* cdc's own translation of the common subset into Python (``cdc.transforms.cel``).

Usage: ``python bench/cel_libraries.py [--n 20000]``. It runs in one process, a few seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

EXPR = 'op in ["d","t"] || after.status != "draft"'
EVENT: dict[str, Any] = {
    "op": "u",
    "table": "public.orders",
    "key": {"id": 42},
    "before": None,
    "after": {"id": 42, "status": "paid", "total": "19.90", "n": 3},
    "source": {"lsn": "0/16B37C8"},
    "ts_ms": 1764297600123,
}
PROBES = {
    "type error (op == 1)": "op == 1",
    "unknown variable (foo)": "foo == 1",
    "int vs double (after.n > 2.5)": "after.n > 2.5",
}


def timed(name: str, fn: Callable[[], Any], n: int) -> None:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    print(f"  {name:<55} {dt / n * 1e6:8.2f} us/event")


def outcome(fn: Callable[[], Any]) -> str:
    try:
        return f"-> {fn()!r}"[:90]
    except Exception as exc:
        return f"raises {type(exc).__name__}: {str(exc).splitlines()[0][:70]}"


def bench_cpp(n: int) -> None:
    from cel_expr_python import cel

    dyn = cel.Type.DYN
    env = cel.NewEnv(
        variables={
            "op": cel.Type.STRING, "table": cel.Type.STRING, "key": dyn, "before": dyn,
            "after": dyn, "source": cel.Type.Map(cel.Type.STRING, dyn), "ts_ms": cel.Type.INT,
        }
    )
    program = env.compile(EXPR)
    timed("cel-expr-python (C++)", lambda: program.eval(data=EVENT).value(), n)
    for label, text in PROBES.items():
        print(f"    {label}: compile {outcome(lambda t=text: env.compile(t).eval(data=EVENT).value())}")
    null = dict(EVENT, after=None)
    print(f"    after.status with after = null: {outcome(lambda: env.compile('after.status == 1').eval(data=null).value())}")


def bench_rust(n: int) -> None:
    import cel

    program = cel.compile(EXPR)
    timed("common-expression-language (Rust), compiled", lambda: program.execute(EVENT), n)
    timed("common-expression-language (Rust), evaluate()", lambda: cel.evaluate(EXPR, EVENT), n)
    for label, text in PROBES.items():
        print(f"    {label}: {outcome(lambda t=text: cel.compile(t).execute(EVENT))}")
    null = dict(EVENT, after=None)
    print(f"    after.status with after = null: {outcome(lambda: cel.evaluate('after.status == 1', null))}")


def bench_celpy(n: int) -> None:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(EXPR))
    timed("cel-python (pure Python)", lambda: program.evaluate(celpy.json_to_cel(EVENT)), n // 10)
    for label, text in PROBES.items():
        print(
            f"    {label}: "
            f"{outcome(lambda t=text: env.program(env.compile(t)).evaluate(celpy.json_to_cel(EVENT)))}"
        )


def bench_cdc(n: int) -> None:
    from cdc.transforms.cel import VARIABLES, Expression

    expr = Expression(EXPR)
    args = [EVENT[v] for v in VARIABLES]
    timed("cdc.transforms.cel (checked by C++, run as Python)", lambda: expr(*args), n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="evaluations per library")
    args = parser.parse_args()
    print(f"expression: {EXPR}")
    for name, fn in (
        ("cel-expr-python", bench_cpp),
        ("common-expression-language", bench_rust),
        ("cel-python", bench_celpy),
        ("cdc", bench_cdc),
    ):
        try:
            fn(args.n)
        except ImportError as exc:
            print(f"  {name}: not installed ({exc})")


if __name__ == "__main__":
    main()
