#!/usr/bin/env python3
"""Benchmark: what the transform chain costs per event, in one process (no servers).

Builds 2,000 update events shaped like bench/pg_file.py's rows and times, per event:
encoding them as JSON lines (the file sink's own work, for scale), the chain with one
``filter``, with one ``mask`` on one column, and with both, as the pipeline applies them
(one ``Chain.apply`` per list of events). Without transforms the pipeline builds no chain and
skips the call. Usage: ``python bench/transforms_cost.py [--rounds 50]``; a few seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cdc import transforms
from cdc.events import ChangeEvent, encode_lines
from cdc.schema import Column, SchemaVersion, TableSchema

SV = SchemaVersion.build(
    TableSchema(
        "public.bench",
        (Column("id", "int8"), Column("status", "text"), Column("email", "text"),
         Column("amount", "numeric(12,2)"), Column("note", "text")),
        ("id",),
    ),
    1,
)
SOURCE = {"connector": "postgres", "pipeline": "bench", "db": "bench", "schema": "public",
          "table": "bench", "ts_ms": 1764297600100, "tx": "7841", "lsn": "0/16B37C8",
          "snapshot": False}


def events(n: int, start: int = 0) -> list[ChangeEvent]:
    """``n`` update events; every e-mail differs (so the mask's cache of recent hashes never
    helps: the worst case)."""
    return [
        ChangeEvent(
            f"pg:0/16B37C8:{i}", "u", 1764297600123, SOURCE, ("0/16B37C8", i, i == n - 1), SV,
            {"id": i}, None,
            {"id": i, "status": "draft" if i % 10 == 0 else "paid",
             "email": f"user{start + i}@example.org", "amount": "19.90", "note": "some text"},
        )
        for i in range(n)
    ]


def per_event(fn: Callable[[list[ChangeEvent]], object], lists: list[list[ChangeEvent]]) -> float:
    fn(events(len(lists[0]), -len(lists[0])))
    t = time.perf_counter()
    for evs in lists:
        fn(evs)
    return (time.perf_counter() - t) / sum(map(len, lists)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    n = 2000
    lists = [events(n, r * n) for r in range(args.rounds)]
    filt = {"filter": {"when": 'op in ["d", "t"] || after.status != "draft"'}}
    mask = {"mask": {"key": "k", "columns": {"public.bench": {"email": "hash"}}}}
    rows: list[tuple[str, Callable[[list[ChangeEvent]], object]]] = [
        ("encode as JSON lines (the file sink's work)", encode_lines)
    ]
    for label, items in (("filter", [filt]), ("mask (one column, hash)", [mask]),
                         ("filter + mask", [filt, mask])):
        chain = transforms.build(items, "bench")
        assert chain is not None
        rows.append((f"chain: {label}", chain.apply))
    for label, fn in rows:
        print(f"{label:<50} {per_event(fn, lists):6.2f} us/event")


if __name__ == "__main__":
    main()
