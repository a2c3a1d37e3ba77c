"""The contract every sink passes (one suite, parametrised over the sinks in
tests/sink_harness.HARNESSES): commit order and stable ids, schema definitions for every
version used, a checkpoint that never covers what the sink has not acknowledged, and resume
after a restart without loss."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc_local.postgres import LocalPostgres
from sources.postgres.lsn import Lsn
from tests.helpers import CdcService, dedupe, fold, wait_for, write_config
from tests.sink_harness import HARNESSES, SinkHarness


@pytest.fixture
def db(pg15: LocalPostgres) -> Iterator[str]:
    name = f"c_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg15.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg15.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    yield dsn
    with psycopg.connect(pg15.dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            wait_for(
                lambda s=slot: conn.execute(
                    "SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s", (s,)
                ).fetchone()[0],
                10,
            )
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SinkHarness]:
    h = HARNESSES[request.param](tmp_path)
    try:
        yield h
    finally:
        h.close()


def _service(tmp_path: Path, dsn: str, harness: SinkHarness, free_port: int) -> CdcService:
    cfg = write_config(
        tmp_path,
        [
            {
                "name": "contract",
                "source": {"type": "postgres", "dsn": dsn, "tables": ["public.items", "public.notes"], "heartbeat_s": 1},
                "snapshot": {"mode": "never"},
                "sink": harness.sink_config(),
            }
        ],
        api_port=free_port,
    )
    return CdcService(cfg)


def _write(dsn: str, start: int, count: int, ends: dict[int, Lsn] | None = None) -> None:
    """Transactions ``start`` .. ``start + count - 1``; ``ends`` gets, for each, a WAL position
    after its commit (so an event of it has a smaller ``source.lsn``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(start, start + count):
            if ends is not None:
                conn.execute("SELECT 1")  # (the previous transaction is committed)
            with conn.transaction():
                conn.execute("INSERT INTO items VALUES (%s, %s, %s)", (i, f"item {i}", i % 7))
                conn.execute("INSERT INTO notes VALUES (%s, %s)", (i, f"note {i}"))
                if i % 3 == 0:
                    conn.execute("UPDATE items SET qty = qty + 1 WHERE id = %s", (i,))
                if i % 5 == 0:
                    conn.execute("DELETE FROM notes WHERE id = %s", (i,))
            if ends is not None:
                ends[i] = Lsn.parse(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


def _source_rows(dsn: str, table: str) -> dict[bytes, dict[str, Any]]:
    import orjson

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(sql.SQL("SELECT to_jsonb(t) FROM {} t").format(sql.Identifier(table))).fetchall()
    return {orjson.dumps({"id": r[0]["id"]}, option=orjson.OPT_SORT_KEYS): r[0] for (r) in rows}


def _assert_complete(dsn: str, events: list[dict[str, Any]]) -> None:
    def present(rows: dict[bytes, dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
        # a column added later is absent from rows written before it, and NULL in the table
        return {k: {c: v for c, v in r.items() if v is not None} for k, r in rows.items()}

    for table in ("items", "notes"):
        assert present(fold(events, f"public.{table}")) == present(_source_rows(dsn, table)), f"{table} differs"


def _assert_state(dsn: str, harness: SinkHarness) -> None:
    """A sink that keeps tables (``keeps_events = False``) holds exactly the source's rows."""

    def present(rows: dict[bytes, dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
        return {k: {c: v for c, v in r.items() if v is not None} for k, r in rows.items()}

    for table in ("items", "notes"):
        held = present(harness.rows(f"public.{table}"))  # type: ignore[attr-defined]
        assert held == present(_source_rows(dsn, table)), f"{table} differs"


def _item_ids(harness: SinkHarness) -> set[int]:
    return {r["id"] for r in harness.rows("public.items").values()}  # type: ignore[attr-defined]


def _assert_ordered(events: list[dict[str, Any]]) -> None:
    """Commit order across tables, contiguous transactions, seq from 0, last on the final one."""
    last_lsn = Lsn(0)
    current: str | None = None
    seq = -1
    closed = True
    for e in dedupe(events):
        lsn = Lsn.parse(e["source"]["lsn"])
        assert lsn >= last_lsn, f"commit order broken at {e['id']}"
        last_lsn = lsn
        tx = e["transaction"]
        if tx["id"] != current:
            assert closed, f"transaction {current} has no last event"
            current, seq = tx["id"], -1
        assert tx["seq"] == seq + 1, f"seq gap at {e['id']}"
        seq = tx["seq"]
        closed = tx["last"]
        assert e["id"] == f"pg:{tx['id']}:{tx['seq']}"
    assert closed


def test_events_arrive_in_commit_order_with_stable_ids_and_their_schemas(
    tmp_path: Path, db: str, harness: SinkHarness, free_port: int
) -> None:
    with _service(tmp_path, db, harness, free_port) as svc:
        svc.wait_state("contract", "running")
        _write(db, 1, 40)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER TABLE items ADD COLUMN note text")
            conn.execute("INSERT INTO items VALUES (1000, 'after alter', 1, 'v2')")
        if not harness.keeps_events:
            wait_for(lambda: 1000 in _item_ids(harness), 30, what="last row")
        else:
            wait_for(lambda: any(e["after"] and e["after"].get("id") == 1000 for e in harness.events()), 30, what="last event")
        assert svc.stop() == 0
    if not harness.keeps_events:
        _assert_state(db, harness)
        assert "note" in harness.columns("public.items")  # type: ignore[attr-defined]
        position = harness.position()  # type: ignore[attr-defined]
        assert position["last_id"].startswith("pg:") and position["count"] > 40
        return
    events = harness.events()
    assert len({e["id"] for e in events}) == len(dedupe(events))
    _assert_ordered(events)
    held = {(s["name"], s["version"]) for s in harness.schemas()}
    used = {(e["schema"]["name"], e["schema"]["version"]) for e in events}
    assert used <= held, f"schema versions used but never delivered: {used - held}"
    assert ("public.items", 2) in used
    _assert_complete(db, events)


def test_checkpoint_never_covers_what_the_sink_did_not_acknowledge(
    tmp_path: Path, db: str, harness: SinkHarness, free_port: int
) -> None:
    if not harness.keeps_events:
        return _checkpoint_never_covers_rows_not_held(tmp_path, db, harness, free_port)
    with _service(tmp_path, db, harness, free_port) as svc:
        svc.wait_state("contract", "running")
        _write(db, 1, 10)
        wait_for(lambda: len(dedupe(harness.events())) >= 10, 30, what="first events")
        observed: list[tuple[Lsn, set[str]]] = []
        with harness.outage():
            _write(db, 11, 20)
            svc.wait_state("contract", "retrying", timeout=60)
            for _ in range(3):
                # checkpoint first, then what the sink holds: everything the checkpoint covers
                # must already be there
                position = Lsn.parse(svc.pipeline("contract")["checkpoint"]["position"])
                observed.append((position, {e["id"] for e in harness.events()}))
                status, health = svc.get("/healthz")
                assert status == 503 and health["failing"][0]["pipeline"] == "contract"
        svc.wait_state("contract", "running", timeout=60)
        wait_for(lambda: any(e["after"] and e["after"].get("id") == 30 for e in harness.events() if e["schema"]["name"] == "public.items"), 60, what="delivery after the outage")
        assert svc.stop() == 0
    events = harness.events()
    _assert_ordered(events)
    _assert_complete(db, events)
    for position, held in observed:
        covered = {e["id"] for e in events if Lsn.parse(e["source"]["lsn"]) < position}
        assert covered <= held, f"checkpoint {position} covered undelivered events {sorted(covered - held)[:5]}"
    assert any(len(held) < len(dedupe(events)) for _, held in observed), "the outage delayed nothing"


def _checkpoint_never_covers_rows_not_held(
    tmp_path: Path, db: str, harness: SinkHarness, free_port: int
) -> None:
    """The same for a sink that keeps tables: every transaction before a checkpoint taken
    during the outage has its row in the target."""
    ends: dict[int, Lsn] = {}
    with _service(tmp_path, db, harness, free_port) as svc:
        svc.wait_state("contract", "running")
        _write(db, 1, 10, ends)
        wait_for(lambda: len(_item_ids(harness)) >= 10, 30, what="first rows")
        observed: list[tuple[Lsn, set[int]]] = []
        with harness.outage():
            _write(db, 11, 20, ends)
            svc.wait_state("contract", "retrying", timeout=60)
            for _ in range(3):
                position = Lsn.parse(svc.pipeline("contract")["checkpoint"]["position"])
                observed.append((position, _item_ids(harness)))
                status, health = svc.get("/healthz")
                assert status == 503 and health["failing"][0]["pipeline"] == "contract"
        svc.wait_state("contract", "running", timeout=60)
        wait_for(lambda: 30 in _item_ids(harness), 60, what="delivery after the outage")
        assert svc.stop() == 0
    _assert_state(db, harness)
    for position, held in observed:
        covered = {i for i, end in ends.items() if end < position}
        assert covered <= held, f"checkpoint {position} covered rows not in the target {sorted(covered - held)[:5]}"
    assert any(len(held) < 30 for _, held in observed), "the outage delayed nothing"


def test_resume_after_restart_loses_nothing(tmp_path: Path, db: str, harness: SinkHarness, free_port: int) -> None:
    writer = threading.Thread(target=_write, args=(db, 1, 150))
    with _service(tmp_path, db, harness, free_port) as svc:
        svc.wait_state("contract", "running")
        writer.start()
        if not harness.keeps_events:
            wait_for(lambda: len(_item_ids(harness)) >= 10, 30, what="some rows")
        else:
            wait_for(lambda: len(harness.events()) >= 30, 30, what="some events")
        assert svc.stop() == 0
    with _service(tmp_path, db, harness, free_port) as svc:
        svc.wait_state("contract", "running")
        writer.join()
        if not harness.keeps_events:
            wait_for(lambda: 150 in _item_ids(harness), 60, what="all rows")
        else:
            wait_for(lambda: any(e["after"] and e["after"].get("id") == 150 for e in harness.events() if e["schema"]["name"] == "public.items"), 60, what="all events")
        assert svc.stop() == 0
    if not harness.keeps_events:
        _assert_state(db, harness)
        return
    events = harness.events()
    _assert_ordered(events)
    _assert_complete(db, events)
