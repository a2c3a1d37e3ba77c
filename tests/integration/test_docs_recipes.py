"""The code the docs give users, run as written on real output of the service.

docs/events.md: ``read_events`` + ``ReadModel`` (fold with de-duplication by id) and ``as_of``;
docs/webhook.md: the receiver's signature check. A recipe that is wrong for some op (a
snapshot read, a key change, a truncate, an unchanged TOAST value, a duplicate) fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    CdcService,
    execute,
    pg_pipeline,
    query,
    read_complete_events,
    table_rows,
    wait_for,
    write_config,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / doc).read_text(), flags=re.S)


def _load_events_recipes(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run docs/events.md's code blocks as written; the first reads ``out/shop``."""
    monkeypatch.chdir(folder)
    blocks = _python_blocks("events.md")
    assert len(blocks) == 2 and '"out/shop"' in blocks[0]
    ns: dict[str, Any] = {"__name__": "recipe"}
    for block in blocks:
        exec(compile(block, "docs/events.md", "exec"), ns)  # noqa: S102 - the docs' own code
    return ns


def _as_rows(tables: dict[str, dict[str, dict[str, Any]]], name: str) -> dict[str, dict[str, Any]]:
    return dict(tables.get(name, {}))


def _db_rows(dsn: str, table: str) -> dict[str, dict[str, Any]]:
    import json

    return {
        json.dumps({"id": doc["id"]}, separators=(",", ":")): doc
        for doc in (v for v in table_rows(dsn, table, ["id"]).values())
    }


def _commit_time_ms(dsn: str) -> int:
    (ms,) = query(dsn, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")[0]
    return int(ms)


def test_read_model_and_as_of_recipes_on_snapshot_and_stream(
    pgdb: str, tmp_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the case that once broke the recipe: two idle tables snapshotted together, then a stream
    # with every op: updates, deletes, a key change, an unchanged TOASTed value, a truncate
    execute(
        pgdb,
        "CREATE TABLE public.orders (id int PRIMARY KEY, status text, big text)",
        "ALTER TABLE public.orders ALTER COLUMN big SET STORAGE EXTERNAL",
        "INSERT INTO public.orders SELECT g, 'new', NULL FROM generate_series(1, 200) g",
        "CREATE TABLE public.customers (id int PRIMARY KEY, name text)",
        "INSERT INTO public.customers SELECT g, 'c' || g FROM generate_series(1, 50) g",
    )
    out = tmp_path / "out" / "shop"
    p = pg_pipeline("shop", pgdb, ["public.orders", "public.customers"], out)
    p["snapshot"] = {"mode": "initial", "chunk_rows": 40}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg):
        wait_for(lambda: len(read_complete_events(out)) >= 250, 90, what="the snapshot")
        execute(
            pgdb,
            "UPDATE public.orders SET big = repeat('x', 20000) WHERE id = 1",
            "UPDATE public.orders SET status = 'paid' WHERE id = 1",  # big unchanged, not sent
            "UPDATE public.orders SET status = 'paid' WHERE id BETWEEN 2 AND 20",
            "DELETE FROM public.orders WHERE id BETWEEN 21 AND 25",
            "UPDATE public.orders SET id = 1001 WHERE id = 1",  # key change, big not sent
            "UPDATE public.customers SET name = 'renamed' WHERE id = 3",
        )
        as_of_ms = _commit_time_ms(pgdb)
        wait_for(lambda: _commit_time_ms(pgdb) > as_of_ms, 5, what="the clock to pass as_of")
        before_truncate = {t: _db_rows(pgdb, t) for t in ("public.orders", "public.customers")}
        execute(
            pgdb,
            "TRUNCATE public.customers",
            "INSERT INTO public.customers VALUES (7, 'again')",
            "UPDATE public.orders SET status = 'shipped' WHERE id = 1001",
        )
        wait_for(
            lambda: any(e["op"] == "u" and e["key"] == {"id": 1001} and e["after"]["status"] == "shipped"
                        for e in read_complete_events(out)),
            60, what="the last change",
        )
    events = read_complete_events(out)
    assert any(e.get("unchanged") for e in events), "the run has no unchanged TOAST value"
    assert any("key_change" in e for e in events) and any(e["op"] == "t" for e in events)

    ns = _load_events_recipes(tmp_path, monkeypatch)
    model = ns["model"]
    for table in ("public.orders", "public.customers"):
        assert _as_rows(model.tables, table) == _db_rows(pgdb, table), table
    assert model.tables["public.orders"]['{"id":1001}']["big"] == "x" * 20000

    # delivered again after a crash: the last events once more, in the same order
    again = ns["ReadModel"]()
    seq = list(ns["read_events"](str(out)))
    for event, position in seq + seq[-40:]:
        again.apply(event, position)
    assert again.tables == model.tables

    # as_of: the tables as they were after the last transaction committed before the time
    then = ns["as_of"]("out/shop", as_of_ms)
    for table, rows in before_truncate.items():
        assert _as_rows(then.tables, table) == rows, table


def test_webhook_signature_recipe_accepts_real_requests_and_refuses_forgeries(
    tmp_path: Path, pgdb: str, free_port: int
) -> None:
    from tests.webhook_harness import Receiver

    (block,) = _python_blocks("webhook.md")
    ns: dict[str, Any] = {}
    exec(compile(block, "docs/webhook.md", "exec"), ns)  # noqa: S102 - the docs' own code
    verify = ns["verify"]
    secret = "s3cret-for-recipe"
    execute(pgdb, "CREATE TABLE public.items (id int PRIMARY KEY, v text)")
    receiver = Receiver(secret=secret)
    try:
        p = pg_pipeline("hook", pgdb, ["public.items"], tmp_path / "unused")
        p["sink"] = {"type": "webhook", "url": receiver.url, "secret": secret}
        cfg = write_config(tmp_path, [p], api_port=free_port)
        with CdcService(cfg) as svc:
            svc.wait_state("hook", "running")
            execute(pgdb, "INSERT INTO public.items SELECT g, 'v' FROM generate_series(1, 5) g")
            wait_for(lambda: len(receiver.events()) >= 5, 30, what="the batch")
        requests = receiver.snapshot()
    finally:
        receiver.close()
    assert requests
    for r in requests:
        headers = {
            "X-CDC-Timestamp": r.headers["x-cdc-timestamp"],
            "X-CDC-Signature": r.headers["x-cdc-signature"],
        }
        assert verify(secret.encode(), headers, r.body) is True
        assert verify(b"another secret", headers, r.body) is False
        assert verify(secret.encode(), headers, r.body + b" ") is False
        stale = dict(headers, **{"X-CDC-Timestamp": str(int(headers["X-CDC-Timestamp"]) - 3600)})
        assert verify(secret.encode(), stale, r.body) is False
